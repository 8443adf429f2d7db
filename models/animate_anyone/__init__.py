"""Animate Anyone-style animation (paper 003, "Improved Pose-Controlled Animation"), with the weights of its
open reimplementation Moore-AnimateAnyone: SD1.5 + ReferenceNet + AnimateDiff motion modules + a pose
guider. The backbone lives in `models.sd15` (shared with Champ); this package holds the pose guider.

Public API:
- `pose_guider.PoseGuider`: skeleton frames [N, 3, H, W] in [0, 1] -> [N, 320, H/8, W/8] with the released
  channels (16, 32, 96, 256) (not the official class default); add the features after `conv_in`:
  `DenoisingUNet3D(..., guidance_features=...)`, in both CFG branches (`sd15.guidance_convs.maps_to_input`
  turns an IMAGE batch into its input).
- `loading.load_animate_anyone(denoising_unet, reference_unet, motion_module, pose_guider, dtype) ->
  AnimateAnyoneModel(backbone: sd15.RefNetBackbone, pose_guider)`: the released files, key-exact
  (`load_pose_guider` alone). A Champ guidance encoder, a derivative project's `pose_guider.pth`, a
  truncated or incomplete file is refused by name.
- `tiny.tiny_animate_anyone(seed, dtype)`: a tiny random model for tests and the demo.
"""
