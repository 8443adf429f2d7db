"""Stable Video Diffusion animation core: StableAnimator and MimicMotion modules and checkpoint loading."""
