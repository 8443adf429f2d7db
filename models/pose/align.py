"""PoseAlign: move and scale driving poses onto the reference body (MimicMotion's linear fit).

As in MimicMotion's ``get_video_pose`` (``mimicmotion/dwpose/preprocess.py``), in coordinates
normalised by each image's size:

* keypoints: nose, neck, shoulders, hips, knees, ankles, eyes, ears (``ALIGN_IDS``) that are
  visible (score > 0.3) in the reference; elbows and wrists move too much to be used;
* frames: driving frames with exactly one person;
* y: least-squares line ``ref_y ≈ ay · drv_y + by`` over all those points of all those frames;
* x: ``ax = ay / (fh / fw / H * W)`` so one pixel keeps its aspect (fw × fh driving, W × H reference),
  ``bx = mean(ref_x − ax · drv_x)``;
* the same (a, b) moves body, face and hands of every frame.

Where the reference code fails obscurely (empty fits, a stack of no frames) or silently
(giant or flipped bodies), this module raises a MarionetteError that says what to change.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import cv2
import numpy as np

from ..errors import MarionetteError, NoPersonError
from ..vision.image import to_rgb_uint8
from .draw import HAND_EDGES, LIMBS, DRAWN_LIMBS
from .types import OPENPOSE_BODY, VISIBLE, PoseFrame

ALIGN_IDS = (0, 1, 2, 5, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17)
MIN_SHARED = 4
SCALE_RANGE = (0.25, 4.0)
REF_COLOR = (40, 230, 90)         # preview: reference skeleton (green)
ALIGNED_COLOR = (255, 60, 210)    # preview: aligned driving skeleton (magenta)
RAW_COLOR = (150, 150, 150)       # preview: unaligned first driving frame (grey)
WARN_COLOR = (255, 190, 40)       # preview: a doubtful alignment's warnings (amber)
STOP_COLOR = (255, 70, 70)        # preview: an untrustworthy alignment's warnings (red)

_FIX_REFERENCE = ("Use a reference photo showing one person from head to ankles, or turn pose alignment off "
                  "if the driving video already matches the reference framing.")


@dataclass(frozen=True)
class AlignmentFit:
    """ref_norm ≈ (ax, ay) · drv_norm + (bx, by), in 0..1 coordinates of each image."""
    ax: float
    ay: float
    bx: float
    by: float
    used_ids: tuple[int, ...]      # OpenPose-18 indices that entered the fit
    used_frames: tuple[int, ...]   # indices into the driving list that entered the fit
    residual: float                # RMS distance, reference pixels, reference vs aligned points
    ref_size: tuple[int, int] = (0, 0)       # (width, height) of the reference canvas
    driving_size: tuple[int, int] = (0, 0)   # (width, height) whose aspect defined ax

    def describe(self) -> str:
        names = ", ".join(OPENPOSE_BODY[i] for i in self.used_ids)
        return (f"scale x {self.ax:.3f} y {self.ay:.3f}, offset x {self.bx:+.3f} y {self.by:+.3f} "
                f"(normalised); {len(self.used_frames)} frames, keypoints: {names}; "
                f"RMS residual {self.residual:.1f} px")


def _names(ids) -> str:
    return ", ".join(OPENPOSE_BODY[i] for i in ids) if len(ids) else "none"


def _xy_norm(frame: PoseFrame, points: np.ndarray) -> np.ndarray:
    return points[..., :2].astype(np.float64) / np.array([frame.width, frame.height], np.float64)


def _single_person_frames(driving: list[PoseFrame]) -> list[int]:
    if not driving:
        raise MarionetteError("There are no driving poses to align.", "Connect a driving pose sequence.")
    single = [f for f, fr in enumerate(driving) if fr.num_people == 1]
    if not single:
        none = sum(fr.num_people == 0 for fr in driving)
        raise MarionetteError(
            f"None of the {len(driving)} driving frames has exactly one person ({none} have nobody, "
            f"{len(driving) - none} have two or more), so no frame can be fitted to the reference.",
            "Check the driving video: it should show one dancer, fully in view. Crop away other people "
            "or pick a clip where the person is detected.")
    return single


def _collect_pairs(ref_body, ref_ids, driving, single, min_score):
    """Matched (reference, driving) normalised points: ids visible in the reference, present in a frame."""
    ref_pts, drv_pts, ids, frames = [], [], [], []
    for f in single:
        d = driving[f].body[0]
        dn = _xy_norm(driving[f], d)
        for i in ref_ids:
            if d[i, 2] > min_score:
                ref_pts.append(ref_body[i])
                drv_pts.append(dn[i])
                ids.append(i)
                frames.append(f)
    return np.array(ref_pts).reshape(-1, 2), np.array(drv_pts).reshape(-1, 2), ids, frames


def _check_scale(ay: float, min_scale: float, max_scale: float) -> None:
    if not np.isfinite(ay) or ay <= 0:
        raise MarionetteError(
            f"The fitted vertical scale is {ay:.3f}: the driving body runs upside down relative to the "
            "reference (the keypoints do not correspond).",
            "Check that the reference and the driving video each show one upright person; "
            + _FIX_REFERENCE)
    if not min_scale <= ay <= max_scale:
        raise MarionetteError(
            f"The fitted vertical scale is {ay:.2f} (allowed {min_scale}–{max_scale}): the driving person "
            f"would be drawn {ay:.2f} times their height relative to the frame. This usually means the "
            "reference shows only part of the body, or the driving detections are wrong.",
            _FIX_REFERENCE + " Also check the driving pose preview for missing or swapped people.")


def fit_alignment(ref: PoseFrame, driving: list[PoseFrame], min_shared: int = MIN_SHARED, *,
                  ref_person: int = 0, scale_range: tuple[float, float] = SCALE_RANGE,
                  driving_min_score: float = 0.0) -> AlignmentFit:
    """Fit the linear map from driving poses to the reference body (MimicMotion's rule).

    A driving keypoint takes part when its score is above driving_min_score (the reference code
    uses every driving coordinate, whatever its score; points with score 0 carry no coordinate).
    """
    if ref.num_people == 0:
        raise NoPersonError("No person was found in the reference pose, so the driving poses cannot be "
                            "fitted to the reference body.", _FIX_REFERENCE)
    if not 0 <= ref_person < ref.num_people:
        raise MarionetteError(f"Reference person {ref_person} does not exist ({ref.num_people} found).",
                              "Pick a person index below the number of people in the reference.")
    ref_b = ref.body[ref_person]
    ref_ids = [i for i in ALIGN_IDS if ref_b[i, 2] > VISIBLE]
    single = _single_person_frames(driving)
    ref_n = _xy_norm(ref, ref_b)
    ref_pts, drv_pts, ids, frames = _collect_pairs(ref_n, ref_ids, driving, single, driving_min_score)
    shared = sorted(set(ids))
    if len(shared) < min_shared:
        unseen_ref = [i for i in ALIGN_IDS if i not in ref_ids]
        unseen_drv = [i for i in ref_ids if i not in shared]
        raise MarionetteError(
            f"Only {len(shared)} alignment keypoints are visible in both the reference and the driving poses "
            f"({_names(shared)}); at least {min_shared} are needed. Not visible in the reference: "
            f"{_names(unseen_ref)}. Visible in the reference but never in a one-person driving frame: "
            f"{_names(unseen_drv)}.",
            _FIX_REFERENCE + " Otherwise lower the minimum number of shared keypoints.")
    if np.ptp(drv_pts[:, 1]) < 1e-6:
        raise MarionetteError(
            f"The shared driving keypoints ({_names(shared)}) all lie at the same height, so no vertical "
            "scale can be fitted.", _FIX_REFERENCE)
    ay, by = np.polyfit(drv_pts[:, 1], ref_pts[:, 1], 1)
    _check_scale(float(ay), *scale_range)
    first = driving[single[0]]
    fw, fh = first.width, first.height
    ax = ay / (fh / fw / ref.height * ref.width)
    bx = float(np.mean(ref_pts[:, 0] - drv_pts[:, 0] * ax))
    fit = AlignmentFit(float(ax), float(ay), bx, float(by), tuple(shared), tuple(sorted(set(frames))), 0.0,
                       (int(ref.width), int(ref.height)), (int(fw), int(fh)))
    aligned = drv_pts * [fit.ax, fit.ay] + [fit.bx, fit.by]
    err = (aligned - ref_pts) * [ref.width, ref.height]
    return replace(fit, residual=float(np.sqrt(np.mean(np.sum(err ** 2, axis=1)))))


# ----------------------------------------------------------------------------------------------- trust

# How far an alignment may be off before PoseAlign warns (first value) or, if asked to, stops (second).
# All lengths are in units of the reference's torso (neck to mid-hip, which a turn does not shorten).
TRUST_LIMITS = {
    "residual": (0.50, 1.00),     # RMS distance of the fitted keypoints from the reference's
    "neck": (0.50, 1.00),         # median distance of the aligned neck from the reference's neck
    "torso": (1.30, 1.80),        # median aligned torso length ÷ the reference's, or its inverse
    "off_canvas": (0.10, 0.30),   # share of visible aligned body keypoints outside the canvas
}
# Measured (benchmarks/align_trust.py, embedded poses): synthetic turn, walk+wave+turn and arms clips
# residual 0.07–0.10, neck 0.07, torso ×1.00–1.02, nothing off canvas; a squat residual 0.37, neck 0.39
# and a dancer walking 1.5 body widths sideways 0.43 / 0.39 (their poses differ from a standing
# reference, the fit is still right); real Human3.6M people standing 0.38–0.40 / 0.02–0.06; a half-body
# reference with a full-body clip 22 % off canvas (synthetic and real alike).
TORSO_PER_SHOULDER = 1.5   # torso length per shoulder width, when the reference's hips are not visible
NECK, R_SHOULDER, L_SHOULDER, R_HIP, L_HIP = 1, 2, 5, 8, 11
TRUST_LEVELS = ("ok", "warn", "stop")


@dataclass(frozen=True)
class AlignmentTrust:
    """How far the aligned driving body sits from the reference body, relative to the reference's torso."""
    torso_px: float         # the reference's body size: neck to mid-hip, in reference pixels
    residual: float         # fit.residual / torso_px
    neck: float             # median |aligned neck − reference neck| / torso_px (nan if no neck)
    torso: float            # median aligned torso length / reference torso length (nan if unknown)
    off_canvas: float       # share of visible aligned body keypoints outside the reference canvas
    level: str              # "ok", "warn" or "stop"
    reasons: tuple[str, ...]  # one sentence per limit passed

    def describe(self) -> str:
        torso = f"×{self.torso:.2f}" if np.isfinite(self.torso) else "n/a"
        head = (f"residual {100 * self.residual:.0f}% of the torso, neck {_pct(self.neck)} off, "
                f"torso {torso}, {100 * self.off_canvas:.0f}% of keypoints off canvas")
        return head if self.level == "ok" else f"{head}. Fit {'untrustworthy' if self.level == 'stop' else 'doubtful'}: " \
            + "; ".join(self.reasons)


def _pct(value: float) -> str:
    return "n/a" if not np.isfinite(value) else f"{100 * value:.0f}% of the torso"


def _torso(body: np.ndarray) -> tuple[float, np.ndarray | None]:
    """Neck-to-mid-hip length of an OpenPose-18 body and its neck, nan/None where not visible."""
    vis = body[:, 2] > VISIBLE
    neck = body[NECK, :2] if vis[NECK] else None
    hips = [i for i in (R_HIP, L_HIP) if vis[i]]
    if neck is None or not hips:
        return float("nan"), neck
    return float(np.linalg.norm(body[hips, :2].mean(0) - neck)), neck


def reference_torso(ref_body: np.ndarray) -> float:
    """The reference's body size in pixels: neck to mid-hip, else shoulder width × TORSO_PER_SHOULDER,
    else a third of the visible keypoints' extent (a standing body is about three torsos tall)."""
    torso, _ = _torso(ref_body)
    if np.isfinite(torso) and torso > 0:
        return torso
    if ref_body[R_SHOULDER, 2] > VISIBLE and ref_body[L_SHOULDER, 2] > VISIBLE:
        width = float(np.linalg.norm(ref_body[R_SHOULDER, :2] - ref_body[L_SHOULDER, :2]))
        if width > 0:
            return width * TORSO_PER_SHOULDER
    points = ref_body[ref_body[:, 2] > VISIBLE, :2]
    return max(float(np.ptp(points, axis=0).max()) / 3.0 if len(points) else 0.0, 1.0)


def judge_alignment(fit: AlignmentFit, ref: PoseFrame, aligned: list[PoseFrame], ref_person: int = 0,
                    limits: dict[str, tuple[float, float]] = TRUST_LIMITS) -> AlignmentTrust:
    """Trust in an alignment: residual, neck placement, torso scale and off-canvas share of the aligned
    driving frames (`apply_alignment`'s output, one-person frames only) against `limits`."""
    ref_body = ref.body[ref_person]
    size = reference_torso(ref_body)
    ref_torso, ref_neck = _torso(ref_body)
    necks, torsos, inside, seen = [], [], 0, 0
    w, h = ref.width, ref.height
    for f in fit.used_frames:
        body = aligned[f].body[0]
        torso, neck = _torso(body)
        if neck is not None and ref_neck is not None:
            necks.append(np.linalg.norm(neck - ref_neck) / size)
        if np.isfinite(torso) and np.isfinite(ref_torso):
            torsos.append(torso / ref_torso)
        vis = body[body[:, 2] > VISIBLE, :2]
        seen += len(vis)
        inside += int(((vis[:, 0] >= 0) & (vis[:, 0] <= w) & (vis[:, 1] >= 0) & (vis[:, 1] <= h)).sum())
    values = {"residual": fit.residual / size,
              "neck": float(np.median(necks)) if necks else float("nan"),
              "torso": float(np.median(torsos)) if torsos else float("nan"),
              "off_canvas": 1.0 - inside / seen if seen else 0.0}
    level, reasons = 0, []
    for key, value in values.items():
        measure = max(value, 1.0 / value) if key == "torso" and value > 0 else value
        passed = [i for i, limit in enumerate(limits[key], 1) if np.isfinite(measure) and measure > limit]
        if passed:
            level = max(level, passed[-1])
            reasons.append(_REASONS[key].format(value=value, pct=100 * value, limit=limits[key][passed[-1] - 1]))
    return AlignmentTrust(size, values["residual"], values["neck"], values["torso"], values["off_canvas"],
                          TRUST_LEVELS[level], tuple(reasons))


def require_trust(trust: AlignmentTrust) -> None:
    """Raises a MarionetteError naming the reasons when the alignment is untrustworthy (level "stop")."""
    if trust.level == "stop":
        raise MarionetteError(
            "The pose alignment cannot be trusted: " + "; ".join(trust.reasons) + ".",
            "Use a reference photo framed like the driving video (the whole body for a whole-body dance, "
            "standing as the dancer mostly does), or a clip where the person stays in view; to go on anyway, "
            "set PoseAlign's untrusted_fit to \"warn\".")


_REASONS = {
    "residual": "the driving keypoints miss the reference's by {pct:.0f}% of its torso on average (limit {limit:.0%}): "
                "the poses differ a lot or the driving detections are wrong",
    "neck": "the aligned neck sits {pct:.0f}% of a torso away from the reference's (limit {limit:.0%}): the "
            "driving person moves far from where the reference stands",
    "torso": "the aligned torso is ×{value:.2f} the reference's (limit ×{limit:.2f} either way): the two bodies "
             "are framed differently (a half-body photo, a crouch, a turn toward the camera)",
    "off_canvas": "{pct:.0f}% of the aligned keypoints fall outside the reference image (limit {limit:.0%}): "
                  "the animation will cut off limbs",
}


def apply_alignment(fit: AlignmentFit, driving: list[PoseFrame],
                    ref_size: tuple[int, int] | None = None) -> list[PoseFrame]:
    """Driving frames moved onto the reference body, in the reference canvas (width, height).

    Body, face and hands of every person in every frame are moved; missing points stay missing.
    """
    w, h = ref_size if ref_size is not None else fit.ref_size
    if w <= 0 or h <= 0:
        raise MarionetteError(f"The reference canvas size {w}x{h} is not usable.",
                              "Pass ref_size=(width, height) of the reference image.")
    a = np.array([fit.ax, fit.ay])
    b = np.array([fit.bx, fit.by])
    out = []
    for frame in driving:
        size = np.array([frame.width, frame.height], np.float64)
        target = np.array([w, h], np.float64)
        moved = frame.map_xy(lambda xy, size=size: ((xy / size) * a + b) * target)
        out.append(replace(moved, width=int(w), height=int(h)))
    return out


def align_poses(ref: PoseFrame, driving: list[PoseFrame], **fit_options) -> tuple[list[PoseFrame], AlignmentFit]:
    """fit_alignment + apply_alignment onto the reference canvas."""
    fit = fit_alignment(ref, driving, **fit_options)
    return apply_alignment(fit, driving, (ref.width, ref.height)), fit


# ----------------------------------------------------------------------------------------------- preview

def _draw_skeleton(canvas, frame: PoseFrame, color, thickness: int) -> None:
    """Plain one-colour skeleton of every person of frame, scaled to the canvas."""
    h, w = canvas.shape[:2]
    s = np.array([w / frame.width, h / frame.height])

    def pt(p):
        return int(round(p[0] * s[0])), int(round(p[1] * s[1]))

    radius = thickness + 2
    for p in range(frame.num_people):
        body = frame.body[p]
        for a, b in LIMBS[:DRAWN_LIMBS]:
            if body[a, 2] > VISIBLE and body[b, 2] > VISIBLE:
                cv2.line(canvas, pt(body[a]), pt(body[b]), color, thickness, cv2.LINE_AA)
        for j in body[body[:, 2] > VISIBLE]:
            cv2.circle(canvas, pt(j), radius, color, -1, cv2.LINE_AA)
        for hand in (frame.left_hand[p], frame.right_hand[p]):
            for a, b in HAND_EDGES:
                if hand[a, 2] > VISIBLE and hand[b, 2] > VISIBLE:
                    cv2.line(canvas, pt(hand[a]), pt(hand[b]), color, max(1, thickness // 2), cv2.LINE_AA)
        for j in frame.face[p][frame.face[p][:, 2] > VISIBLE]:
            cv2.circle(canvas, pt(j), max(1, thickness // 2), color, -1, cv2.LINE_AA)


def _legend(canvas, entries) -> None:
    scale = max(0.4, min(canvas.shape[:2]) / 900)
    y = int(22 * scale / 0.6)
    for text, color in entries:
        cv2.putText(canvas, text, (8, y), cv2.FONT_HERSHEY_SIMPLEX, scale, color, max(1, int(scale * 2)),
                    cv2.LINE_AA)
        y += int(26 * scale / 0.6)


def _wrap(text: str, width: int, scale: float) -> list[str]:
    """Words of `text` in lines no wider than `width` pixels in the legend's font."""
    lines, line = [], ""
    for word in text.split():
        trial = f"{line} {word}".strip()
        if line and cv2.getTextSize(trial, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0] > width:
            lines.append(line)
            trial = word
        line = trial
    return lines + ([line] if line else [])


def _warnings(canvas, trust: AlignmentTrust) -> None:
    """The trust verdict and its reasons at the bottom of the preview, amber for doubt, red for distrust."""
    scale = max(0.35, min(canvas.shape[:2]) / 1100)
    color = WARN_COLOR if trust.level == "warn" else STOP_COLOR
    title = "alignment doubtful:" if trust.level == "warn" else "alignment untrustworthy:"
    lines = [title] + [f"- {line}" if i == 0 else f"  {line}" for reason in trust.reasons
                       for i, line in enumerate(_wrap(reason, canvas.shape[1] - 24, scale))]
    step = int(22 * scale / 0.6)
    y = canvas.shape[0] - 8 - step * (len(lines) - 1)
    top = max(y - step, 0)
    canvas[top:] = (canvas[top:] * 0.35).astype(np.uint8)    # a dark band keeps the text readable
    for line in lines:
        cv2.putText(canvas, line, (8, y), cv2.FONT_HERSHEY_SIMPLEX, scale, color, max(1, int(scale * 2)), cv2.LINE_AA)
        y += step


def overlay_preview(ref_image: np.ndarray, ref: PoseFrame, aligned: PoseFrame,
                    driving_first: PoseFrame | None = None, dim: float = 0.45,
                    trust: AlignmentTrust | None = None) -> np.ndarray:
    """Reference image dimmed, with the reference skeleton (green) and the aligned driving skeleton
    (magenta); the unaligned first driving frame, if given, in grey (stretched to the image); and
    `trust`'s warnings, when it has any, written at the bottom."""
    images = to_rgb_uint8(ref_image)
    if len(images) != 1:
        raise MarionetteError(f"The reference image has shape {np.shape(ref_image)}; one RGB image [H, W, 3] "
                              "is needed.", "Pass the reference image as height x width x 3.")
    canvas = (images[0].astype(np.float32) * dim).astype(np.uint8)
    thickness = max(2, round(min(canvas.shape[:2]) / 256))
    legend = [("reference", REF_COLOR), ("aligned driving", ALIGNED_COLOR)]
    if driving_first is not None:
        _draw_skeleton(canvas, driving_first, RAW_COLOR, max(1, thickness - 1))
        legend.append(("driving (not aligned)", RAW_COLOR))
    _draw_skeleton(canvas, ref, REF_COLOR, thickness)
    _draw_skeleton(canvas, aligned, ALIGNED_COLOR, thickness)
    _legend(canvas, legend)
    if trust is not None and trust.level != "ok":
        _warnings(canvas, trust)
    return canvas
