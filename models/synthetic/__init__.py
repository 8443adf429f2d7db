"""Synthetic people for demos and tests: the anny body model rendered with pyrender.

Importing this package is cheap: anny, torch and pyrender load on first use.
"""
from .actor import DRIVER, MOTIONS, REFERENCE, Phenotype  # noqa: F401
from .clip import OPENPOSE_FROM_COCO, SyntheticClip, render_driving_clip, render_reference  # noqa: F401
from .metrics import pck, pck_per_joint  # noqa: F401
from .scene import Appearance, Camera  # noqa: F401
