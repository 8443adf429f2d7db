"""Stable Video Diffusion (SVD-xt img2vid): the base every SVD paper builds on — loading from a diffusers
folder or a single file, reference conditioning, the UNet with a conditioning residual after `conv_in`,
the EDM sampler over overlapping windows, chunked decoding."""
