"""Champ (Zhu et al. 2024): SD1.5 + ReferenceNet + AnimateDiff motion modules, guided by SMPL depth, normal
and semantic maps and a DWPose skeleton. The backbone lives in `models.sd15` (shared with Animate Anyone);
this package holds what is Champ's own.

Public API:
- `guidance_encoder.GuidanceEncoder`: one guidance encoder, maps [N, 3, H, W] in [0, 1] -> [N, 320, H/8, W/8]
  (conv stack + `attentions[-1]` + conv_out); `ChampGuidance({"depth": enc, ...})(maps_by_type)` sums them
  (any subset of `GUIDANCE_TYPES` = depth, normal, semantic_map, dwpose; fewer than four is out of the
  training distribution). Add the sum after `conv_in`: `DenoisingUNet3D(..., guidance_features=...)` in
  both CFG branches (`sd15.guidance_convs.maps_to_input` turns an IMAGE batch into encoder input).
- `loading.load_champ(denoising_unet, reference_unet, motion_module, {"depth": path, ...}, dtype) ->
  ChampModel(backbone: sd15.RefNetBackbone, guidance: ChampGuidance)`: the released files, key-exact
  (`load_guidance_encoder`, `load_champ_guidance` for the encoders alone). A Moore `pose_guider.pth`, a
  derivative project's file with the same name, a truncated or incomplete file is refused by name.
- `tiny.tiny_champ(seed, dtype, types)`: a tiny random ChampModel for tests and the demo.
"""
