"""Reference sizing (models/reference.py), person mask and face region (models/vision/*).

The person is a committed Anny render (tests/data/person_512*, made by tests/reference_render.py):
a clothed woman standing off-centre (38 % of the width), with her silhouette and projected
COCO keypoints as ground truth.
"""
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from harness import MEDIAPIPE

from marionette.models.errors import MarionetteError
from marionette.models.pose.types import OPENPOSE_BODY
from marionette.models.reference import (FIT_MODES, PRESET_NAMES, PRESETS, cover_size, fit_reference,
                                         person_box, prepare_reference, round_to_multiple, target_size)
from marionette.models.vision.face_detect import (Face, FaceDetector, choose_face, face_box_and_mask,
                                                  face_box_from_body, soft_shape_mask)
from marionette.models.vision.segmentation import PersonSegmenter
from marionette.models.vision.ssd import iou

DATA = Path(__file__).resolve().parent / "data"


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def person():
    image = cv2.cvtColor(cv2.imread(str(DATA / "person_512.png")), cv2.COLOR_BGR2RGB)
    silhouette = cv2.imread(str(DATA / "person_512_mask.png"), cv2.IMREAD_GRAYSCALE) > 127
    meta = json.loads((DATA / "person_512.json").read_text())
    return image, silhouette, meta


def _tflite(name: str) -> str:
    return os.path.join(MEDIAPIPE, name)


@pytest.fixture(scope="module")
def segmenter():
    return PersonSegmenter(_tflite("selfie_segmentation.tflite"))


@pytest.fixture(scope="module")
def detector():
    return FaceDetector(_tflite("face_detection_short_range.tflite"))


def _openpose_body(keypoints: dict) -> np.ndarray:
    """OpenPose-18 body [18, 3] from the render's COCO keypoints (neck = shoulder mean)."""
    body = np.zeros((18, 3), np.float32)
    for i, name in {0: "nose", 2: "right_shoulder", 5: "left_shoulder", 14: "right_eye", 15: "left_eye",
                    16: "right_ear", 17: "left_ear"}.items():
        body[i] = [*keypoints[name], 1.0]
    body[1] = [*((body[2, :2] + body[5, :2]) / 2), 1.0]
    return body


COCO_FOR_OPENPOSE = ("nose", None, "right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow",
                     "left_wrist", "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle",
                     "right_eye", "left_eye", "right_ear", "left_ear")


def _whole_body(keypoints: dict, shift=(0.0, 0.0)) -> np.ndarray:
    """OpenPose-18 body [18, 3] of every rendered COCO keypoint (neck = shoulder mean), moved by `shift`."""
    body = np.zeros((18, 3), np.float32)
    for i, name in enumerate(COCO_FOR_OPENPOSE):
        if name:
            body[i] = [*(np.array(keypoints[name]) + shift), 1.0]
    body[1] = [*((body[2, :2] + body[5, :2]) / 2), 1.0]
    return body


def _marked(w: int, h: int, at: tuple[int, int]) -> np.ndarray:
    img = np.full((h, w, 3), 90, np.uint8)
    x, y = at
    img[y - 6:y + 6, x - 6:x + 6] = (255, 0, 0)
    return img


# ---------------------------------------------------------------- sizes and fitting

def test_every_preset_and_custom_size_is_a_multiple_of_64():
    for name in PRESET_NAMES:
        for image_size in ((600, 900), (900, 600)):
            w, h = target_size(name, image_size, custom=(517, 333))
            assert w % 64 == 0 and h % 64 == 0 and w >= 64 and h >= 64
    assert target_size("custom", custom=(500, 300)) == (512, 320)
    assert target_size("custom", custom=(96, 160)) == (128, 192)     # halves round up
    assert target_size("custom", custom=(10, 0)) == (64, 64)
    assert round_to_multiple(1000) == 1024
    assert target_size("auto", (600, 900)) == (576, 1024) and target_size("auto", (900, 600)) == (1024, 576)
    with pytest.raises(MarionetteError, match="preset"):
        target_size("640x480")


def test_crop_follows_mimicmotion_on_a_portrait():
    # 640×900 portrait → auto 576×1024: h/w 1.406 < 1024/576, so height 1024 and width
    # ceil(1024/1.40625) = ceil(728.2) = 729; left = round((729 - 576) / 2) = round(76.5) = 76 (to even)
    assert cover_size((640, 900), (576, 1024)) == (729, 1024)
    out, t = fit_reference(_marked(640, 900, (300, 450)), "auto", "crop")
    assert out.shape == (1024, 576, 3)
    assert np.allclose(t.apply([[0, 0], [640, 900]]), [[-76, 0], [729 - 76, 1024]])


def test_crop_follows_mimicmotion_on_a_landscape():
    # 1200×700 → auto 1024×576: h/w 0.583 > 576/1024, so width 1024 and height
    # ceil(1024·0.5833) = ceil(597.3) = 598; top = round(22 / 2) = 11
    assert cover_size((1200, 700), (1024, 576)) == (1024, 598)
    out, t = fit_reference(_marked(1200, 700, (600, 400)), "auto", "crop")
    assert out.shape == (576, 1024, 3)
    assert np.allclose(t.apply([[0, 0], [1200, 700]]), [[0, -11], [1024, 598 - 11]])


def test_pad_stretch_and_keep_aspect_map_corners_exactly():
    img = _marked(300, 200, (200, 60))
    out, t = fit_reference(img, "576x1024", "pad", pad_colour=(0, 0, 0))
    assert out.shape == (1024, 576, 3)                      # 300×200 → 576×384, centred: top 320
    assert np.allclose(t.apply([[0, 0], [300, 200]]), [[0, 320], [576, 704]])
    assert (out[:320] == 0).all() and (out[704:] == 0).all() and out[320].min() >= 80 and out[703].min() >= 80
    out, t = fit_reference(img, "512x512", "stretch")
    assert np.allclose(t.apply([[0, 0], [300, 200]]), [[0, 0], [512, 512]])
    out, t = fit_reference(img, "576x1024", "keep aspect")  # longest 300 → 1024; 200 → 682.7 → 704
    assert out.shape == (704, 1024, 3)
    assert np.allclose(t.apply([[300, 200]]), [[1024, 704]])


@pytest.mark.parametrize("mode", ["crop", "pad", "stretch", "keep aspect"])
@pytest.mark.parametrize("size", ["512x768", "1024x576", (320, 200)])
def test_transform_lands_on_the_moved_content(mode, size):
    img = _marked(300, 200, (200, 60))
    out, t = fit_reference(img, size, mode)
    assert out.shape[0] % 64 == 0 and out.shape[1] % 64 == 0
    x, y = t.apply([200.0, 60.0])
    assert 0 <= x < out.shape[1] and 0 <= y < out.shape[0]
    r, g, b = out[int(y), int(x)].astype(int)
    assert r > 200 and g < 60 and b < 60


def test_crop_on_person_shifts_toward_the_person_and_keeps_them(person):
    image, silhouette, _ = person               # widened to 800 px: the person sits in the left quarter
    image = np.pad(image, ((0, 0), (0, 288), (0, 0)), mode="edge")
    mask = np.pad(silhouette, ((0, 0), (0, 288))).astype(np.float32)

    def kept(mode):
        out, t = fit_reference(image, "512x768", mode, mask=mask)
        scale = t.matrix[0, 0] * t.matrix[1, 1]
        return t.warp(mask, (out.shape[1], out.shape[0])).sum() / (mask.sum() * scale), t

    centre, t_centre = kept("crop")
    on_person, t_person = kept("crop person")
    assert t_person.matrix[0, 2] > t_centre.matrix[0, 2]        # window moved left, toward the person
    assert on_person > 0.99 and centre < 0.8


def test_crop_on_a_tall_person_keeps_the_head():
    img = np.full((400, 200, 3), 128, np.uint8)                 # portrait image into a landscape crop
    mask = np.zeros((400, 200), np.float32)
    mask[40:360, 80:120] = 1.0
    out, t = fit_reference(img, "1024x576", "crop person", mask=mask)
    head_y = t.apply([100.0, 40.0])[1]
    assert out.shape == (576, 1024, 3) and 0 <= head_y <= 0.1 * 576


def test_bad_fit_requests_raise_clear_errors(person):
    image = person[0]
    with pytest.raises(MarionetteError, match="mask"):
        fit_reference(image, "512x512", "crop person")
    with pytest.raises(MarionetteError, match="fit mode"):
        fit_reference(image, "512x512", "zoom")
    with pytest.raises(MarionetteError, match="uint8 RGB"):
        fit_reference(image.astype(np.float32), "512x512", "crop")
    with pytest.raises(MarionetteError, match="mask is"):
        fit_reference(image, "512x512", "crop person", mask=np.ones((10, 10), np.float32))
    assert set(FIT_MODES) >= {"crop", "pad", "stretch", "keep aspect"} and "576x1024" in PRESETS


def test_empty_person_mask_falls_back_to_the_centre(person):
    image = person[0]
    a, ta = fit_reference(image, "512x768", "crop")
    b, tb = fit_reference(image, "512x768", "crop person", mask=np.zeros(image.shape[:2], np.float32))
    assert person_box(np.zeros((4, 4))) is None and np.array_equal(a, b) and np.allclose(ta.matrix, tb.matrix)


# ---------------------------------------------------------------- person mask

def test_person_mask_matches_the_rendered_silhouette(segmenter, person):
    image, silhouette, _ = person
    mask = segmenter(image)
    assert mask.shape == silhouette.shape and mask.dtype == np.float32
    assert 0.0 <= mask.min() and mask.max() <= 1.0
    predicted = mask > 0.5
    assert (predicted & silhouette).sum() / (predicted | silhouette).sum() > 0.85


def test_blank_image_gives_an_empty_mask(segmenter):
    assert segmenter(np.full((300, 400, 3), 200, np.uint8)).mean() < 0.01


def test_missing_model_file_names_the_file(tmp_path):
    for cls, name in ((PersonSegmenter, "selfie_segmentation.tflite"),
                      (FaceDetector, "face_detection_short_range.tflite")):
        with pytest.raises(MarionetteError, match=name):
            cls(str(tmp_path / name))


# ---------------------------------------------------------------- face

def test_face_is_found_in_the_head_region_with_keypoints_on_the_eyes(detector, person):
    image, silhouette, meta = person
    faces = detector.find(image, person_box(silhouette))
    assert faces and faces[0].score > 0.8
    face = faces[0]
    hx0, hy0, hx1, hy1 = meta["head_box"]
    cx, cy = (face.box[:2] + face.box[2:]) / 2
    assert hx0 < cx < hx1 and hy0 < cy < hy1
    width = face.box[2] - face.box[0]
    assert 0.5 * (hx1 - hx0) < width < 1.2 * (hx1 - hx0)
    kp = meta["keypoints"]   # BlazeFace order: the person's right eye first (image left when facing us)
    assert np.linalg.norm(face.keypoints[0] - kp["right_eye"]) < 0.2 * width
    assert np.linalg.norm(face.keypoints[1] - kp["left_eye"]) < 0.2 * width
    assert np.linalg.norm(face.keypoints[2] - kp["nose"]) < 0.25 * width


def test_blank_image_has_no_face(detector):
    blank = np.full((512, 512, 3), 200, np.uint8)
    assert detector(blank) == [] and detector.find(blank, (100, 50, 300, 500)) == []
    region = face_box_and_mask((512, 512), detector(blank))
    assert region.box is None and region.source == "none" and region.mask.max() == 0


def test_face_region_from_the_detector_covers_the_face(detector, person):
    image, silhouette, meta = person
    region = face_box_and_mask((512, 512), detector.find(image, person_box(silhouette)))
    assert region.source == "detector" and region.mask.shape == (512, 512)
    nose = np.round(meta["keypoints"]["nose"]).astype(int)
    assert region.mask[nose[1], nose[0]] > 0.99
    ankle = np.round(meta["keypoints"]["left_ankle"]).astype(int)
    assert region.mask[ankle[1], ankle[0]] == 0
    x0, y0, x1, y1 = region.box
    for name in ("right_eye", "left_eye", "right_ear", "left_ear", "nose"):
        x, y = meta["keypoints"][name]
        assert x0 <= x <= x1 and y0 <= y <= y1


def test_face_region_from_pose_keypoints_agrees_with_the_detector(detector, person):
    image, silhouette, meta = person
    detected = detector.find(image, person_box(silhouette))[0].box
    body = _openpose_body(meta["keypoints"])
    assert iou(face_box_from_body(body), detected[None])[0] > 0.7
    no_ears = body.copy()
    no_ears[16:, 2] = 0
    assert iou(face_box_from_body(no_ears), detected[None])[0] > 0.6
    region = face_box_and_mask((512, 512), faces=[], body=body)
    assert region.source == "pose" and region.mask[int(meta["keypoints"]["nose"][1]),
                                                   int(meta["keypoints"]["nose"][0])] > 0.99
    headless = body.copy()
    headless[[0, 14, 15, 16, 17], 2] = 0
    assert face_box_from_body(headless) is None
    assert face_box_and_mask((512, 512), body=headless).source == "none"


def test_face_box_is_clipped_but_the_mask_keeps_its_shape():
    body = np.zeros((18, 3), np.float32)
    body[[0, 14, 15], :] = [[5, 20, 1], [0, 10, 1], [10, 10, 1]]  # a face at the top-left corner
    region = face_box_and_mask((64, 48), body=body)
    assert region.box[0] == 0 and region.box[1] == 0 and region.box[2] < 64
    assert region.mask[:, 0].max() > 0.5 and region.mask[47, 63] == 0   # the ellipse runs off the edge
    assert region.mask[0, 0] < region.mask[0, 5] > region.mask[0, 12]   # its centre stays at x = 5


def test_soft_mask_shapes_and_feather():
    ellipse = soft_shape_mask((40, 20), (0, 0, 40, 20), "ellipse", feather=0.2)
    rect = soft_shape_mask((40, 20), (0, 0, 40, 20), "rectangle", feather=0.2)
    assert ellipse[10, 20] == 1.0 and ellipse[0, 0] == 0.0 and rect[1, 1] > 0.0
    assert 0.0 < ellipse[10, 1] < 1.0                         # the fade at the rim
    assert rect.sum() > ellipse.sum()


# ---------------------------------------------------------------- choosing the face, the whole reference

def _face(score, box):
    box = np.array(box, np.float64)
    return Face(score, box, np.tile((box[:2] + box[2:]) / 2, (6, 1)))


def test_choose_face_trusts_the_head_keypoints_over_confidence_alone(person):
    body = _whole_body(person[2]["keypoints"])
    head = face_box_from_body(body)
    on_head = _face(0.80, head + [2, -1, 2, -1])
    too_big = _face(0.58, head + [-30, -20, 30, 40])               # twice the size, around the head
    on_chest = _face(0.95, head + [0, 110, 0, 110])                # a face printed on the shirt
    assert choose_face([on_chest, too_big, on_head], body) is on_head
    assert choose_face([on_chest, too_big, on_head]) is on_chest   # no body: the most confident
    assert choose_face([on_chest], body) is None                   # nothing agrees with the head
    region = face_box_and_mask((512, 512), [], body=body)
    assert region.source == "pose" and choose_face([], body) is None
    from_behind = body.copy()
    from_behind[[0, 14, 15, 16, 17], 2] = 0.0                      # no face keypoints: seen from behind
    elsewhere = _face(0.99, head + [300, 0, 300, 0])               # a poster beside the person
    assert choose_face([elsewhere, on_chest], from_behind) is on_chest
    assert choose_face([elsewhere], from_behind) is None


def test_a_face_printed_on_the_chest_no_longer_wins(detector, segmenter, person):
    image, _, meta = person
    x0, y0, x1, y1 = (int(round(v)) for v in meta["head_box"])
    printed = cv2.resize(image[y0:y1, x0:x1], None, fx=2.0, fy=2.0)
    image = image.copy()
    h, w = printed.shape[:2]
    image[190 - h // 2:190 - h // 2 + h, 190 - w // 2:190 - w // 2 + w] = printed
    head = np.array(meta["head_box"])
    old = detector.find(image, person_box(segmenter(image)))[0]    # the previous rule: whole image first
    assert old.box[1] > head[3]                                    # ... found the shirt
    body = _whole_body(meta["keypoints"])
    ref = prepare_reference(image, "512x512", "pad", segmenter, detector, lambda picture: body)
    box = ref.transform.inverse().apply_box(ref.face_box)
    assert ref.face.source == "detector" and iou(box, head[None])[0] > 0.4 and ref.face_score > 0.9


def test_the_same_face_for_every_size_and_fit(detector, segmenter, person):
    image, _, meta = person
    body = _whole_body(meta["keypoints"])
    boxes = []
    for size in ("512x512", "512x768", "576x1024", "1024x576", "auto"):
        for mode in FIT_MODES:
            ref = prepare_reference(image, size, mode, segmenter, detector, lambda picture: body)
            if ref.face_box is None:                                # a centre crop can cut the head away
                assert mode == "crop" and {"nose", "top of the head"} <= set(ref.cut), (size, mode)
                continue
            assert ref.face.source == "detector", (size, mode)
            boxes.append(ref.transform.inverse().apply_box(ref.face_box))
            assert ref.face.mask.shape == ref.image.shape[:2] and ref.person_mask.shape == ref.image.shape[:2]
            np.testing.assert_allclose(ref.body[:, :2], ref.transform.apply(body[:, :2]), atol=1e-3)
    assert len(boxes) >= 20
    np.testing.assert_allclose(boxes, np.repeat(boxes[:1], len(boxes), 0), atol=1e-6)


def test_the_crop_names_what_it_cuts_off(detector, segmenter, person):
    image, _, meta = person
    body = _whole_body(meta["keypoints"])
    estimate = lambda picture: body  # noqa: E731
    whole = prepare_reference(image, "512x768", "pad", segmenter, detector, estimate)
    assert whole.cut == () and whole.note() == "" and whole.person_kept > 0.99
    wide = prepare_reference(image, "1024x576", "crop person", segmenter, detector, estimate)
    assert {"r_ankle", "l_ankle", "right foot", "left foot"} <= set(wide.cut)
    assert not {"nose", "r_eye", "l_eye", "top of the head"} & set(wide.cut)     # the head is kept
    assert "the fit cuts off: " in wide.note() and "r_ankle" in wide.note() and wide.person_kept < 0.9
    assert set(wide.cut) <= set(OPENPOSE_BODY) | {"right hand", "left hand", "right foot", "left foot",
                                                   "top of the head"}
    nobody = prepare_reference(image, "1024x576", "crop", segmenter, detector, lambda picture: None)
    assert nobody.cut == ("top of the head",) and nobody.body is None   # only what the face detector knows


def test_crop_person_keeps_the_whole_body_beside_another_blob(detector, segmenter, person):
    # the person on the left of a wide photo, something person-like at the far right: the mask's box
    # spans both, so framing on the mask cut the person; framing on the body keeps them whole
    image, silhouette, meta = person
    image = np.pad(image, ((0, 0), (0, 600), (0, 0)), mode="edge")
    image[200:480, 1000:1080] = (200, 60, 60)
    body = _whole_body(meta["keypoints"])
    mask = segmenter(image)
    mask[200:480, 1000:1080] = 1.0
    ref = prepare_reference(image, "512x768", "crop person", lambda picture: mask, detector, lambda picture: body)
    assert ref.cut == ()
    _, old = fit_reference(image, "512x768", "crop person", mask=mask)
    xy = old.apply(body[:, :2])
    assert ((xy[:, 0] < 0) | (xy[:, 0] > 512)).any()                  # the previous framing cut the person
