"""COCO-WholeBody people from ../shared/realdata for LoadReference's tests and benchmark.

Each annotated person is cropped by its annotated box padded by 25 % (as one would cut a person out
of a photo to animate them); the annotations come along in the crop's pixels. The images are read
where they lie and never copied into the repository.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

COCO = Path(__file__).resolve().parents[2] / "shared" / "realdata" / "mmpose_testdata" / "coco"
WHOLEBODY = COCO / "test_coco_wholebody.json"
PAD = 0.25
MIN_KEYPOINTS = 8  # annotated body keypoints for a person to count as a whole-body reference


@dataclass
class CocoPerson:
    image_id: int
    picture: np.ndarray          # uint8 RGB crop
    keypoints: np.ndarray        # [17, 3] COCO body keypoints (x, y, v) in crop pixels
    face_box: np.ndarray | None  # x0, y0, x1, y1 in crop pixels, None where not annotated


def available() -> bool:
    return WHOLEBODY.is_file()


def crop_box(bbox, size: tuple[int, int], pad: float = PAD) -> tuple[int, int, int, int]:
    """The COCO box (x, y, w, h) grown by `pad` about its centre, in whole pixels inside the image."""
    x, y, w, h = bbox
    cx, cy, w, h = x + w / 2, y + h / 2, w * (1 + pad), h * (1 + pad)
    return (int(max(0, cx - w / 2)), int(max(0, cy - h / 2)),
            int(min(size[0], np.ceil(cx + w / 2))), int(min(size[1], np.ceil(cy + h / 2))))


def coco_people(min_keypoints: int = MIN_KEYPOINTS, whole_frames: bool = False) -> list[CocoPerson]:
    """Every annotated person with at least `min_keypoints` body keypoints, cropped; or, with
    `whole_frames`, the uncropped photos that show one annotated person."""
    data = json.loads(WHOLEBODY.read_text())
    if whole_frames:
        counts: dict[int, int] = {}
        for ann in data["annotations"]:
            counts[ann["image_id"]] = counts.get(ann["image_id"], 0) + 1
        data["annotations"] = [a for a in data["annotations"] if counts[a["image_id"]] == 1]
    files = {im["id"]: im["file_name"] for im in data["images"]}
    images: dict[int, np.ndarray] = {}
    out = []
    for ann in data["annotations"]:
        if ann.get("iscrowd") or ann["num_keypoints"] < min_keypoints:
            continue
        if ann["image_id"] not in images:
            images[ann["image_id"]] = cv2.cvtColor(cv2.imread(str(COCO / files[ann["image_id"]])), cv2.COLOR_BGR2RGB)
        image = images[ann["image_id"]]
        x0, y0, x1, y1 = ((0, 0, image.shape[1], image.shape[0]) if whole_frames
                          else crop_box(ann["bbox"], (image.shape[1], image.shape[0])))
        keypoints = np.array(ann["keypoints"], np.float64).reshape(-1, 3)
        keypoints[:, :2] -= (x0, y0)
        face = None
        if ann.get("face_valid"):
            fx, fy, fw, fh = ann["face_box"]
            face = np.array([fx - x0, fy - y0, fx + fw - x0, fy + fh - y0], np.float64)
        out.append(CocoPerson(ann["image_id"], np.ascontiguousarray(image[y0:y1, x0:x1]), keypoints, face))
    return out


def on_canvas(box, size: tuple[int, int]) -> np.ndarray | None:
    """`box` clipped to a canvas of `size`, or None when less than half of it lies on the canvas."""
    w, h = size
    area = lambda b: max(b[2] - b[0], 0.0) * max(b[3] - b[1], 0.0)  # noqa: E731
    clipped = np.clip(np.asarray(box, np.float64), 0, [w, h, w, h])
    return clipped if area(clipped) >= 0.5 * area(box) else None


def window_holds(points: np.ndarray, image_size: tuple[int, int], target: tuple[int, int]) -> bool:
    """Whether a crop window with the target's aspect, as large as the image allows, can hold the span
    of `points` [N, 2] (image pixels)."""
    (w, h), (tw, th) = image_size, target
    scale = max(tw / w, th / h)                 # the cover resize
    span = (points.max(0) - points.min(0)) * scale
    return bool(span[0] <= tw - 2 and span[1] <= th - 2)  # 2 px for the crop's rounding
