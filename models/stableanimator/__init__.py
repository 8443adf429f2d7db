"""StableAnimator: SVD-xt + PoseNet + a Face Encoder whose identity tokens reach the UNet through an ID
adapter, and HJB face refinement at inference (ArcFace R100 on decoded face crops)."""
