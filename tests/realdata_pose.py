"""Real people with human-annotated keypoints (../shared/realdata, mmpose's test data) for the pose
stage: loading, the top-down crop protocol and PCK, shared by tests/test_realdata_pose.py and
benchmarks/pose_realdata.py.

Protocol (single-person animation uses a person crop): each annotated person with at least one
labelled keypoint is cut out by its annotated box grown by 25 % of its width/height on every side
(clipped to the image); the pose backend runs on that crop; a keypoint counts as found when its
score is > 0.3 and it lies within alpha × the annotated box diagonal of the label (PCK@alpha).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from harness import ROOT

REALDATA = Path(os.environ.get("MARIONETTE_REALDATA", ROOT.parent / "shared" / "realdata")) / "mmpose_testdata"
PAD = 0.25
SCORE_MIN = 0.3

# COCO-17 keypoint → OpenPose-18 body index
OP_FROM_COCO17 = (0, 15, 14, 17, 16, 5, 2, 6, 3, 7, 4, 11, 8, 12, 9, 13, 10)
# CrowdPose-14 (l/r shoulder, elbow, wrist, hip, knee, ankle, head top, neck) → OpenPose-18; the head
# top has no counterpart (None); OpenPose's neck is the shoulder midpoint, as CrowdPose labels it
OP_FROM_CROWDPOSE = (5, 2, 6, 3, 7, 4, 11, 8, 12, 9, 13, 10, None, 1)
# Human3.6M-17 → OpenPose-18: the thorax stands in for OpenPose's neck; pelvis, spine, neck base and head
# top have no counterpart (H3.6M's hips sit inside the pelvis, a few cm from COCO's)
OP_FROM_H36M = (None, 11, 12, 13, 8, 9, 10, None, 1, None, None, 5, 6, 7, 2, 3, 4)
# JHMDB-15 (neck, belly, head, r/l shoulder, r/l hip, r/l elbow, r/l knee, r/l wrist, r/l ankle) → OpenPose-18
OP_FROM_JHMDB = (1, None, None, 2, 5, 8, 11, 3, 6, 9, 12, 4, 7, 10, 13)
DATASETS = {  # name: (annotation file, image folder, keypoint mapping)
    "COCO": ("coco/test_coco.json", "coco", OP_FROM_COCO17),
    "OCHuman": ("ochuman/test_ochuman.json", "ochuman", OP_FROM_COCO17),
    "CrowdPose": ("crowdpose/test_crowdpose.json", "crowdpose", OP_FROM_CROWDPOSE),
    "COCO-WholeBody": ("coco/test_coco_wholebody.json", "coco", OP_FROM_COCO17),
    "Human3.6M": ("h36m/h36m_coco.json", "h36m", OP_FROM_H36M),
    "JHMDB": ("jhmdb/test_jhmdb_sub1.json", "jhmdb", OP_FROM_JHMDB),
}
SINGLE_PERSON = ("Human3.6M", "JHMDB")  # one person per frame: the whole-frame path is measured there


def available() -> bool:
    return all((REALDATA / spec[0]).is_file() for spec in DATASETS.values())


MISSING_REASON = (f"real-people data not found at {REALDATA} (the project's ../shared/realdata; "
                  "set MARIONETTE_REALDATA to its folder)")


@dataclass
class Person:
    image: str                 # image path
    box: np.ndarray            # annotated x0, y0, x1, y1
    keypoints: np.ndarray      # [K, 3] x, y, v (v > 0 labelled)
    mapping: tuple             # keypoint k → OpenPose-18 index (or None)
    parts: dict = field(default_factory=dict)  # COCO-WholeBody: "left_hand"/"right_hand"/"face" → ([n,3], box)

    @property
    def diagonal(self) -> float:
        return float(np.hypot(*(self.box[2:] - self.box[:2])))


def load_people(dataset: str) -> list[Person]:
    path, folder, mapping = DATASETS[dataset]
    data = json.loads((REALDATA / path).read_text())
    images = {i["id"]: i["file_name"] for i in data["images"]}
    if dataset == "Human3.6M":  # its frames sit in per-sequence folders named after the file
        images = {k: "/".join((v.split("_")[0], v.rsplit("_", 1)[0], v)) for k, v in images.items()}
    out = []
    for a in data["annotations"]:
        kps = np.asarray(a["keypoints"], np.float64).reshape(-1, 3)
        if not (kps[:, 2] > 0).any():
            continue
        x, y, w, h = a["bbox"]
        person = Person(str(REALDATA / folder / images[a["image_id"]]), np.array([x, y, x + w, y + h]), kps, mapping)
        for part, key, box_key, valid in (("left_hand", "lefthand_kpts", "lefthand_box", "lefthand_valid"),
                                          ("right_hand", "righthand_kpts", "righthand_box", "righthand_valid"),
                                          ("face", "face_kpts", "face_box", "face_valid")):
            if a.get(valid):
                bx, by, bw, bh = a[box_key]
                points = np.asarray(a[key], np.float64).reshape(-1, 3)
                person.parts[part] = (points, np.array([bx, by, bx + bw, by + bh]))
        out.append(person)
    return out


def read_rgb(path: str) -> np.ndarray:
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise FileNotFoundError(path)
    return np.ascontiguousarray(image[..., ::-1])


def crop_box(box: np.ndarray, width: int, height: int, pad: float = PAD) -> tuple[int, int, int, int]:
    """The annotated box grown by `pad` of its size on every side, in whole pixels inside the image."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    return (int(max(0, np.floor(x0 - pad * w))), int(max(0, np.floor(y0 - pad * h))),
            int(min(width, np.ceil(x1 + pad * w))), int(min(height, np.ceil(y1 + pad * h))))


def person_crop(person: Person, pad: float = PAD) -> tuple[np.ndarray, np.ndarray]:
    """(RGB crop, its top-left corner in the image)."""
    image = read_rgb(person.image)
    x0, y0, x1, y1 = crop_box(person.box, image.shape[1], image.shape[0], pad)
    return np.ascontiguousarray(image[y0:y1, x0:x1]), np.array([x0, y0], np.float64)


@dataclass
class Tally:
    hits: int = 0
    count: int = 0

    def add(self, correct: np.ndarray) -> None:
        self.hits += int(np.sum(correct))
        self.count += int(np.size(correct))

    @property
    def value(self) -> float:
        return self.hits / self.count if self.count else float("nan")

    def __str__(self) -> str:
        return f"{self.value:.3f} ({self.hits}/{self.count})"


def correct_points(pred: np.ndarray, truth: np.ndarray, offset: np.ndarray, length: float, alpha: float) -> np.ndarray:
    """[n] bool for the labelled truth points: prediction [n, 3] (crop pixels) scored > 0.3 within alpha·length."""
    labelled = truth[:, 2] > 0
    err = np.linalg.norm(pred[labelled, :2] + offset - truth[labelled, :2], axis=1)
    return (pred[labelled, 2] > SCORE_MIN) & (err <= alpha * length)


def body_points(frame, person: Person) -> np.ndarray:
    """The predicted points matching the person's labelled keypoint order ([K, 3]; zeros where none)."""
    out = np.zeros((len(person.mapping), 3))
    if frame.num_people:
        for k, j in enumerate(person.mapping):
            if j is not None:
                out[k] = frame.body[0, j]
    return out


def evaluate(estimate, dataset: str, alpha: float = 0.1, whole_frame: bool = False) -> dict[str, Tally]:
    """Body PCK (and for COCO-WholeBody hands and face PCK by their own box diagonals) of
    `estimate(crop uint8 [H, W, 3]) -> PoseFrame` over the dataset's annotated people, on their crops
    or (whole_frame) on the whole image."""
    tallies = {"body": Tally()}
    for person in load_people(dataset):
        if whole_frame:
            crop, offset = read_rgb(person.image), np.zeros(2)
        else:
            crop, offset = person_crop(person)
        frame = estimate(crop)
        usable = np.array([j is not None for j in person.mapping])
        truth = person.keypoints.copy()
        truth[~usable, 2] = 0
        tallies["body"].add(correct_points(body_points(frame, person), truth, offset, person.diagonal, alpha))
        for part, (truth, box) in person.parts.items():
            pred = getattr(frame, part)[0] if frame.num_people else np.zeros((len(truth), 3))
            tallies.setdefault(part, Tally()).add(
                correct_points(pred, truth, offset, float(np.hypot(*(box[2:] - box[:2]))), alpha))
    return tallies
