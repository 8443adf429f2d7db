"""BlazePose body: the SSD person detector, the 33-landmark model, and frame-to-frame ROI tracking.

Facts from MediaPipe's pose graphs (pose_detection_cpu, pose_detection_to_roi,
pose_landmark_by_roi_cpu, pose_landmarks_to_roi, tensors_to_pose_landmarks_and_segmentation):
- detector: whole frame letterboxed to 224², values in [-1, 1], zero border;
- ROI: centred on detector keypoint 0 (mid-hip), half-side |kp1 − kp0|, rotated so kp0→kp1
  points up, then scaled by 1.25 (square on the long side);
- landmark model: ROI resampled to 256², values in [0, 1]; output 39 × (x, y, z, visibility,
  presence) in crop pixels, visibility/presence are logits; the pose flag is already a
  probability (gate at 0.5); landmarks 33 and 34 are the auxiliary alignment points from
  which the next frame's ROI is built (same alignment rule as the detector's keypoints 0, 1);
- x, y are refined by a score-weighted mean over a 7×7 window of the 64² heatmaps;
- world landmarks: 39 × (x, y, z) metres around the hip centre, in the ROI's axes (MediaPipe turns
  their x, y by the ROI rotation, as for the image landmarks).
Two additions, both measured on COCO people (tests/test_realdata_pose.py): a person the detector
just found gets a second landmark pass on the ROI built from the first pass's own alignment points
(the detector's ROI is coarse; tracking does the same from the previous frame), and the model may
also see the mirrored crop, whose left/right-swapped landmarks are averaged with the direct ones.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...vision import ssd
from . import roi as R
from .layout import BLAZEPOSE_33
from .runner import load_model

DETECTOR_SIZE = 224
LANDMARK_SIZE = 256
NUM_LANDMARKS = 33
ROI_SCALE = 1.25
PRESENCE_THRESHOLD = 0.5
HEATMAP_KERNEL = 7
HEATMAP_MIN_CONFIDENCE = 0.5
ZOOM_OUT = 1.5  # the frame shown at 1/1.5 of the detector input when it finds nobody at full size
MIN_SEARCH_WINDOW = 96  # pixels; people found in smaller windows are too small to get landmarks


def _mirror_index(name: str) -> int:
    swapped = name.replace("left", "#").replace("right", "left").replace("#", "right")
    return BLAZEPOSE_33.index(swapped)


# landmark i of the mirrored crop is landmark MIRROR[i] of the person; the two alignment points are on the midline
MIRROR = tuple(_mirror_index(n) for n in BLAZEPOSE_33) + (33, 34, 35, 36, 37, 38)


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(np.asarray(x, np.float64), -80.0, 80.0)))


@dataclass
class BodyResult:
    landmarks: np.ndarray   # [33, 2] frame pixels
    visibility: np.ndarray  # [33] probability
    presence: np.ndarray    # [33] probability
    flag: float             # person present in the ROI
    rect: R.Rect            # the ROI the landmarks came from
    next_rect: R.Rect       # ROI for the next frame (from the auxiliary landmarks)
    world: np.ndarray | None = None  # [33, 3] metres around the hip centre, x right, y down, z away
    peak: np.ndarray | None = None   # [33] heatmap probability at the landmark (low: placed without evidence)


def search_windows(height: int, width: int, side: float) -> list[R.Rect]:
    """Square windows of `side` covering the frame, neighbours overlapping by at least a third."""
    def starts(length: float) -> np.ndarray:
        if length <= side:
            return np.array([(length - side) / 2.0])
        return np.linspace(0.0, length - side, int(np.ceil((length - side) / (side * 2 / 3))) + 1)
    return [R.Rect(x + side / 2, y + side / 2, side, side) for y in starts(height) for x in starts(width)]


class PoseDetector:
    """Finds people in a frame; returns pose ROIs, most confident first.

    The detector only sees people taller than about 30 % of its letterboxed input. MediaPipe stops
    there; when the whole frame gives nothing, this also looks at the frame from further away
    (ZOOM_OUT: a person cut out tightly, as in a top-down crop, can fill too much of the input:
    JHMDB's 320×240 crops), then searches square windows of the short side (a full-body person in a
    landscape video) and of half of it (a person far away).
    """

    def __init__(self, path: str, num_threads: int | None = None, zoom: bool = True):
        self.model = load_model(path, DETECTOR_SIZE, 2, num_threads)
        self.anchors = ssd.anchor_centres(ssd.POSE_DETECTOR)
        self.zoom = zoom

    def detect(self, image: np.ndarray, window: R.Rect) -> list[tuple[float, R.Rect]]:
        """Detections inside one square window of the frame (zero padding outside the frame)."""
        boxes, scores = self.model(R.crop(image, window, DETECTOR_SIZE, (-1.0, 1.0), border="zero"))[:2]
        out = []
        for det in ssd.decode(boxes[0], scores[0], self.anchors, ssd.POSE_DETECTOR):
            kps = R.project_to_frame(det.keypoints * DETECTOR_SIZE, window, DETECTOR_SIZE)
            out.append((det.score, alignment_roi(kps[0], kps[1])))
        return out

    def __call__(self, image: np.ndarray) -> list[tuple[float, R.Rect]]:
        h, w = image.shape[:2]
        levels = [[R.letterbox_rect(h, w)]]
        if self.zoom:
            levels.append([R.Rect(w / 2.0, h / 2.0, ZOOM_OUT * max(h, w), ZOOM_OUT * max(h, w))])
            short = float(min(h, w))
            if max(h, w) > 1.2 * short and short >= MIN_SEARCH_WINDOW:
                levels.append(search_windows(h, w, short))
            if short / 2 >= MIN_SEARCH_WINDOW:
                levels.append(search_windows(h, w, short / 2))
        for windows in levels:
            found = [d for window in windows for d in self.detect(image, window)]
            if found:
                return sorted(found, key=lambda d: -d[0])
        return []


def alignment_roi(centre: np.ndarray, scale_point: np.ndarray) -> R.Rect:
    """Pose ROI from the mid-hip point and the point that bounds the whole body."""
    return R.transform_rect(R.alignment_rect(centre, scale_point, 90.0), ROI_SCALE)


def refine_from_heatmap(xy: np.ndarray, heatmap: np.ndarray, kernel: int = HEATMAP_KERNEL,
                        min_confidence: float = HEATMAP_MIN_CONFIDENCE) -> np.ndarray:
    """Score-weighted mean of heatmap cells around each landmark ([N, 2] crop px in and out)."""
    hm_h, hm_w, n = heatmap.shape
    cell_x, cell_y = LANDMARK_SIZE / hm_w, LANDMARK_SIZE / hm_h
    out = xy.copy()
    half = (kernel - 1) // 2
    for i in range(min(n, len(xy))):
        col, row = int(np.floor(xy[i, 0] / cell_x)), int(np.floor(xy[i, 1] / cell_y))
        if not (0 <= col < hm_w and 0 <= row < hm_h):
            continue
        r0, r1 = max(0, row - half), min(hm_h, row + half + 1)
        c0, c1 = max(0, col - half), min(hm_w, col + half + 1)
        conf = sigmoid(heatmap[r0:r1, c0:c1, i])
        total = conf.sum()
        if conf.max() < min_confidence or total <= 0:
            continue
        rows, cols = np.mgrid[r0:r1, c0:c1]
        # MediaPipe weights cell indices, not cell centres; on our renders adding the half cell made errors larger
        out[i, 0] = (cols * conf).sum() / total * cell_x
        out[i, 1] = (rows * conf).sum() / total * cell_y
    return out


def heatmap_peaks(xy: np.ndarray, heatmap: np.ndarray, kernel: int = HEATMAP_KERNEL) -> np.ndarray:
    """[N] highest heatmap probability in the window around each landmark (0 off the heatmap)."""
    hm_h, hm_w, n = heatmap.shape
    half = (kernel - 1) // 2
    out = np.zeros(len(xy))
    for i in range(min(n, len(xy))):
        col, row = int(np.floor(xy[i, 0] / (LANDMARK_SIZE / hm_w))), int(np.floor(xy[i, 1] / (LANDMARK_SIZE / hm_h)))
        if 0 <= col < hm_w and 0 <= row < hm_h:
            window = heatmap[max(0, row - half):row + half + 1, max(0, col - half):col + half + 1, i]
            out[i] = float(sigmoid(window.max()))
    return out


class PoseLandmarker:
    """Runs pose_landmark_full on one ROI of a frame (optionally also on its mirror image)."""

    def __init__(self, path: str, num_threads: int | None = None, refine: bool = True, flip: bool = False):
        self.model = load_model(path, LANDMARK_SIZE, 5, num_threads)
        self.refine, self.flip = refine, flip

    def _run(self, tensor: np.ndarray):
        """Crop tensor → (xy [39, 2] crop px, visibility [39], presence [39], flag, world [39, 3], peak [39])."""
        outputs = self.model(tensor)
        raw = outputs[0].reshape(-1, 5)
        xy = raw[:, :2].astype(np.float64)
        peak = np.zeros(len(xy))
        peak[:NUM_LANDMARKS] = heatmap_peaks(xy[:NUM_LANDMARKS], outputs[3][0])
        if self.refine:
            xy = refine_from_heatmap(xy, outputs[3][0])
        return (xy, sigmoid(raw[:, 3]), sigmoid(raw[:, 4]), float(np.asarray(outputs[1]).reshape(-1)[0]),
                np.asarray(outputs[4], np.float64).reshape(-1, 3), peak)

    def _run_mirrored(self, tensor: np.ndarray):
        xy, vis, pres, flag, world, peak = self._run(np.ascontiguousarray(tensor[:, :, ::-1]))
        xy[:, 0] = LANDMARK_SIZE - xy[:, 0]
        world[:, 0] = -world[:, 0]
        order = list(MIRROR)
        return xy[order], vis[order], pres[order], flag, world[order], peak[order]

    def __call__(self, image: np.ndarray, rect: R.Rect, flip: bool | None = None) -> BodyResult:
        tensor = R.crop(image, rect, LANDMARK_SIZE)
        xy, vis, pres, flag, world, peak = self._run(tensor)
        if self.flip if flip is None else flip:
            mirrored = self._run_mirrored(tensor)
            xy, vis, pres, flag, world, peak = ((a + b) / 2 for a, b in zip((xy, vis, pres, flag, world, peak),
                                                                            mirrored))
        pts = R.project_to_frame(xy, rect, LANDMARK_SIZE)
        c, s = np.cos(rect.angle), np.sin(rect.angle)
        world = world[:NUM_LANDMARKS] @ np.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]])
        return BodyResult(landmarks=pts[:NUM_LANDMARKS], visibility=vis[:NUM_LANDMARKS],
                          presence=pres[:NUM_LANDMARKS], flag=float(flag), rect=rect,
                          next_rect=alignment_roi(pts[NUM_LANDMARKS], pts[NUM_LANDMARKS + 1]), world=world,
                          peak=peak[:NUM_LANDMARKS])


class BodyTracker:
    """Detector + landmarks with MediaPipe's video-mode ROI reuse.

    With tracking, the ROI comes from the previous frame's auxiliary landmarks; when the
    landmark model then reports no person, the detector runs on the same frame instead. A person
    the detector found gets a second landmark pass on the ROI of the first pass (`refine_roi`).
    """

    def __init__(self, detector: PoseDetector, landmarker: PoseLandmarker, refine_roi: bool = True):
        self.detector, self.landmarker, self.refine_roi = detector, landmarker, refine_roi
        self.previous: R.Rect | None = None

    def reset(self) -> None:
        self.previous = None

    def __call__(self, image: np.ndarray, track: bool = True) -> BodyResult | None:
        if track and self.previous is not None:
            result = self.landmarker(image, self.previous)
            if result.flag >= PRESENCE_THRESHOLD:
                self.previous = result.next_rect
                return result
        self.previous = None
        found = self.detector(image)
        if not found:
            return None
        result = self.landmarker(image, found[0][1], flip=False if self.refine_roi else None)
        if result.flag < PRESENCE_THRESHOLD:
            return None
        if self.refine_roi:
            second = self.landmarker(image, result.next_rect)
            result = second if second.flag >= PRESENCE_THRESHOLD else result
        self.previous = result.next_rect if track else None
        return result
