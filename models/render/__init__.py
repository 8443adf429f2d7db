"""Guidance maps rendered from 3D bodies (headless OpenGL): Champ's depth / normal / semantic / mask,
a VividPose-style dense render, and skeletons re-projected from the body's joints."""
from .guidance import MAPS, GuidanceRenderer, project_keypoints, skeleton_frames, vertex_normals  # noqa: F401
from .palette import SEMANTIC_PALETTE  # noqa: F401
