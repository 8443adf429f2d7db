"""The body fit's settings (FitOptions) and the node controls that set them."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..errors import MarionetteError

FACING = (math.pi, 0.0, 0.0)   # global orientation of a person facing the camera (180° about x)
AWAY = (0.0, 0.0, math.pi)     # ... of a person seen from behind (180° about z)

# Default focal: a 50° field of view across the longer image side (see FitOptions.focal).
DEFAULT_FOV_DEGREES = 50.0
FACING = (math.pi, 0.0, 0.0)   # global orientation of a person facing the camera (180° about x)
AWAY = (0.0, 0.0, math.pi)     # ... of a person seen from behind (180° about z)


def default_focal(width: int, height: int) -> float:
    """Focal length (px) of a DEFAULT_FOV_DEGREES field of view across the longer image side."""
    return max(width, height) / 2 / math.tan(math.radians(DEFAULT_FOV_DEGREES) / 2)


@dataclass
class FitOptions:
    """Settings of the body fit. Loss weights are relative to the reprojection term, which sums each
    keypoint's confidence · GMoF(|pixel residual / person size|², sigma), the size being the
    diagonal of the visible body keypoints' bbox, so it does not depend on the resolution.

    Defaults measured on the Anny renders (24-frame 512² driving clip, filmed at 40° across the
    longer side; body-joint 2D error vs ground truth, from ground-truth / BlazePose keypoints):
    - focal 50° across the longer side: 2.7 / 4.5 px; the true focal: 3.2 / 4.6 px; Champ/HMR2's
      5000/256·max(W, H) (~3° view): 9.0 / 9.8 px, a near-orthographic camera cannot reproduce the
      perspective of an ordinary lens;
    - L-BFGS (30, 70) pose iterations: 2.7 px at 0.55 s/frame; (50, 100): 2.3 px at ~0.9 s/frame;
      Adam (100, 200) at lr 0.02: 2.0 px at ~1.6 s/frame;
    - hand weight 0.1: BlazePose body 4.5 px, 74 mm MPJPE-PA; 0.5: 5.1 px (hands pull the wrists);
      0: 4.3 px but unfitted hands;
    - GMoF scale 0.25 of the person's size (~100 px, SMPLify-X's value, on these 512² renders): a
      fixed pixel scale made the same keypoints fit differently at another resolution;
    - 20° starting bend of elbows/knees: 70 mm MPJPE-PA against 79 mm from straight limbs;
    - limb-depth prior from BlazePose's world landmarks, weight 3e-2 with a 0.55 dead zone: an arm
      pointing at the camera 70 → 5 cm wrist depth error, Human3.6M PA-MPJPE 89 → 93 mm, the
      synthetic reference 20 → 23 mm; dead zone 0.25: 4 cm, 98 mm, 30 mm; weight 1e-2 without a
      dead zone: 7 cm, 94 mm, 43 mm (the prior's own errors then redraw the pose);
    - orientation pass: turn weight 3e-3, swap 1e-3 per frame and 2e-3 per change: two frames of a
      turn read left/right-swapped give a 21° facing error instead of 85°; the face cue (5e-4) only
      tips otherwise equal hypotheses (the embedded backend may score a face on a back view).
    Pose/shape prior and smoothness weights changed little between 1e-4 and 1e-3 (in the noise)."""
    focal: float | None = None           # px; None: default_focal(W, H) (50° across the longer side)
    optimizer: str = "lbfgs"             # "lbfgs" (strong-Wolfe line search) or "adam"
    lr: float | None = None              # None: 1.0 for L-BFGS, 0.02 for Adam
    camera_iterations: int = 100         # stage 1: translation + global orientation (cheap: no body model)
    pose_iterations: tuple = (30, 70)    # later stages: everything, one entry per stage
    pose_prior_anneal: tuple = (10.0, 1.0)  # pose-prior weight multiplier of each later stage
    sigma: float = 0.25                  # GMoF robustifier scale, fraction of the person's 2D size
    pose_prior_weight: float = 1e-3
    shape_prior_weight: float = 1e-3     # per fitted frame (the shape is shared)
    expression_prior_weight: float = 1e-3  # per fitted frame, on the squared expression coefficients
    smooth_pose_weight: float = 1e-2     # squared change per frame of the rotations (radians²)
    smooth_translation_weight: float = 1.0  # squared change per frame of translation / depth
    depth_weight: float = 1e-2           # stage 1: keeps the depth near its torso-size estimate
    camera_head_weight: float = 0.5      # stage 1: weight of nose, eyes and ears next to the torso
    limb_flexion: float = 20.0           # degrees of elbow/knee bend in the starting pose
    yaw_hypotheses: tuple = (0.0, 45.0, 90.0, 135.0, 180.0, 225.0, 270.0, 315.0)  # orientation pass turns, deg
    turn_weight: float = 3e-3            # orientation pass: cost of turning, per radian² per frame
    face_cue_weight: float = 5e-4        # orientation pass: cost of facing the half the face cue rules out
    world_cue_weight: float = 1e-2       # orientation pass: cost of facing unlike the 3D keypoints
    limb_depth_weight: float = 3e-2      # 3D keypoints: squared difference of each limb's depth direction
    limb_depth_margin: float = 0.55      # 3D keypoints: depth-direction differences below this are free
    swap_weight: float | None = 1e-3     # orientation pass: cost per frame read left/right-swapped (None: never)
    swap_change_weight: float = 2e-3     # orientation pass: cost per change between swapped and not
    limb_error_threshold: float = 0.1    # report frames whose worst limb point is off by more (of body size)
    hand_weight: float = 0.1             # multiplies each hand keypoint's confidence (42 points ≈ 4 body points)
    face_weight: float = 0.05            # multiplies each face keypoint's confidence (68 points ≈ 3 body points)
    min_score: float = 0.0               # keypoints scoring below this count as missing
    min_keypoints: int = 4               # fewer visible body keypoints: nobody in that frame
    chunk: int = 16                      # frames optimised together
    shape_frames: int = 8                # frames (spread over the clip) that fit the shared shape
    extra: dict = field(default_factory=dict)  # free-form notes copied into BodySequence.info

    def check(self) -> None:
        if self.optimizer not in ("lbfgs", "adam"):
            raise MarionetteError(f"Unknown optimizer '{self.optimizer}'.", "Use 'lbfgs' or 'adam'.")
        if len(self.pose_iterations) != len(self.pose_prior_anneal):
            raise MarionetteError("pose_iterations and pose_prior_anneal differ in length.",
                                  "Give one pose-prior multiplier per pose stage.")
        if self.chunk < 1 or self.shape_frames < 1 or self.min_keypoints < 2:
            raise MarionetteError("chunk and shape_frames must be >= 1 and min_keypoints >= 2.",
                                  "Use positive chunk sizes and at least 2 keypoints.")
        if self.focal is not None and not self.focal > 0:
            raise MarionetteError(f"focal={self.focal} is not a positive length.", "Use a focal in pixels > 0.")
        if not self.sigma > 0:
            raise MarionetteError(f"sigma={self.sigma} is not positive.",
                                  "Use a GMoF scale > 0 (a fraction of the person's size, e.g. 0.25).")


def fit_options(iterations: int | None = None, temporal_smoothing: float = 1.0, **changes) -> FitOptions:
    """FitOptions from a node's controls: `iterations` per stage (camera stage and each pose stage),
    `temporal_smoothing` multiplies both smoothness weights; other fields by name."""
    options = FitOptions(**changes)
    if iterations is not None:
        if int(iterations) < 1:
            raise MarionetteError(f"iterations={iterations} is not positive.", "Use at least 1 iteration per stage.")
        options.camera_iterations = int(iterations)
        options.pose_iterations = tuple(int(iterations) for _ in options.pose_iterations)
    if not float(temporal_smoothing) >= 0:
        raise MarionetteError(f"temporal_smoothing={temporal_smoothing} is negative.", "Use a weight >= 0.")
    options.smooth_pose_weight *= float(temporal_smoothing)
    options.smooth_translation_weight *= float(temporal_smoothing)
    return options
