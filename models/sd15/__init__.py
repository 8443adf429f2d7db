"""Stable Diffusion 1.5 as a backbone: offline, strict loading from a diffusers folder or a single file
(DisPose's DIFT features today; the SD1.5 animation family builds on it).

The ReferenceNet family's backbone (Champ and Moore-AnimateAnyone share it; their conditioning encoders
live in `models.champ` and `models.animate_anyone`):
- `refnet_unet.build_denoising_unet(config=None, motion=None) -> DenoisingUNet3D`: the SD1.5 UNet per frame
  + 21 AnimateDiff-v2 motion modules (mid block included, `pe` of 32 rows). `forward(sample [B, 4, F, h, w],
  timestep, encoder_hidden_states [B, 1, 768], guidance_features [B, 320, F, h, w] | None) -> v [B, 4, F, h, w]`;
  at most 32 frames per call. `build_reference_unet(config=None) -> ReferenceUNet` (no output head).
- `reference.record_reference(reference_unet, latent [B, 4, h, w], clip_tokens [B, 1, 768]) -> banks` (run
  once, t = 0, on the clean scaled reference latent); `with reference.reference_attention(denoiser, banks):`
  around the conditional UNet calls only (the unconditional branch gets no reference tokens).
- `refnet_checkpoints.load_backbone(denoising_unet, reference_unet, motion_module, dtype) -> RefNetBackbone`:
  the released files key-exact (safetensors or weights-only pickles, every mismatch named, files recognised
  by their keys: `classify_keys`, `family_of(conditioning_file) -> "champ" | "animate_anyone"`).
- `guidance_convs`: the conv stack of both conditioning encoders; `maps_to_input(IMAGE) -> [F, 3, H, W]`.
- `clip_image.load_image_encoder(folder_or_file, dtype)` (sd-image-variations ViT-L/14, a diffusers folder or
  a ComfyUI clip_vision file) and `encode_reference(encoder, IMAGE) -> [B, 1, 768]`.
- `vae.load_vae(folder_or_file, dtype)`: sd-vae-ft-mse (a diffusers folder or a ComfyUI models/vae file).
- `refnet_tiny`: tiny random backbone, VAE and image encoder for tests and the demo.
- `ddim`, `context`, `sampler`: the family's DDIM sampler over context windows."""
