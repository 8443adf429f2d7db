"""The SVD-xt UNet used by StableAnimator and MimicMotion: diffusers' UNetSpatioTemporalConditionModel plus
the PoseNet residual.

Both official UNets are copies of the diffusers class whose only change is an extra forward argument: the
PoseNet features [B*F, 320, h, w] are added to the output of `conv_in`, before it becomes the first skip
connection. Here that is a forward hook on `conv_in` that lives for one call. Key names are diffusers'
own, so the released files load strictly: MimicMotion's `unet.*` part (prefix stripped) into
`build_unet(cfg)`, StableAnimator's `unet.pth` into `stableanimator.unet.build_stableanimator_unet(cfg)`
(the same UNet with the ID adapter's processors).
"""
from functools import partial

import torch
from diffusers import UNetSpatioTemporalConditionModel
from diffusers.models.attention_processor import AttnProcessor2_0

from ..errors import MarionetteError


def _add_pose_residual(pose_features: torch.Tensor, module, args, output: torch.Tensor) -> torch.Tensor:
    if pose_features.shape != output.shape:
        raise MarionetteError(
            f"Pose features have shape {tuple(pose_features.shape)} but the UNet's conv_in output has "
            f"{tuple(output.shape)}.",
            "Pass one PoseNet feature map per frame: [batch*frames, first block channels, latent h, latent w] "
            "(pose images at 8x the latent size).")
    return output + pose_features.to(output.dtype)


class PoseSVDUNet(UNetSpatioTemporalConditionModel):
    """SVD UNet whose forward also takes `pose_features`, added right after `conv_in`."""

    def forward(self, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor,
                added_time_ids: torch.Tensor, pose_features: torch.Tensor = None, return_dict: bool = True):
        """sample [B, F, in_ch, h, w]; timestep scalar or [B]; encoder_hidden_states [B, tokens, C]
        (StableAnimator: 1 CLIP + 4 face tokens; MimicMotion: 1 CLIP token); added_time_ids [B, 3];
        pose_features [B*F, block_out_channels[0], h, w] or None. Returns the model output [B, F, out_ch, h, w]
        (wrapped as diffusers does when return_dict)."""
        if sample.ndim != 5:
            raise MarionetteError(f"The SVD UNet takes a [batch, frames, channels, h, w] sample, got "
                                  f"{tuple(sample.shape)}.", "Stack the frame latents on dim 1.")
        if pose_features is None:
            return super().forward(sample, timestep, encoder_hidden_states, added_time_ids, return_dict=return_dict)
        handle = self.conv_in.register_forward_hook(partial(_add_pose_residual, pose_features))
        try:
            return super().forward(sample, timestep, encoder_hidden_states, added_time_ids, return_dict=return_dict)
        finally:
            handle.remove()


def build_unet(config: dict) -> PoseSVDUNet:
    """Build the UNet (randomly initialised, in eval mode) with SDPA attention everywhere. Build under
    `torch.device("meta")` to skip the random initialisation before a checkpoint load (then
    `load_state_dict(..., assign=True)`)."""
    unet = PoseSVDUNet.from_config(dict(config))
    unet.set_attn_processor(AttnProcessor2_0())
    return unet.eval()
