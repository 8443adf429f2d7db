"""Index tables between the body models' own joints/bones and the layouts the pipeline speaks:
OpenPose-18 body joints, OpenPose 21-point hands, iBUG-68 faces, the 24 SMPL body parts, and each
backend's pose layout. Names only; the backends resolve them to indices when they load.
"""
from __future__ import annotations

from .types import SMPL_PARTS

# OpenPose-18 (COCO-18) order; each name is also the COCO / SMPL-X keypoint that feeds it, except
# "neck", which every backend computes as the mean of the two shoulders (as DWPose does).
OPENPOSE18 = ("nose", "neck", "right_shoulder", "right_elbow", "right_wrist", "left_shoulder", "left_elbow",
              "left_wrist", "right_hip", "right_knee", "right_ankle", "left_hip", "left_knee", "left_ankle",
              "right_eye", "left_eye", "right_ear", "left_ear")
SHOULDERS = ("left_shoulder", "right_shoulder")

# OpenPose hand order: wrist, then thumb, index, middle, ring, pinky, four points each (base → tip).
FINGERS = ("thumb", "index", "middle", "ring", "pinky")
HAND21 = ("wrist",) + tuple(f"{finger}{k}" for finger in FINGERS for k in (1, 2, 3, 4))

# ------------------------------------------------------------------------------------------ SMPL-X

# The hand points as smplx joint names (without the side prefix): three finger joints from
# `smplx.joint_names.JOINT_NAMES` plus the fingertip keypoint smplx appends from a vertex.
SMPLX_HAND21 = ("wrist",) + tuple(name for finger in FINGERS
                                  for name in (f"{finger}1", f"{finger}2", f"{finger}3", finger))
SMPLX_NUM_JOINTS = 55            # pelvis, 21 body joints, jaw, 2 eyes, 2 x 15 finger joints
SMPLX_BODY_JOINTS = 21           # body_pose covers joints 1..21
# smplx output rows: 55 joints, 21 vertex keypoints, 51 face landmarks (iBUG 17..67), then with
# use_face_contour the 17 jaw-line landmarks (iBUG 0..16), both in iBUG order.
SMPLX_FACE51 = slice(76, 127)
SMPLX_CONTOUR17 = slice(127, 144)


def smplx_part_of_joint(joint: int) -> int:
    """SMPL part label (0..23) of an SMPL-X skinning joint: joints 0-21 are SMPL's 0-21; jaw and eyes
    belong to the head; the 15 finger joints of each hand to that side's SMPL 'hand' part."""
    if joint < 22:
        return joint
    if joint < 25:
        return SMPL_PARTS.index("head")
    return SMPL_PARTS.index("left_hand" if joint < 40 else "right_hand")


# -------------------------------------------------------------------------------------------- Anny

# Anny's pose layout after the global orientation, 3 axis-angle values per bone: the spine chain
# (bottom to top), neck and head, each arm (collarbone, shoulder, elbow, wrist), each leg (hip, knee,
# ankle), then the 15 finger bones of each hand (thumb = finger1 ... pinky = finger5, base to tip).
# Twist helpers (upperarm02, lowerarm02, upperleg02, lowerleg02), shoulder01, pelvis.*, neck02/03,
# toes and eyes stay at rest.
ANNY_BODY_BONES = ("spine05", "spine04", "spine03", "spine02", "spine01", "neck01", "head",
                   "clavicle.L", "upperarm01.L", "lowerarm01.L", "wrist.L",
                   "clavicle.R", "upperarm01.R", "lowerarm01.R", "wrist.R",
                   "upperleg01.L", "lowerleg01.L", "foot.L",
                   "upperleg01.R", "lowerleg01.R", "foot.R")
ANNY_FINGER_BONES = tuple(f"finger{f}-{k}.{side}" for side in ("L", "R") for f in range(1, 6) for k in (1, 2, 3))
ANNY_POSE_BONES = ANNY_BODY_BONES + ANNY_FINGER_BONES

# The hand points in anny terms: the wrist is the COCO regressor's wrist (the same point as body18's
# wrist); the finger joints are bone heads; each tip is the vertex at the far end of the last bone.
ANNY_FINGER_OF = {finger: f + 1 for f, finger in enumerate(FINGERS)}   # thumb → finger1 … pinky → finger5

# Dominant anny bone → SMPL part (per side for ".L"/".R" bones; first matching prefix wins).
# SMPL's parts are named after the joint that moves them: "left_hip" is the thigh, "left_knee" the
# shin, "left_ankle" the foot, "left_foot" the toes, "left_shoulder" the upper arm, "left_elbow" the
# forearm, "left_wrist" the palm and "left_hand" the fingers.
ANNY_PART_OF_BONE = (
    ("root", "pelvis"), ("pelvis.", "pelvis"), ("spine05", "pelvis"),
    ("spine04", "spine1"), ("spine03", "spine1"), ("spine02", "spine2"), ("spine01", "spine3"),
    ("neck", "neck"), ("head", "head"), ("eye.", "head"),
    ("clavicle.", "{side}_collar"), ("shoulder01.", "{side}_collar"),
    ("upperarm", "{side}_shoulder"), ("lowerarm", "{side}_elbow"),
    ("wrist.", "{side}_wrist"), ("metacarpal", "{side}_wrist"), ("finger", "{side}_hand"),
    ("upperleg", "{side}_hip"), ("lowerleg", "{side}_knee"), ("foot.", "{side}_ankle"), ("toe", "{side}_foot"),
)


def anny_part_of_bone(bone: str) -> int:
    """SMPL part label (0..23) of an anny bone, from ANNY_PART_OF_BONE."""
    side = {"L": "left", "R": "right"}.get(bone.rsplit(".", 1)[-1], "") if "." in bone else ""
    for prefix, part in ANNY_PART_OF_BONE:
        if bone.startswith(prefix):
            return SMPL_PARTS.index(part.format(side=side))
    raise KeyError(f"anny bone {bone!r} has no SMPL part")
