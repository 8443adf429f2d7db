"""MediaPipe-style SSD anchors and decoding (BlazePose and BlazeFace detectors).

The detectors predict, per anchor, a box and keypoints relative to the anchor centre, in
input-pixel units. Anchors follow MediaPipe's SsdAnchorsCalculator with fixed anchor size:
only centres matter, and each layer adds one anchor per aspect ratio plus one interpolated.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SsdSpec:
    input_size: int              # square input, pixels
    strides: tuple[int, ...]     # one per layer; equal neighbours share a feature map
    num_keypoints: int
    anchors_per_layer: int = 2   # aspect ratio 1.0 + the interpolated scale
    min_score: float = 0.5
    nms_iou: float = 0.3


POSE_DETECTOR = SsdSpec(input_size=224, strides=(8, 16, 32, 32, 32), num_keypoints=4)
FACE_DETECTOR = SsdSpec(input_size=128, strides=(8, 16, 16, 16), num_keypoints=6)


def anchor_centres(spec: SsdSpec) -> np.ndarray:
    """[N, 2] anchor centres (x, y) in 0..1, in the detector's output order."""
    out, i, strides = [], 0, spec.strides
    while i < len(strides):
        j = i
        while j < len(strides) and strides[j] == strides[i]:
            j += 1
        size = int(np.ceil(spec.input_size / strides[i]))
        per_cell = spec.anchors_per_layer * (j - i)
        ys, xs = np.meshgrid((np.arange(size) + 0.5) / size, (np.arange(size) + 0.5) / size, indexing="ij")
        centres = np.stack([xs, ys], -1).reshape(-1, 1, 2)
        out.append(np.repeat(centres, per_cell, axis=1).reshape(-1, 2))
        i = j
    return np.concatenate(out).astype(np.float32)


@dataclass
class Detection:
    score: float
    box: np.ndarray        # x0, y0, x1, y1 in 0..1 of the detector input
    keypoints: np.ndarray  # [K, 2] in 0..1 of the detector input


def decode(raw_boxes: np.ndarray, raw_scores: np.ndarray, anchors: np.ndarray, spec: SsdSpec) -> list[Detection]:
    """Raw outputs [N, 4 + 2K], [N] (logits) → detections after weighted NMS, best first."""
    # float64: exp(100) overflows float32 (the clip mirrors MediaPipe's score_clipping_thresh)
    scores = 1.0 / (1.0 + np.exp(-np.clip(raw_scores.reshape(-1).astype(np.float64), -100.0, 100.0)))
    keep = np.nonzero(scores >= spec.min_score)[0]
    if keep.size == 0:
        return []
    raw = raw_boxes.reshape(len(anchors), -1)[keep] / spec.input_size
    centre = anchors[keep]
    cx, cy = raw[:, 0] + centre[:, 0], raw[:, 1] + centre[:, 1]
    w, h = raw[:, 2], raw[:, 3]
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)
    kps = raw[:, 4:4 + 2 * spec.num_keypoints].reshape(-1, spec.num_keypoints, 2) + centre[:, None, :]
    return weighted_nms(scores[keep], boxes, kps, spec.nms_iou)


def iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    x0, y0 = np.maximum(box[0], boxes[:, 0]), np.maximum(box[1], boxes[:, 1])
    x1, y1 = np.minimum(box[2], boxes[:, 2]), np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
    return inter / np.maximum(area(box) + area(boxes) - inter, 1e-9)


def weighted_nms(scores: np.ndarray, boxes: np.ndarray, kps: np.ndarray, threshold: float) -> list[Detection]:
    """MediaPipe's WEIGHTED NMS: overlapping candidates are averaged by score, not dropped."""
    order = np.argsort(-scores)
    out = []
    while order.size:
        overlap = iou(boxes[order[0]], boxes[order]) > threshold
        group = order[overlap]
        wts = scores[group][:, None]
        out.append(Detection(float(scores[order[0]]),
                             (boxes[group] * wts).sum(0) / wts.sum(),
                             (kps[group] * wts[:, :, None]).sum(0) / wts.sum()))
        order = order[~overlap]
    return out
