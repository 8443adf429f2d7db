"""DWPose whole-body pose estimation on onnxruntime.

Two models, as released with DWPose (yzd-v/DWPose): `yolox_l.onnx` finds people and
`dw-ll_ucoco_384.onnx` (RTMPose-style SimCC head) predicts 133 COCO-WholeBody keypoints per
person box. Pre- and post-processing follow the official ONNX pipeline used by DWPose's
ControlNet annotator, MimicMotion and comfyui_controlnet_aux, including its float32/float64
arithmetic, so the skeletons match what those pose-guided models were trained on:

- detector: RGB frame letterboxed top-left into 640x640 (pad 114, no normalisation), grid
  decode over strides 8/16/32, score = objectness x class, class-aware NMS (IoU 0.45, +1 pixel
  area convention), person boxes (class 0) kept when score > 0.3;
- pose: box centre/scale x1.25, widened to the model's 288:384 aspect, rotation-free affine warp
  (cv2), ImageNet mean/std on RGB, SimCC argmax / 2, score = min of the x and y maxima, mapped
  back through the box.
Both models get the RGB frame unchanged, as in those pipelines (YOLOX itself was trained on
BGR, but matching the released pipeline is what keeps the skeletons on their distribution).
Unlike MimicMotion (which then runs the pose model on the whole frame), a frame without a
detected person yields no people, as in comfyui_controlnet_aux.
"""
from __future__ import annotations

import os
from typing import Callable, Sequence

import cv2
import numpy as np

from ..errors import MarionetteError
from .types import PoseFrame
from .wholebody_layout import WHOLEBODY, to_openpose

DET_SIZE = (640, 640)           # (height, width) used when the detector's input is not static
PAD_VALUE = 114
STRIDES = (8, 16, 32)
NMS_IOU = 0.45
CLASS_SCORE_MIN = 0.1           # the official multi-class NMS threshold
PERSON_SCORE_MIN = 0.3          # then only class-0 boxes above this are kept
BOX_PADDING = 1.25
SIMCC_SPLIT = 2.0
PIXEL_MEAN = np.array([123.675, 116.28, 103.53])
PIXEL_STD = np.array([58.395, 57.12, 57.375])

DET_EXPECTED = ("the YOLOX-L person detector (yolox_l.onnx: input [1,3,640,640] -> output [1,8400,85])")
POSE_EXPECTED = ("the DWPose whole-body model (dw-ll_ucoco_384.onnx: input [1,3,384,288] -> "
                 "simcc_x [1,133,576], simcc_y [1,133,768])")
MODEL_FIX = ("Download yolox_l.onnx and dw-ll_ucoco_384.onnx from huggingface.co/yzd-v/DWPose and pick "
             "the detector as det model and dw-ll_ucoco_384 as pose model.")

ProgressFn = Callable[[int, int], None]


# ----------------------------------------------------------------------------- detector steps

def letterbox(image: np.ndarray, size: tuple[int, int] = DET_SIZE) -> tuple[np.ndarray, float]:
    """uint8 [H,W,3] -> ([3,h,w] float32 0..255, ratio): resized by `ratio`, padded 114 right/bottom."""
    h, w = size
    ratio = min(h / image.shape[0], w / image.shape[1])
    new_w, new_h = max(1, int(image.shape[1] * ratio)), max(1, int(image.shape[0] * ratio))
    canvas = np.full((h, w, 3), PAD_VALUE, np.uint8)
    canvas[:new_h, :new_w] = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_LINEAR)
    return np.ascontiguousarray(canvas.transpose(2, 0, 1), dtype=np.float32), ratio


def anchor_grid(size: tuple[int, int] = DET_SIZE, strides: Sequence[int] = STRIDES) -> tuple[np.ndarray, np.ndarray]:
    """YOLOX anchor cells in output order: ([A,2] int cell (x, y), [A,1] int stride)."""
    cells, steps = [], []
    for s in strides:
        ys, xs = np.mgrid[0:size[0] // s, 0:size[1] // s]
        cells.append(np.stack([xs.ravel(), ys.ravel()], axis=1))
        steps.append(np.full((xs.size, 1), s))
    return np.concatenate(cells), np.concatenate(steps)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float = NMS_IOU) -> np.ndarray:
    """Greedy NMS, highest score first (ties: later box first, like the official reversed argsort);
    areas use the inclusive (+1 pixel) convention."""
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(scores, kind="stable")[::-1]
    keep = []
    while order.size:
        i, rest = order[0], order[1:]
        keep.append(i)
        iw = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + 1)
        ih = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + 1)
        inter = iw * ih
        order = rest[inter / (areas[i] + areas[rest] - inter) <= iou]
    return np.asarray(keep, np.int64)


def decode_yolox(raw: np.ndarray, ratio: float, size: tuple[int, int] = DET_SIZE,
                 iou: float = NMS_IOU, min_score: float = PERSON_SCORE_MIN) -> tuple[np.ndarray, np.ndarray]:
    """Raw YOLOX output [A,5+C] (or [1,A,5+C]) -> person boxes [N,4] xyxy in frame pixels, scores [N].

    Boxes come sorted by descending score. Official flow: NMS per class on scores > 0.1, then keep
    class 0 above 0.3. Greedy NMS never lets a lower score suppress a higher one, so NMS on the
    class-0 boxes above 0.3 alone keeps exactly the same boxes, for 80x less work.
    """
    raw = np.asarray(raw, np.float32).reshape(-1, raw.shape[-1])
    cells, steps = anchor_grid(size)
    if raw.shape[0] != len(cells) or raw.shape[1] < 6:
        raise MarionetteError(f"The detector returned {tuple(raw.shape)} values per frame; expected "
                              f"[{len(cells)}, 85] for a {size[1]}x{size[0]} input.", MODEL_FIX)
    # same dtype path as the official decode: float64 products rounded to float32
    centre = ((raw[:, :2].astype(np.float64) + cells) * steps).astype(np.float32)
    wh = (np.exp(raw[:, 2:4]) * steps).astype(np.float32)
    score = raw[:, 4] * raw[:, 5]
    sel = (score.astype(np.float64) > min_score) & (score > np.float32(CLASS_SCORE_MIN))
    half = wh[sel] / np.float32(2.0)
    boxes = np.concatenate([centre[sel] - half, centre[sel] + half], axis=1) / np.float32(ratio)
    keep = nms(boxes, score[sel], iou)
    return boxes[keep].astype(np.float64), score[sel][keep].astype(np.float64)


# ----------------------------------------------------------------------------- pose steps

def box_to_center_scale(box: np.ndarray, padding: float = BOX_PADDING,
                        aspect: float = 288 / 384) -> tuple[np.ndarray, np.ndarray]:
    """xyxy box -> centre (x, y) and scale (w, h), padded, then widened to aspect w/h."""
    x1, y1, x2, y2 = np.asarray(box, np.float64)
    center = np.array([x1 + x2, y1 + y2]) * 0.5
    w, h = (x2 - x1) * padding, (y2 - y1) * padding
    scale = np.array([w, w / aspect]) if w > h * aspect else np.array([h * aspect, h])
    return center, scale


def warp_matrix(center: np.ndarray, scale: np.ndarray, out_w: int, out_h: int) -> np.ndarray:
    """2x3 affine frame -> crop: the box centre goes to the crop centre, box width to crop width.

    Built from three float32 point pairs through cv2.getAffineTransform, as the official code
    does, so the warped pixels are bit-identical to it.
    """
    def triangle(mid: np.ndarray, top: np.ndarray) -> np.ndarray:
        # third point: (mid - top) turned 90 degrees anticlockwise around `top`
        d = mid - top
        return np.stack([mid, top, top + np.array([-d[1], d[0]], np.float32)])

    src = triangle(center.astype(np.float32), (center + [0.0, -0.5 * scale[0]]).astype(np.float32))
    dst = triangle(np.array([out_w * 0.5, out_h * 0.5], np.float32),
                   np.array([out_w * 0.5, out_h * 0.5 - out_w * 0.5], np.float32))
    return cv2.getAffineTransform(src, dst)


def crop_transform(image: np.ndarray, box: np.ndarray, input_size: tuple[int, int] = (288, 384),
                   padding: float = BOX_PADDING) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """uint8 RGB frame + xyxy box -> (normalised crop [3,h,w] float32, centre, scale) for the pose model.

    input_size is (width, height). `scale` is the aspect-fixed box size in frame pixels that the
    crop covers; back_project needs it with `center`.
    """
    w, h = input_size
    center, scale = box_to_center_scale(box, padding, w / h)
    crop = cv2.warpAffine(image, warp_matrix(center, scale, w, h), (w, h), flags=cv2.INTER_LINEAR)
    crop = ((crop - PIXEL_MEAN) / PIXEL_STD).astype(np.float32)
    return np.ascontiguousarray(crop.transpose(2, 0, 1)), center, scale


def simcc_decode(simcc_x: np.ndarray, simcc_y: np.ndarray,
                 split: float = SIMCC_SPLIT) -> tuple[np.ndarray, np.ndarray]:
    """SimCC [N,K,Lx], [N,K,Ly] -> (crop-pixel keypoints [N,K,2] float32, scores [N,K] float32).

    Location = argmax bin / split; score = the smaller of the two maxima; a keypoint whose score
    is <= 0 gets location -1 / split.
    """
    locs = np.stack([simcc_x.argmax(-1), simcc_y.argmax(-1)], axis=-1).astype(np.float32)
    scores = np.minimum(simcc_x.max(-1), simcc_y.max(-1)).astype(np.float32)
    locs[scores <= 0] = -1
    return locs / np.float32(split), scores


def back_project(kpts: np.ndarray, center: np.ndarray, scale: np.ndarray,
                 input_size: tuple[int, int] = (288, 384)) -> np.ndarray:
    """Crop-pixel keypoints [K,2] -> frame pixels, inverting the crop of (center, scale)."""
    size = np.asarray(input_size, np.float64)
    return kpts.astype(np.float64) / size * scale + center - scale / 2


# ----------------------------------------------------------------------------- sessions

def default_providers() -> list[str]:
    """CUDA first when this onnxruntime build has it, always CPU as the fallback."""
    import onnxruntime as ort
    have = ort.get_available_providers()
    return (["CUDAExecutionProvider"] if "CUDAExecutionProvider" in have else []) + ["CPUExecutionProvider"]


def _open_session(path: str, expected: str, providers: list[str]):
    import onnxruntime as ort
    if not os.path.isfile(path):
        raise MarionetteError(f"DWPose model file not found: {path} (expected {expected}).", MODEL_FIX)
    try:
        return ort.InferenceSession(path, providers=providers)
    except Exception as e:  # onnxruntime raises several unrelated types for unreadable files
        if providers != ["CPUExecutionProvider"]:
            # an accelerator that fails to start (missing CUDA libraries) is not the file's fault
            return _open_session(path, expected, ["CPUExecutionProvider"])
        raise MarionetteError(f"{path} is not a loadable ONNX model ({type(e).__name__}: {str(e)[:200]}); "
                              f"expected {expected}.", MODEL_FIX) from e


def _is_static(dim) -> bool:
    return isinstance(dim, int) and dim > 0


def _input_dtype(node) -> type:
    return np.float16 if node.type == "tensor(float16)" else np.float32


def _bad_signature(path: str, expected: str, got: str) -> MarionetteError:
    return MarionetteError(f"{path} does not look like {expected}: it has {got}.", MODEL_FIX)


def _describe(session) -> str:
    ins = ", ".join(f"{i.name}{list(i.shape)}" for i in session.get_inputs())
    outs = ", ".join(f"{o.name}{list(o.shape)}" for o in session.get_outputs())
    return f"inputs {ins} and outputs {outs}"


class DWPoseDetector:
    """Whole-body 2D pose of every person in RGB frames, with DWPose's two ONNX models."""

    def __init__(self, det_path: str, pose_path: str, providers: list[str] | None = None,
                 max_batch: int = 32, frames_per_batch: int = 8):
        import onnxruntime as ort
        have = set(ort.get_available_providers())
        providers = [p for p in (providers or default_providers()) if p in have] or ["CPUExecutionProvider"]
        self.det = _open_session(det_path, DET_EXPECTED, providers)
        self.pose = _open_session(pose_path, POSE_EXPECTED, providers)
        self._check_detector(det_path)
        self._check_pose(pose_path)
        self.max_batch, self.frames_per_batch = max(1, max_batch), max(1, frames_per_batch)

    @property
    def providers(self) -> list[str]:
        return self.pose.get_providers()

    def _check_detector(self, path: str) -> None:
        ins, outs = self.det.get_inputs(), self.det.get_outputs()
        shape = ins[0].shape if len(ins) == 1 else []
        if len(ins) != 1 or len(shape) != 4 or shape[1] != 3 or not outs or len(outs[0].shape) != 3:
            raise _bad_signature(path, DET_EXPECTED, _describe(self.det))
        self.det_size = (shape[2], shape[3]) if _is_static(shape[2]) and _is_static(shape[3]) else DET_SIZE
        anchors, channels = outs[0].shape[1], outs[0].shape[2]
        if (_is_static(anchors) and anchors != len(anchor_grid(self.det_size)[0])) or \
                (_is_static(channels) and channels < 6):
            raise _bad_signature(path, DET_EXPECTED, _describe(self.det))
        self.det_input, self.det_dtype = ins[0].name, _input_dtype(ins[0])
        self.det_batched = not _is_static(shape[0])

    def _check_pose(self, path: str) -> None:
        ins, outs = self.pose.get_inputs(), self.pose.get_outputs()
        shape = ins[0].shape if len(ins) == 1 else []
        ok = len(ins) == 1 and len(shape) == 4 and shape[1] == 3 and _is_static(shape[2]) and \
            _is_static(shape[3]) and len(outs) == 2 and all(len(o.shape) == 3 for o in outs)
        if ok:
            h, w = shape[2], shape[3]
            for o, length in zip(outs, (w * SIMCC_SPLIT, h * SIMCC_SPLIT)):
                ok &= not (_is_static(o.shape[1]) and o.shape[1] != WHOLEBODY)
                ok &= not (_is_static(o.shape[2]) and o.shape[2] != length)
        if not ok:
            raise _bad_signature(path, POSE_EXPECTED, _describe(self.pose))
        self.pose_size = (shape[3], shape[2])  # (width, height)
        self.pose_input, self.pose_dtype = ins[0].name, _input_dtype(ins[0])
        self.pose_batched = not _is_static(shape[0])

    # -- model runs

    def _run(self, session, name: str, dtype, batch: np.ndarray, batched: bool) -> list[np.ndarray]:
        """Runs a [N,...] input as sub-batches (dynamic batch) or one item at a time; outputs per output."""
        step = self.max_batch if batched else 1
        runs = [session.run(None, {name: batch[i:i + step].astype(dtype, copy=False)})
                for i in range(0, len(batch), step)]
        return [np.concatenate([r[k] for r in runs]).astype(np.float32, copy=False) for k in range(len(runs[0]))]

    def detect_many(self, frames: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Person boxes per frame: [(boxes [N,4] xyxy pixels, scores [N])]."""
        packed = [letterbox(f, self.det_size) for f in frames]
        raw = self._run(self.det, self.det_input, self.det_dtype, np.stack([p[0] for p in packed]),
                        self.det_batched)[0]
        return [decode_yolox(raw[i], packed[i][1], self.det_size) for i in range(len(frames))]

    def estimate_many(self, frames: Sequence[np.ndarray], boxes: Sequence[np.ndarray]
                      ) -> list[tuple[np.ndarray, np.ndarray]]:
        """133 keypoints per box per frame: [(kpts [N,133,2] pixels, scores [N,133])]."""
        crops, frames_boxes = [], []
        for f, fb in zip(frames, boxes):
            cs = [crop_transform(f, b, self.pose_size) for b in fb]
            crops += [c[0] for c in cs]
            frames_boxes.append([(c[1], c[2]) for c in cs])
        if not crops:
            return [(np.zeros((0, WHOLEBODY, 2)), np.zeros((0, WHOLEBODY))) for _ in frames]
        simcc_x, simcc_y = self._run(self.pose, self.pose_input, self.pose_dtype, np.stack(crops), self.pose_batched)
        w, h = self.pose_size
        if simcc_x.shape[1:] != (WHOLEBODY, w * SIMCC_SPLIT) or simcc_y.shape[1:] != (WHOLEBODY, h * SIMCC_SPLIT):
            raise MarionetteError(f"The pose model returned SimCC {simcc_x.shape} / {simcc_y.shape}; expected "
                                  f"[N,133,{int(w * SIMCC_SPLIT)}] / [N,133,{int(h * SIMCC_SPLIT)}].", MODEL_FIX)
        locs, scores = simcc_decode(simcc_x, simcc_y)
        out, i = [], 0
        for cs in frames_boxes:
            kp = [back_project(locs[i + j], c, s, self.pose_size) for j, (c, s) in enumerate(cs)]
            out.append((np.stack(kp) if kp else np.zeros((0, WHOLEBODY, 2)), scores[i:i + len(cs)]))
            i += len(cs)
        return out

    # -- public entry

    def __call__(self, frames: np.ndarray, on_progress: ProgressFn | None = None) -> list[PoseFrame]:
        """uint8 RGB frames [B,H,W,3] -> one PoseFrame per frame (pixels; score <= 0.3 = missing).

        on_progress(done, total) runs after each frame; an exception from it (a cancel) propagates.
        """
        frames = _check_frames(frames)
        total, out = len(frames), []
        chunk = self.frames_per_batch if (self.pose_batched or self.det_batched) else 1
        for start in range(0, total, chunk):
            part = frames[start:start + chunk]
            dets = self.detect_many(part)
            poses = self.estimate_many(part, [d[0] for d in dets])
            for frame, (kpts, scores) in zip(part, poses):
                out.append(PoseFrame(frame.shape[1], frame.shape[0], **to_openpose(kpts, scores)))
                if on_progress is not None:
                    on_progress(len(out), total)
        return out


def _check_frames(frames) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim == 3:
        frames = frames[None]
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or 0 in frames.shape:
        raise MarionetteError(f"DWPose needs uint8 RGB frames [B,H,W,3]; got {frames.dtype} {tuple(frames.shape)}.",
                              "Pass the IMAGE batch converted with (image * 255).round().astype(uint8).")
    return frames
