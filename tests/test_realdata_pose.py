"""The embedded pose backend on real people with human-annotated keypoints (../shared/realdata).

Top-down, as single-person animation uses it: each annotated person cut out by its box grown by
25 % per side; PCK@0.1 of the box diagonal, a point counts when scored > 0.3 (tests/realdata_pose.py).
Run with -s for the figures. Thresholds sit just under what the backend reaches (counts are small:
COCO 181 keypoints of 12 people, OCHuman 73 of 5, CrowdPose 43 of 4):

| | before | now |
|---|---|---|
| COCO body | 0.878 | 0.939 |
| OCHuman body | 0.726 | 0.726 (one of its 5 people stands hidden behind another in the same crop) |
| CrowdPose body (12 limb joints + neck) | 0.558 | 0.628 |
| COCO-WholeBody face (68 points, PCK@0.1 of the face box) | 0.732 | 0.739 |
| COCO-WholeBody right / left hand (hand box) | 0.000 / 0.000 | 0.133 / 0.000 |
| joints outside the frame reported, people cut at 1/2 and 2/3 height | 39/154 | 13/154 |
| joints inside the frame reported, same people | 250/342 | 240/342 |
| real back views (COCO: ears labelled, no nose or eyes): nose/eye points reported | 3 of 3 | 0 of 3 |
| Human3.6M (4 studio frames, 12 limb joints + neck), whole frame / crops | 0.827 / 0.846 | 0.885 / 0.865 |
| JHMDB (3 single-person 320×240 frames), whole frame / crops | 0.692 / 0.359 | 0.923 / 0.718 |

(Scores trade recall against invented joints: with visibility-based scores CrowdPose reached 0.651
but 31 joints outside the frame were reported; a narrower heatmap range gave COCO 0.945 with 24.)
"""
import numpy as np
import pytest
from harness import MEDIAPIPE

import realdata_pose as RP

pytestmark = pytest.mark.skipif(not RP.available(), reason=RP.MISSING_REASON)

MIN_BODY_PCK = {"COCO": 0.93, "OCHuman": 0.72, "CrowdPose": 0.62}
MIN_FACE_PCK, MIN_RIGHT_HAND_PCK = 0.73, 0.13
MAX_OUT_OF_FRAME, MIN_CUT_RECALL = 0.09, 0.70
MIN_WHOLE_FRAME_PCK = {"Human3.6M": 0.88, "JHMDB": 0.92}
MIN_SINGLE_CROP_PCK = {"Human3.6M": 0.86, "JHMDB": 0.71}


@pytest.fixture(scope="module")
def estimate():
    from marionette.models.pose.blazepose import BlazePoseEstimator
    est = BlazePoseEstimator(str(MEDIAPIPE), num_threads=1)
    return lambda crop: est(crop[None], track=False)[0]


@pytest.mark.parametrize("dataset", list(MIN_BODY_PCK))
def test_body_pck_on_annotated_people(estimate, dataset):
    tally = RP.evaluate(estimate, dataset)["body"]
    print(f"\n{dataset}: body PCK@0.1 {tally}")
    assert tally.value >= MIN_BODY_PCK[dataset], (dataset, str(tally))


@pytest.mark.parametrize("dataset", list(MIN_WHOLE_FRAME_PCK))
def test_body_pck_on_whole_single_person_frames(estimate, dataset):
    tally = RP.evaluate(estimate, dataset, whole_frame=True)["body"]
    crops = RP.evaluate(estimate, dataset)["body"]
    print(f"\n{dataset}: whole-frame body PCK@0.1 {tally} (on the padded crops {crops})")
    assert tally.value >= MIN_WHOLE_FRAME_PCK[dataset], (dataset, str(tally))
    assert crops.value >= MIN_SINGLE_CROP_PCK[dataset], (dataset, str(crops))


def test_hands_and_face_on_coco_wholebody(estimate):
    tallies = RP.evaluate(estimate, "COCO-WholeBody")
    wide = RP.evaluate(estimate, "COCO-WholeBody", alpha=0.2)
    print("\nCOCO-WholeBody PCK@0.1 / @0.2: " + ", ".join(f"{k} {v} / {wide[k]}" for k, v in tallies.items()))
    assert tallies["face"].value >= MIN_FACE_PCK
    assert tallies["right_hand"].value >= MIN_RIGHT_HAND_PCK


def test_no_face_on_real_back_views(estimate):
    """People seen from behind (their ears labelled, nose and eyes not) get no nose, eyes or face."""
    backs, shown = 0, 0
    for dataset in ("COCO", "OCHuman"):
        for person in RP.load_people(dataset):
            k = person.keypoints
            if not ((k[:3, 2] == 0).all() and (k[3:5, 2] > 0).any()):
                continue
            crop, _ = RP.person_crop(person)
            frame = estimate(crop)
            backs += 1
            shown += int((RP.body_points(frame, person)[:3, 2] > RP.SCORE_MIN).sum())
            shown += int(frame.num_people and (frame.face[0, :, 2] > RP.SCORE_MIN).sum())
    print(f"\nback views: {backs} people, face points reported {shown}")
    assert backs >= 1 and shown == 0


def cut_person(person, fraction):
    """The person crop cut below `fraction` of the annotated box height, and which labels fall outside."""
    crop, offset = RP.person_crop(person)
    top, bottom = person.box[1] - offset[1], person.box[3] - offset[1]
    cut = int(top + fraction * (bottom - top))
    labelled = person.keypoints[:, 2] > 0
    y = person.keypoints[:, 1] - offset[1]
    return np.ascontiguousarray(crop[:cut]), labelled & (y >= cut), labelled & (y < cut - 0.02 * person.diagonal)


def test_joints_of_people_cut_by_the_frame_are_not_invented(estimate):
    """Real provocation: the frame cuts people at half and two thirds of their height; labelled joints
    below the cut must not be reported, those well inside still must."""
    outside, inside = RP.Tally(), RP.Tally()
    for dataset in ("COCO", "OCHuman"):
        for person in RP.load_people(dataset):
            for fraction in (0.5, 0.65):
                crop, out, inn = cut_person(person, fraction)
                reported = RP.body_points(estimate(crop), person)[:, 2] > RP.SCORE_MIN
                outside.add(reported[out])
                inside.add(reported[inn])
    print(f"\ncut people: joints outside the frame reported {outside}, joints inside reported {inside}")
    assert outside.value <= MAX_OUT_OF_FRAME and inside.value >= MIN_CUT_RECALL
