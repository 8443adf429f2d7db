"""Stable Diffusion 1.5 as a backbone: offline, strict loading from a diffusers folder or a single file
(DisPose's DIFT features today; the SD1.5 animation family builds on it)."""
