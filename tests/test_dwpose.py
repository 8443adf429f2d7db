"""DWPose ONNX backend: parity with an independent per-element rendition of the official
pipeline, hand-made detector outputs, the OpenPose-18 mapping, batching and errors."""
import cv2
import numpy as np
import onnxruntime as ort
import pytest

from marionette.models.errors import MarionetteError
from marionette.models.pose import dwpose
from marionette.models.pose.dwpose import DWPoseDetector, decode_yolox, letterbox, simcc_decode
from marionette.models.pose.types import OPENPOSE_BODY
from marionette.models.pose.wholebody_layout import to_openpose

from onnx_fakes import make_classifier, make_dwpose, make_yolox


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("dwpose")
    return {"det": make_yolox(d / "yolox_l.onnx"), "pose": make_dwpose(d / "dw-ll_ucoco_384.onnx"),
            "det_dyn": make_yolox(d / "yolox_dyn.onnx", batch=None),
            "pose_dyn": make_dwpose(d / "dwpose_dyn.onnx", batch=None),
            "classifier": make_classifier(d / "classifier.onnx"), "dir": d}


def scene(h, w, blobs, seed=0):
    """Dark frame with soft blobs (cx, cy, sx, sy, rgb); green/white read as people, red not."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.full((h, w, 3), 20.0)
    for cx, cy, sx, sy, colour in blobs:
        img += np.exp(-(((xx - cx) / sx) ** 2 + ((yy - cy) / sy) ** 2))[..., None] * np.array(colour)
    img += rng.normal(0, 3, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


PEOPLE = [(200, 240, 60, 150, (230, 235, 230)), (520, 200, 50, 120, (60, 230, 80)),
          (620, 400, 60, 60, (250, 10, 10))]

# ----------------------------------------------------------------------------- reference
# A plain, loop-per-element rendition of the official ONNX pipeline (DWPose annotator /
# MimicMotion onnxdet.py + onnxpose.py + wholebody.py), float32 where the official is float32.
F32 = np.float32
COCO17 = ("nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
          "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee",
          "right_knee", "left_ankle", "right_ankle")


def ref_detect(session, img):
    r = min(640 / img.shape[0], 640 / img.shape[1])
    small = cv2.resize(img, (int(img.shape[1] * r), int(img.shape[0] * r)), interpolation=cv2.INTER_LINEAR)
    canvas = np.empty((640, 640, 3), np.uint8)
    canvas[...] = 114
    canvas[:small.shape[0], :small.shape[1]] = small
    chw = canvas.transpose(2, 0, 1)[None].astype(np.float32)
    raw = session.run(None, {session.get_inputs()[0].name: chw})[0][0]
    return ref_decode(raw, r)


def ref_decode(raw, r):
    exp_wh = np.exp(raw[:, 2:4])  # float32 exp over the column, as the official array code
    per_class, a = {}, 0
    for s in (8, 16, 32):
        for gy in range(640 // s):
            for gx in range(640 // s):
                row = raw[a]
                cx, cy = F32((float(row[0]) + gx) * s), F32((float(row[1]) + gy) * s)
                w, h = F32(float(exp_wh[a, 0]) * s), F32(float(exp_wh[a, 1]) * s)
                box = ((cx - w / F32(2)) / F32(r), (cy - h / F32(2)) / F32(r),
                       (cx + w / F32(2)) / F32(r), (cy + h / F32(2)) / F32(r))
                scores = row[4] * row[5:]
                for c in np.nonzero(scores > 0.1)[0]:
                    per_class.setdefault(int(c), []).append((scores[c], a, box))
                a += 1
    final = []
    for c, cands in per_class.items():
        for score, _, box in ref_nms(cands):
            if c == 0 and float(score) > 0.3:
                final.append((float(score), [float(v) for v in box]))
    return final


def ref_nms(cands):
    pending = sorted(cands, key=lambda t: (t[0], t[1]), reverse=True)
    kept = []
    while pending:
        best, pending = pending[0], pending[1:]
        kept.append(best)
        bx1, by1, bx2, by2 = best[2]
        area_b = (bx2 - bx1 + F32(1)) * (by2 - by1 + F32(1))
        survivors = []
        for cand in pending:
            x1, y1, x2, y2 = cand[2]
            area_c = (x2 - x1 + F32(1)) * (y2 - y1 + F32(1))
            iw = max(F32(0), min(bx2, x2) - max(bx1, x1) + F32(1))
            ih = max(F32(0), min(by2, y2) - max(by1, y1) + F32(1))
            inter = iw * ih
            if inter / (area_b + area_c - inter) <= 0.45:
                survivors.append(cand)
        pending = survivors
    return kept


def ref_pose_one(session, img, box):
    x1, y1, x2, y2 = box
    cx, cy = (x1 + x2) * 0.5, (y1 + y2) * 0.5
    sw, sh = (x2 - x1) * 1.25, (y2 - y1) * 1.25
    if sw > sh * 0.75:
        sh = sw / 0.75
    else:
        sw = sh * 0.75
    a = (F32(cx), F32(cy))
    b = (F32(cx), F32(cy - 0.5 * sw))
    c = (b[0] - (a[1] - b[1]), b[1] + (a[0] - b[0]))
    src = np.array([a, b, c], np.float32)
    dst = np.array([(144, 192), (144, 48), (0, 48)], np.float32)
    crop = cv2.warpAffine(img, cv2.getAffineTransform(src, dst), (288, 384), flags=cv2.INTER_LINEAR)
    norm = np.empty((1, 3, 384, 288), np.float32)
    for ch, (mean, std) in enumerate(zip((123.675, 116.28, 103.53), (58.395, 57.12, 57.375))):
        norm[0, ch] = (crop[..., ch].astype(np.float64) - mean) / std
    simcc_x, simcc_y = session.run(None, {session.get_inputs()[0].name: norm})
    points = []
    for k in range(133):
        xs, ys = simcc_x[0, k].tolist(), simcc_y[0, k].tolist()
        mx, my = max(xs), max(ys)
        ix, iy = xs.index(mx), ys.index(my)
        score = min(mx, my)
        if score <= 0:
            ix = iy = -1
        px = (ix / 2) / 288 * sw + cx - sw / 2
        py = (iy / 2) / 384 * sh + cy - sh / 2
        points.append((px, py, score))
    return points


def ref_openpose(points):
    named = dict(zip(COCO17, points[:17]))
    ls, rs = named["left_shoulder"], named["right_shoulder"]
    visible = ls[2] > 0.3 and rs[2] > 0.3
    named["neck"] = ((ls[0] + rs[0]) / 2, (ls[1] + rs[1]) / 2, 1.0 if visible else 0.0)
    full = {n: named[n.replace("r_", "right_").replace("l_", "left_")] for n in OPENPOSE_BODY}

    def keep(p):
        return list(p) if p[2] > 0.3 else [0.0, 0.0, 0.0]
    return {"body": [keep(full[n]) for n in OPENPOSE_BODY], "face": [keep(p) for p in points[23:91]],
            "left_hand": [keep(p) for p in points[91:112]], "right_hand": [keep(p) for p in points[112:133]]}


# ----------------------------------------------------------------------------- 1. parity

@pytest.mark.parametrize("shape", [(480, 720), (700, 420), (300, 400)])
def test_matches_official_reference(models, shape):
    h, w = shape
    sx, sy = w / 720, h / 480
    blobs = [(cx * sx, cy * sy, ax * sx, ay * sy, col) for cx, cy, ax, ay, col in PEOPLE]
    img = scene(h, w, blobs, seed=h)
    ours = DWPoseDetector(models["det"], models["pose"], providers=["CPUExecutionProvider"])(img[None])[0]
    det_s = ort.InferenceSession(models["det"], providers=["CPUExecutionProvider"])
    pose_s = ort.InferenceSession(models["pose"], providers=["CPUExecutionProvider"])
    people = [ref_openpose(ref_pose_one(pose_s, img, box)) for _, box in ref_detect(det_s, img)]
    assert (ours.width, ours.height) == (w, h)
    assert ours.num_people == len(people) >= 2
    for part in ("body", "left_hand", "right_hand", "face"):
        ref = np.array([p[part] for p in people])
        got = getattr(ours, part)
        np.testing.assert_allclose(got[..., :2], ref[..., :2], atol=1e-4, err_msg=part)
        np.testing.assert_allclose(got[..., 2], ref[..., 2], atol=1e-6, err_msg=part)
    vis = ours.body[..., 2] > 0
    assert 0.2 < vis.mean() < 0.9 and (ours.body[:, 1, 2] > 0).any() and (ours.body[:, 1, 2] == 0).any()


# ----------------------------------------------------------------------------- 2. detector decode

def _anchor(stride, gx, gy):
    offset = {8: 0, 16: 80 * 80, 32: 80 * 80 + 40 * 40}[stride]
    return offset + gy * (640 // stride) + gx


def _put(raw, stride, gx, gy, dx, dy, w_cells, h_cells, obj, cls, cls_score):
    row = raw[_anchor(stride, gx, gy)]
    row[:5] = dx, dy, np.log(w_cells), np.log(h_cells), obj
    row[5 + cls] = cls_score


def test_decode_grid_nms_and_thresholds():
    raw = np.zeros((8400, 85), np.float32)
    _put(raw, 8, 10, 20, 0.5, 0.5, 4, 8, 0.9, 0, 0.9)        # A 0.81: centre (84,164), 32x64
    _put(raw, 8, 11, 20, -0.375, 0.5, 4, 8, 0.8, 0, 0.9)    # 1 px right of A, 0.72: suppressed
    _put(raw, 8, 13, 20, -0.96875, 0.5, 4, 8, 0.8, 0, 0.5)  # A + 24.5 px: IoU 0.4525 (+1 areas; 0.4463 without)
    _put(raw, 8, 12, 20, 0.0625, 0.5, 4, 8, 0.7, 0, 0.5)     # A + 25 px (frame): IoU 0.4444 -> kept, 0.35
    _put(raw, 32, 15, 5, 0.0, 0.0, 2, 3, 0.5, 0, 1.0)        # C 0.5 at (480,160), 64x96
    _put(raw, 32, 5, 15, 0.0, 0.0, 2, 2, 0.5, 0, 0.5)        # 0.25: below the person threshold
    _put(raw, 16, 30, 30, 0.0, 0.0, 4, 4, 0.95, 3, 0.99)     # strong but not a person
    _put(raw, 16, 36, 2, 0.0, 0.0, 4, 4, 0.5, 0, 0.61)       # 0.305: just above 0.3, isolated
    boxes, scores = decode_yolox(raw, ratio=0.5)
    expected = np.array([[68, 132, 100, 196], [448, 112, 512, 208], [80.5, 132, 112.5, 196],
                         [544, 0, 608, 64]], np.float64) / 0.5
    np.testing.assert_allclose(boxes, expected, atol=1e-3)
    np.testing.assert_allclose(scores, [0.81, 0.5, 0.35, 0.305], atol=1e-6)


def test_decode_matches_reference_on_random_outputs():
    rng = np.random.default_rng(3)
    raw = np.zeros((8400, 85), np.float32)
    raw[:, :2] = rng.uniform(-0.5, 1.5, (8400, 2))
    raw[:, 2:4] = rng.uniform(0.5, 2.5, (8400, 2))
    raw[:, 4] = rng.uniform(0, 1, 8400) ** 4
    raw[:, 5:] = rng.uniform(0, 0.12, (8400, 80))     # other classes: rarely above 0.1, must not matter
    raw[:, 5] = rng.uniform(0, 1, 8400) ** 2
    boxes, scores = decode_yolox(raw, ratio=0.8)
    ref = ref_decode(raw, 0.8)
    assert len(ref) > 5
    np.testing.assert_allclose(scores, [s for s, _ in ref], atol=1e-7)
    np.testing.assert_allclose(boxes, [b for _, b in ref], atol=1e-4)


def test_bad_detector_output_is_reported():
    with pytest.raises(MarionetteError, match="8400"):
        decode_yolox(np.zeros((100, 85), np.float32), 1.0)


def test_letterbox_pads_bottom_right_with_114():
    img = np.full((100, 200, 3), 7, np.uint8)
    chw, ratio = letterbox(img)
    assert ratio == 3.2 and chw.shape == (3, 640, 640) and chw.dtype == np.float32
    assert (chw[:, :320, :] == 7).all() and (chw[:, 320:, :] == 114).all()


# ----------------------------------------------------------------------------- crop geometry, SimCC

def test_crop_and_back_projection_are_inverse():
    box = np.array([40.0, 30.0, 140.0, 330.0])
    center, scale = dwpose.box_to_center_scale(box)
    np.testing.assert_allclose(center, [90, 180])
    np.testing.assert_allclose(scale, [375 * 0.75, 375])  # tall box: height * 1.25, width widened to 3:4
    m = dwpose.warp_matrix(center, scale, 288, 384)
    pts = np.array([[90.0, 180.0], [0.0, 0.0], [150.5, 301.25]])
    crop_pts = pts @ m[:, :2].T + m[:, 2]
    np.testing.assert_allclose(crop_pts[0], [144, 192], atol=1e-4)
    np.testing.assert_allclose(dwpose.back_project(crop_pts, center, scale), pts, atol=1e-3)
    img = np.zeros((400, 300, 3), np.uint8)
    img[170:190, 80:100] = 255
    crop, c2, s2 = dwpose.crop_transform(img, box)
    assert crop.shape == (3, 384, 288) and crop.dtype == np.float32
    np.testing.assert_allclose(crop[:, 192, 144], (255 - dwpose.PIXEL_MEAN) / dwpose.PIXEL_STD, rtol=1e-5)
    np.testing.assert_allclose(crop[:, 0, 0], -dwpose.PIXEL_MEAN / dwpose.PIXEL_STD, rtol=1e-5)


def test_simcc_decode_takes_argmax_over_split_and_min_score():
    sx = np.zeros((1, 3, 576), np.float32)
    sy = np.zeros((1, 3, 768), np.float32)
    sx[0, 0, 101], sy[0, 0, 40] = 0.9, 0.6      # score = min -> 0.6
    sx[0, 1, 5], sy[0, 1, 700] = 0.2, 0.8       # -> 0.2
    sx[0, 2] = -1.0                              # never positive -> location -1
    sy[0, 2, 3] = 0.5
    locs, scores = simcc_decode(sx, sy)
    np.testing.assert_allclose(locs[0, :2], [[50.5, 20.0], [2.5, 350.0]])
    np.testing.assert_allclose(scores[0], [0.6, 0.2, -1.0])
    np.testing.assert_allclose(locs[0, 2], [-0.5, -0.5])


# ----------------------------------------------------------------------------- 3. OpenPose-18 mapping

def _wholebody(shoulder_scores=(0.9, 0.9)):
    kpts = np.stack([np.arange(133) * 2.0, 1000 + np.arange(133) * 3.0], axis=1)[None]
    scores = np.full((1, 133), 0.8)
    scores[0, 5], scores[0, 6] = shoulder_scores
    return kpts, scores


def test_openpose_order_and_parts():
    kpts, scores = _wholebody()
    scores[0, 3] = 0.3            # left ear exactly at the threshold: missing
    scores[0, 100] = 0.1          # a left-hand point: missing
    parts = to_openpose(kpts, scores)
    body = parts["body"][0]
    coco = {"nose": 0, "l_eye": 1, "r_eye": 2, "r_ear": 4, "l_shoulder": 5, "r_shoulder": 6, "l_elbow": 7,
            "r_elbow": 8, "l_wrist": 9, "r_wrist": 10, "l_hip": 11, "r_hip": 12, "l_knee": 13,
            "r_knee": 14, "l_ankle": 15, "r_ankle": 16}
    for name, c in coco.items():
        np.testing.assert_allclose(body[OPENPOSE_BODY.index(name)], [2 * c, 1000 + 3 * c, scores[0, c]], rtol=1e-6)
    assert (body[OPENPOSE_BODY.index("l_ear")] == 0).all()
    np.testing.assert_allclose(body[1], [11, 1016.5, 1.0])          # neck = shoulder mean, score 1
    np.testing.assert_allclose(parts["face"][0, 0, :2], [46, 1069])  # COCO-WholeBody 23
    np.testing.assert_allclose(parts["right_hand"][0, 20, :2], [264, 1396])  # 132
    assert parts["left_hand"].shape == (1, 21, 3) and (parts["left_hand"][0, 9] == 0).all()
    np.testing.assert_allclose(parts["left_hand"][0, 0, :2], [182, 1273])    # 91


@pytest.mark.parametrize("shoulders", [(0.9, 0.3), (0.25, 0.9), (0.0, 0.0)])
def test_neck_missing_when_a_shoulder_is_weak(shoulders):
    parts = to_openpose(*_wholebody(shoulders))
    assert (parts["body"][0, 1] == 0).all()


def test_empty_input_gives_no_people():
    parts = to_openpose(np.zeros((0, 133, 2)), np.zeros((0, 133)))
    assert all(p.shape[0] == 0 for p in parts.values())


# ----------------------------------------------------------------------------- 4. detector object

def test_no_person_frames(models):
    det = DWPoseDetector(models["det"], models["pose"])
    frames = np.stack([np.zeros((240, 320, 3), np.uint8),
                       scene(240, 320, [(160, 120, 50, 50, (250, 10, 10))])])  # red: not a person
    out = det(frames)
    assert [f.num_people for f in out] == [0, 0]
    assert (out[0].width, out[0].height) == (320, 240) and out[0].body.shape == (0, 18, 3)


def test_batched_equals_looped(models):
    frames = np.stack([scene(360, 540, [(b[0] * 0.75 + dx, b[1] * 0.75, b[2] * 0.75, b[3] * 0.75, b[4])
                                        for b in PEOPLE], seed=dx) for dx in (0, 15, 40)])
    looped = DWPoseDetector(models["det"], models["pose"])
    batched = DWPoseDetector(models["det_dyn"], models["pose_dyn"], max_batch=5, frames_per_batch=2)
    assert not looped.pose_batched and batched.pose_batched and batched.det_batched
    for a, b in zip(looped(frames), batched(frames)):
        assert a.num_people == b.num_people > 0
        for name, part in a.parts().items():
            np.testing.assert_allclose(b.parts()[name], part, atol=1e-4, err_msg=name)


def test_progress_and_cancel(models):
    det = DWPoseDetector(models["det"], models["pose"])
    frames = np.zeros((3, 64, 64, 3), np.uint8)
    seen = []
    det(frames, on_progress=lambda done, total: seen.append((done, total)))
    assert seen == [(1, 3), (2, 3), (3, 3)]

    def cancel(done, total):
        if done == 2:
            raise KeyboardInterrupt("cancelled")
    with pytest.raises(KeyboardInterrupt):
        det(frames, on_progress=cancel)


def test_bad_frames_are_rejected(models):
    det = DWPoseDetector(models["det"], models["pose"])
    with pytest.raises(MarionetteError, match="uint8 RGB"):
        det(np.zeros((1, 64, 64, 3), np.float32))
    with pytest.raises(MarionetteError, match="uint8 RGB"):
        det(np.zeros((1, 64, 64, 4), np.uint8))


def test_missing_file_names_it(models, tmp_path):
    missing = str(tmp_path / "nowhere" / "yolox_l.onnx")
    with pytest.raises(MarionetteError, match="nowhere/yolox_l.onnx"):
        DWPoseDetector(missing, models["pose"])
    with pytest.raises(MarionetteError, match="dw-ll_missing.onnx"):
        DWPoseDetector(models["det"], str(tmp_path / "dw-ll_missing.onnx"))


def test_wrong_models_get_clear_errors(models, tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a protobuf at all" * 10)
    with pytest.raises(MarionetteError, match="not a loadable ONNX model.*YOLOX"):
        DWPoseDetector(str(junk), models["pose"])
    with pytest.raises(MarionetteError, match="does not look like the YOLOX-L person detector"):
        DWPoseDetector(models["classifier"], models["pose"])
    with pytest.raises(MarionetteError, match="does not look like the YOLOX-L person detector"):
        DWPoseDetector(models["pose"], models["det"])   # swapped
    with pytest.raises(MarionetteError, match="does not look like the DWPose whole-body model"):
        DWPoseDetector(models["det"], models["det"])


def test_cpu_provider_when_no_cuda(models):
    det = DWPoseDetector(models["det"], models["pose"])
    expected = "CUDAExecutionProvider" if "CUDAExecutionProvider" in ort.get_available_providers() \
        else "CPUExecutionProvider"
    assert det.providers[0] == expected
    assert dwpose.default_providers()[-1] == "CPUExecutionProvider"
