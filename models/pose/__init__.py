"""2D whole-body pose: data types, backends, drawing, alignment."""
from .types import PoseFrame, empty_frame  # noqa: F401
