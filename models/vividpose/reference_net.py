"""VividPose's ReferenceNet: an SD2.1-layout UNet2DConditionModel run once on the clean reference latent
(timestep 0, the CLIP image embedding as its cross-attention context). The inputs of its spatial
self-attentions are the features f_r that the SVD UNet's spatial self-attentions of the same name attend to
(Eq. 1). Key names are diffusers' own, so an SD2.1 UNet initialises it strictly (`sd21.py`).

Its output head (conv_norm_out, conv_out) and the layers after the deepest-last self-attention's input are
computed but unused; a trainer freezes `unused_parameter_names()` (or lets DDP find them)."""
from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention, AttnProcessor2_0

from ..errors import MarionetteError
from .attention import RecordingSelfAttnProcessor


def spatial_self_attentions(model: torch.nn.Module) -> dict[str, Attention]:
    """The `attn1` of every spatial transformer block (not the temporal ones), by module name."""
    return {name: module for name, module in model.named_modules()
            if isinstance(module, Attention) and name.endswith(".attn1") and ".transformer_blocks." in name}


class ReferenceNet(UNet2DConditionModel):
    """UNet2DConditionModel whose `reference_features` returns f_r by attention-module name."""

    def install_recorders(self) -> None:
        self._recorded: dict[str, torch.Tensor] = {}
        self.set_attn_processor(AttnProcessor2_0())
        for name, attn in spatial_self_attentions(self).items():
            attn.set_processor(RecordingSelfAttnProcessor(name, self._recorded))

    def reference_features(self, latent: torch.Tensor, context: torch.Tensor) -> dict[str, torch.Tensor]:
        """latent [B, 4, h, w] (scaled as SD2.1's), context [B, tokens, cross_attention_dim] -> f_r by
        name, each [B, h_l * w_l, C_l]."""
        if latent.ndim != 4 or latent.shape[1] != self.config.in_channels:
            raise MarionetteError(f"The ReferenceNet takes [batch, {self.config.in_channels}, h, w] latents, got "
                                  f"{tuple(latent.shape)}.", "Encode the reference image with the VAE first.")
        self._recorded.clear()
        timestep = torch.zeros(latent.shape[0], device=latent.device)
        UNet2DConditionModel.forward(self, latent.to(self.dtype), timestep, context.to(self.dtype), return_dict=False)
        features = dict(self._recorded)
        self._recorded.clear()
        return features

    def unused_parameter_names(self) -> list[str]:
        """Parameters whose results never reach f_r: the output head and what follows the last recorded input."""
        last = max(spatial_self_attentions(self), key=_execution_order).rsplit(".attn1", 1)[0]
        tail = ("conv_norm_out.", "conv_out.")
        block = last.rsplit(".transformer_blocks.", 1)[0]
        return [n for n, _ in self.named_parameters()
                if n.startswith(tail) or (n.startswith(last + ".") and not n.startswith(last + ".norm1."))
                or n.startswith(block + ".proj_out.")]


def _execution_order(name: str) -> tuple:
    """Where a layer runs in the UNet's forward: down blocks, mid block, up blocks, then by index."""
    parts = name.split(".")
    stage = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}[parts[0]]
    return (stage,) + tuple(int(p) for p in parts if p.isdigit())


def build_reference_net(config: dict) -> ReferenceNet:
    """A randomly initialised ReferenceNet (build under `torch.device('meta')` before a checkpoint load)."""
    net = ReferenceNet.from_config(dict(config))
    net.install_recorders()
    return net.eval()
