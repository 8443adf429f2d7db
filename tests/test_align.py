"""PoseAlign: the MimicMotion linear fit, recovered exactly, computed by hand, and its failure reports."""
from dataclasses import replace

import numpy as np
import pytest

from marionette.models.errors import MarionetteError, NoPersonError
from marionette.models.pose.align import (ALIGN_IDS, STOP_COLOR, TORSO_PER_SHOULDER, WARN_COLOR, AlignmentFit,
                                          align_poses, apply_alignment, fit_alignment, judge_alignment,
                                          overlay_preview, reference_torso, require_trust, ALIGNED_COLOR,
                                          REF_COLOR)
from marionette.models.pose.types import empty_frame

# an upright person in a 576 x 1024 portrait (OpenPose-18 pixels)
REF_BODY = np.array([
    (288, 150), (288, 230), (230, 232), (215, 330), (205, 420), (346, 232), (361, 330), (371, 420),
    (250, 480), (248, 650), (246, 820), (326, 480), (328, 650), (330, 820), (275, 135), (301, 135),
    (262, 145), (314, 145)], np.float64)


def person_frame(w, h, body_xy, score=0.9, people=1):
    f = empty_frame(w, h, people)
    for p in range(people):
        f.body[p, :, :2] = body_xy
        f.body[p, :, 2] = score
    return f


def driving_from_reference(scale_px, offset_px):
    """Driving pixels whose image under ref = scale * drv + offset is REF_BODY exactly."""
    return (REF_BODY - offset_px) / scale_px


def test_recovers_a_known_transform_exactly_with_different_aspect():
    W, H, fw, fh = 576, 1024, 1280, 720
    s, t = 1.7, np.array([-300.0, -120.0])   # one pixel scale for x and y, as the aspect rule keeps
    ref = person_frame(W, H, REF_BODY)
    drv = [person_frame(fw, fh, driving_from_reference(s, t)) for _ in range(3)]
    drv[1].face[0, 5] = (*driving_from_reference(s, t)[0], 0.8)
    fit = fit_alignment(ref, drv)
    # normalised: ay = s * fh / H, by = t_y / H, ax = s * fw / W, bx = t_x / W
    assert fit.ay == pytest.approx(s * fh / H, rel=1e-6)
    assert fit.by == pytest.approx(t[1] / H, abs=1e-6)
    assert fit.ax == pytest.approx(s * fw / W, rel=1e-6)
    assert fit.bx == pytest.approx(t[0] / W, abs=1e-6)
    assert fit.used_ids == ALIGN_IDS and fit.used_frames == (0, 1, 2)
    assert fit.residual < 1e-3
    assert (fit.ref_size, fit.driving_size) == ((W, H), (fw, fh))
    out = apply_alignment(fit, drv, (W, H))
    assert (out[0].width, out[0].height) == (W, H)
    np.testing.assert_allclose(out[0].body[0, :, :2], REF_BODY, atol=1e-3)
    np.testing.assert_allclose(out[1].face[0, 5, :2], REF_BODY[0], atol=1e-3)  # the face moves alike
    assert out[1].face[0, 5, 2] == pytest.approx(0.8)


def test_hand_computed_fit_on_three_points():
    # three keypoints (neck, right hip, right ankle), same 100 x 100 canvas on both sides
    ref = empty_frame(100, 100, 1)
    drv = empty_frame(100, 100, 1)
    for i, (rx, ry), (dx, dy) in zip((1, 8, 10), [(50, 10), (40, 30), (60, 50)], [(20, 20), (30, 30), (40, 60)]):
        ref.body[0, i] = (rx, ry, 0.9)
        drv.body[0, i] = (dx, dy, 0.9)
    fit = fit_alignment(ref, [drv], min_shared=3)
    # least squares of ref_y on drv_y, normalised: x = (.2, .3, .6), y = (.1, .3, .5)
    # mean x = 11/30, mean y = 0.3; Sxy = 0.08, Sxx = 0.08667 -> ay = 12/13, by = 0.3 - 12/13 * 11/30 = -1/26
    assert fit.ay == pytest.approx(12 / 13)
    assert fit.by == pytest.approx(-1 / 26)
    # equal aspect: ax = ay; bx = mean(ref_x - ax * drv_x) = mean(.5 - .2a, .4 - .3a, .6 - .4a) = .5 - .3a
    assert fit.ax == pytest.approx(12 / 13)
    assert fit.bx == pytest.approx(0.5 - 0.3 * 12 / 13)
    assert fit.used_ids == (1, 8, 10)
    # residual: the y residuals are (.1 - .1538, .3 - .2462, .5 - .5), x residuals (0, -.1, +.1) + shifts
    aligned = np.array([(20, 20), (30, 30), (40, 60)]) / 100 * [fit.ax, fit.ay] + [fit.bx, fit.by]
    ref_n = np.array([(50, 10), (40, 30), (60, 50)]) / 100
    rms = np.sqrt(np.mean(np.sum(((aligned - ref_n) * 100) ** 2, axis=1)))
    assert fit.residual == pytest.approx(rms)
    assert 3 < fit.residual < 10


def test_x_scale_follows_the_pixel_aspect_rule():
    W, H, fw, fh = 500, 1000, 1000, 500
    ref = person_frame(W, H, REF_BODY * [500 / 576, 1000 / 1024])
    drv = person_frame(fw, fh, REF_BODY * [1000 / 576, 500 / 1024] * 0.8 + [100, 20])
    fit = fit_alignment(ref, [drv])
    # ax = ay / (fh / fw / H * W) = ay / (0.5 / 1000 * 500) = 4 ay
    assert fit.ax == pytest.approx(4 * fit.ay)
    out = apply_alignment(fit, [drv], (W, H))[0]
    span = lambda b: np.ptp(b[[2, 5], 0]) / np.ptp(b[[1, 10], 1])  # shoulder width / neck-ankle height
    assert span(out.body[0]) == pytest.approx(span(drv.body[0]), rel=1e-5)  # proportions kept in pixels


def test_matches_reference_formula_on_noisy_data():
    rng = np.random.default_rng(3)
    W, H, fw, fh = 576, 1024, 640, 360
    ref = person_frame(W, H, REF_BODY)
    ref.body[0, [9, 16], 2] = 0.1                       # not visible in the reference: not used
    frames = []
    for k in range(6):
        xy = REF_BODY * [0.5, 0.3] + [100 + 5 * k, 40] + rng.normal(0, 3, REF_BODY.shape)
        frames.append(person_frame(fw, fh, xy, people=2 if k == 2 else 1))
    fit = fit_alignment(ref, frames)
    ids = [i for i in ALIGN_IDS if i not in (9, 16)]
    used = [f for k, f in enumerate(frames) if k != 2]
    drv = np.stack([f.body[0, ids, :2] / [fw, fh] for f in used])
    ref_n = REF_BODY[ids] / [W, H]
    ay, by = np.polyfit(drv[..., 1].ravel(), np.tile(ref_n[:, 1], len(used)), 1)
    ax = ay / (fh / fw / H * W)
    bx = np.mean(np.tile(ref_n[:, 0], len(used)) - drv[..., 0].ravel() * ax)
    assert (fit.ax, fit.ay, fit.bx, fit.by) == pytest.approx((ax, ay, bx, by), rel=1e-5, abs=1e-6)
    assert fit.used_ids == tuple(ids) and fit.used_frames == (0, 1, 3, 4, 5)


def test_apply_keeps_missing_points_missing_and_moves_every_person():
    ref = person_frame(576, 1024, REF_BODY)
    drv = person_frame(576, 1024, REF_BODY * 0.5 + 100)
    fit = fit_alignment(ref, [drv])
    two = person_frame(576, 1024, REF_BODY * 0.5 + 100, people=2)
    two.body[1, 4] = 0.0
    two.left_hand[0, 3] = (300, 400, 0.7)
    out = apply_alignment(fit, [two])[0]
    assert (out.body[1, 4] == 0).all()                  # missing stays missing, at (0, 0)
    assert (out.right_hand == 0).all() and (out.face == 0).all()
    np.testing.assert_allclose(out.body[0, :, :2], REF_BODY, atol=1e-3)
    np.testing.assert_allclose(out.body[1, 5, :2], REF_BODY[5], atol=1e-3)
    np.testing.assert_allclose(out.left_hand[0, 3, :2], (np.array([300, 400]) - 100) * 2, atol=1e-3)
    aligned, fit2 = align_poses(ref, [drv])
    assert fit2 == fit and aligned[0].width == 576


def test_no_person_in_reference():
    with pytest.raises(NoPersonError, match="No person was found in the reference") as e:
        fit_alignment(empty_frame(576, 1024), [person_frame(576, 1024, REF_BODY)])
    assert "reference photo" in e.value.fix


def test_too_few_shared_keypoints_names_them():
    ref = empty_frame(576, 1024, 1)
    ref.body[0, [0, 14, 15], :2] = REF_BODY[[0, 14, 15]]   # a head-only reference
    ref.body[0, [0, 14, 15], 2] = 0.9
    drv = person_frame(576, 1024, REF_BODY)
    drv.body[0, 15, 2] = 0.0
    with pytest.raises(MarionetteError) as e:
        fit_alignment(ref, [drv])
    msg = str(e.value)
    assert "Only 2 alignment keypoints" in msg and "(nose, r_eye)" in msg and "at least 4" in msg
    assert "Not visible in the reference: neck, r_shoulder" in msg
    assert "never in a one-person driving frame: l_eye" in msg
    assert "head to ankles" in e.value.fix


def test_no_single_person_driving_frame():
    ref = person_frame(576, 1024, REF_BODY)
    frames = [empty_frame(576, 1024), person_frame(576, 1024, REF_BODY, people=2)]
    with pytest.raises(MarionetteError, match=r"None of the 2 driving frames has exactly one person "
                                              r"\(1 have nobody, 1 have two or more\)") as e:
        fit_alignment(ref, frames)
    assert "driving video" in e.value.fix
    with pytest.raises(MarionetteError, match="no driving poses"):
        fit_alignment(ref, [])


def test_implausible_scale_and_flipped_body():
    ref = person_frame(576, 1024, REF_BODY)
    tiny = person_frame(576, 1024, REF_BODY * 0.1 + 200)      # the reference would be 10x the driving
    with pytest.raises(MarionetteError, match=r"vertical scale is 10.00 \(allowed 0.25–4.0\)"):
        fit_alignment(ref, [tiny])
    assert fit_alignment(ref, [tiny], scale_range=(0.1, 20)).ay == pytest.approx(10)
    flipped = person_frame(576, 1024, REF_BODY * [1, -1] + [0, 1000])
    with pytest.raises(MarionetteError, match="upside down"):
        fit_alignment(ref, [flipped])
    flat = person_frame(576, 1024, np.column_stack([REF_BODY[:, 0], np.full(18, 500.0)]))
    with pytest.raises(MarionetteError, match="same height"):
        fit_alignment(ref, [flat])


def test_driving_score_threshold_selects_points():
    ref = person_frame(100, 100, REF_BODY / 10.24)
    drv = person_frame(100, 100, REF_BODY / 10.24)
    drv.body[0, :, 2] = 0.1
    drv.body[0, [1, 8, 10, 13], 2] = 0.9
    assert len(fit_alignment(ref, [drv]).used_ids) == len(ALIGN_IDS)
    assert fit_alignment(ref, [drv], driving_min_score=0.3).used_ids == (1, 8, 10, 13)


def test_overlay_preview_draws_both_skeletons_over_dimmed_image():
    W, H = 288, 512
    image = np.full((H, W, 3), 200, np.uint8)
    ref = person_frame(576, 1024, REF_BODY)                   # pose canvas twice the image size
    aligned = person_frame(576, 1024, REF_BODY + [60, 0])
    out = overlay_preview(image, ref, aligned, driving_first=person_frame(576, 1024, REF_BODY * 0.5))
    assert out.shape == (H, W, 3) and out.dtype == np.uint8
    assert tuple(out[H - 5, W // 2]) == (90, 90, 90)          # dimmed by 0.45
    hip_mid_ref = ((REF_BODY[8] + REF_BODY[9]) / 4).round().astype(int)  # r_hip - r_knee, image scale
    hip_mid_al = ((REF_BODY[8] + REF_BODY[9] + [120, 0]) / 4).round().astype(int)
    assert tuple(out[hip_mid_ref[1], hip_mid_ref[0]]) == REF_COLOR
    assert tuple(out[hip_mid_al[1], hip_mid_al[0]]) == ALIGNED_COLOR
    assert REF_COLOR != ALIGNED_COLOR
    float_img = overlay_preview(image.astype(np.float32) / 255, ref, aligned)
    assert tuple(float_img[H - 5, W // 2]) == (90, 90, 90)
    with pytest.raises(MarionetteError, match="RGB image"):
        overlay_preview(np.zeros((4, 4, 2), np.uint8), ref, aligned)


def test_fit_describe_is_readable():
    fit = AlignmentFit(1.0, 1.0, 0.0, 0.0, (1, 8), (0,), 2.5)
    assert "neck, r_hip" in fit.describe() and "2.5 px" in fit.describe()


# ----------------------------------------------------------------------------------------------- trust

TORSO = float(np.linalg.norm((REF_BODY[8] + REF_BODY[11]) / 2 - REF_BODY[1]))   # 250 px


def judged(ref, driving, **options):
    fit = fit_alignment(ref, driving, **options)
    return fit, judge_alignment(fit, ref, apply_alignment(fit, driving))


def test_a_matching_driving_body_is_trusted():
    ref = person_frame(576, 1024, REF_BODY)
    fit, trust = judged(ref, [person_frame(1280, 720, driving_from_reference(1.7, np.array([-300.0, -120.0])))])
    assert trust.torso_px == pytest.approx(TORSO) and trust.level == "ok" and trust.reasons == ()
    assert trust.residual < 1e-5 and trust.neck < 1e-5 and trust.torso == pytest.approx(1.0)
    assert trust.off_canvas == 0.0 and "0% of keypoints off canvas" in trust.describe()
    require_trust(trust)                                   # nothing to stop


def test_keypoints_off_the_canvas_warn_then_stop():
    # a half-body reference (no knees, no ankles) with a whole-body dancer: legs fall below the canvas
    ref = person_frame(576, 1024, REF_BODY)
    ref.body[0, [9, 10, 12, 13], 2] = 0.0
    ref.height = 560                                         # the photo ends just below the hips
    drv = person_frame(576, 1024, REF_BODY)
    _, trust = judged(ref, [drv])
    assert trust.off_canvas == pytest.approx(4 / 18) and trust.level == "warn"     # 22 % > 10 %
    assert len(trust.reasons) == 1 and "22% of the aligned keypoints fall outside" in trust.reasons[0]
    ref.height = 470                                         # hips off too: 6 of 18
    _, trust = judged(ref, [drv])
    assert trust.level == "stop" and trust.off_canvas == pytest.approx(6 / 18)
    with pytest.raises(MarionetteError, match="cannot be trusted: 33% of the aligned keypoints") as e:
        require_trust(trust)
    assert 'untrusted_fit to "warn"' in e.value.fix


def test_a_folded_torso_and_a_wandering_neck_are_named():
    ref = person_frame(576, 1024, REF_BODY)
    crouched = REF_BODY.copy()
    crouched[[8, 9, 10, 11, 12, 13], 1] -= 180              # hips 180 px up (torso 70 px), legs as long
    frames = [person_frame(576, 1024, crouched) for _ in range(3)]
    _, trust = judged(ref, frames, scale_range=(0.1, 10))
    assert trust.torso < 1 / 1.8 and trust.level == "stop" and any("torso is ×" in r for r in trust.reasons)
    walking = [person_frame(576, 1024, REF_BODY + [dx, 0]) for dx in (-300, -200, 200, 300)]
    _, trust = judged(ref, walking)                          # fitted x offset averages out: necks ±200–300 px
    assert trust.neck == pytest.approx(250 / TORSO) and "aligned neck sits 100% of a torso" in " ".join(trust.reasons)
    assert trust.level == "stop"


def test_reference_size_falls_back_to_shoulders_then_extent():
    body = np.column_stack([REF_BODY, np.full(18, 0.9)])
    assert reference_torso(body) == pytest.approx(TORSO)
    body[[8, 11], 2] = 0.0
    assert reference_torso(body) == pytest.approx(116 * TORSO_PER_SHOULDER)
    body[[2, 5], 2] = 0.0
    assert reference_torso(body) == pytest.approx((820 - 135) / 3)


def test_overlay_writes_the_warnings_in_amber_or_red():
    W, H = 576, 1024
    ref = person_frame(W, H, REF_BODY)
    image = np.zeros((H, W, 3), np.uint8)
    plain = overlay_preview(image, ref, ref)
    ok = judged(ref, [ref])[1]
    assert np.array_equal(overlay_preview(image, ref, ref, trust=ok), plain)
    ref_half = person_frame(W, H, REF_BODY)
    ref_half.body[0, [9, 10, 12, 13], 2] = 0.0
    ref_half.height = 560
    warn = judged(ref_half, [ref])[1]
    drawn = overlay_preview(image, ref, ref, trust=warn)
    changed = np.any(drawn != plain, axis=-1)
    assert changed[-120:].any() and (drawn[changed] == WARN_COLOR).all(axis=-1).any()
    stop = replace(warn, level="stop")
    assert (overlay_preview(image, ref, ref, trust=stop) == STOP_COLOR).all(axis=-1).any()
