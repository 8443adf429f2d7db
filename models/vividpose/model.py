"""The VividPose model: the SVD UNet with reference self-attention (Eq. 1) and decoupled identity
cross-attention (Eq. 3-4), its ReferenceNet, identity controller and pose controller (Eq. 5).

One call of the SVD sampler's UNet signature (`svd.sampler.sample`):

    model(sample [B, F, 8, h, w], timestep, encoder_hidden_states=[B, 1 + N, C], added_time_ids=[B, 3],
          pose_features=f_pose [B*F, 4 or C0, h, w] or None)

with the reference features installed for the call by `with model.reference_attention(f_r):`. Under
gradient checkpointing keep that context open over forward AND backward (the recomputation reads them).
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from ..errors import MarionetteError
from ..svd.unet import build_unet
from .attention import DecoupledIDAttnProcessor, ReferenceSelfAttnProcessor
from .config import VividPoseConfig
from .controllers import IDController, PoseController
from .reference_net import build_reference_net, spatial_self_attentions


def cross_attentions(unet: nn.Module) -> dict:
    """Every `attn2` of the SVD UNet, spatial and temporal, by module name."""
    from diffusers.models.attention_processor import Attention
    return {name: m for name, m in unet.named_modules() if isinstance(m, Attention) and name.endswith(".attn2")}


class VividPose(nn.Module):
    def __init__(self, config: VividPoseConfig):
        super().__init__()
        self.config = config
        self.unet = build_unet(config.unet)
        self.reference_net = build_reference_net(config.reference_net)
        self._reference_processors = {}
        reference_layers = spatial_self_attentions(self.reference_net)
        for name, attn in spatial_self_attentions(self.unet).items():
            partner = reference_layers.get(name)
            if partner is None or partner.to_q.in_features != attn.to_q.in_features:
                raise MarionetteError(f"The ReferenceNet has no self-attention matching the UNet's {name}.",
                                      "Derive the ReferenceNet config from the UNet's (reference_net=None).")
            processor = ReferenceSelfAttnProcessor()
            attn.set_processor(processor)
            self._reference_processors[name] = processor
        if len(reference_layers) != len(self._reference_processors):
            raise MarionetteError("The ReferenceNet has self-attentions the UNet lacks.",
                                  "Derive the ReferenceNet config from the UNet's (reference_net=None).")
        self.id_controller = None
        if config.identity:
            self.id_controller = IDController(config.arcface_dim, config.context_dim, config.id_tokens)
            for attn in cross_attentions(self.unet).values():
                processor = DecoupledIDAttnProcessor(attn.to_q.in_features, attn.to_q.out_features,
                                                     attn.to_k.in_features, config.id_tokens)
                with torch.no_grad():  # start as the layer's own query/key, with a zero value: output unchanged
                    processor.id_to_q.weight.copy_(attn.to_q.weight)
                    processor.id_to_k.weight.copy_(attn.to_k.weight)
                    processor.id_to_v.weight.zero_()
                attn.set_processor(processor)  # registered as the submodule `processor`
        self.pose_controller = PoseController(config.pose_channels, config.pose_heads, config.pose_out_channels)

    # ------------------------------------------------------------------------------------------ inputs
    def reference_features(self, latent: torch.Tensor, clip: torch.Tensor) -> dict[str, torch.Tensor]:
        """f_r of the clean reference: latent [B, 4, h, w] (C with another VAE) as the VAE gives it (unscaled, SVD's
        concatenated copy), clip [B, 1, C]."""
        return self.reference_net.reference_features(latent * self.config.reference_latent_scale, clip)

    def identity_tokens(self, embedding: torch.Tensor) -> torch.Tensor:
        """ArcFace embeddings [B, 512] -> identity tokens [B, N, C]."""
        if self.id_controller is None:
            raise MarionetteError("This VividPose model was built without the identity controller.",
                                  "Leave the face embedding out, or use a model trained with identity=True.")
        return self.id_controller(embedding)

    def context(self, clip: torch.Tensor, id_tokens: torch.Tensor | None = None) -> torch.Tensor:
        """The UNet context: [CLIP | identity tokens] (zeros where `id_tokens` is None), or the CLIP tokens
        alone for a model without the identity controller."""
        if self.id_controller is None:
            if id_tokens is not None:
                raise MarionetteError("Identity tokens were given to a model without the identity controller.",
                                      "Leave them out (this model was trained without ArcFace).")
            return clip
        if id_tokens is None:
            id_tokens = clip.new_zeros(clip.shape[0], self.config.id_tokens, clip.shape[-1])
        if id_tokens.shape != (clip.shape[0], self.config.id_tokens, clip.shape[-1]):
            raise MarionetteError(f"Identity tokens {tuple(id_tokens.shape)} do not fit "
                                  f"[{clip.shape[0]}, {self.config.id_tokens}, {clip.shape[-1]}].",
                                  "Make them with identity_tokens(embedding) of this model.")
        return torch.cat([clip, id_tokens.to(clip.dtype)], dim=1)

    def pose_features(self, render: torch.Tensor, skeleton: torch.Tensor) -> torch.Tensor:
        """f_pose [N, 4 or C0, H/8, W/8] from render and skeleton frames [N, 3, H, W] in [0, 1]."""
        return self.pose_controller(render, skeleton)

    # ------------------------------------------------------------------------------------------ state
    def set_reference_features(self, features: dict[str, torch.Tensor] | None) -> None:
        """From now on the spatial self-attentions also attend to `features` (None: to nothing else).
        Prefer `reference_attention`; training sets them inside it so that a gradient-checkpointed
        backward, which re-runs the layers, still sees them."""
        if features is not None and set(features) != set(self._reference_processors):
            missing = sorted(set(self._reference_processors) - set(features))
            raise MarionetteError(f"Reference features lack {len(missing)} layers (e.g. {missing[:3]}).",
                                  "Make them with reference_features() of this model.")
        for name, processor in self._reference_processors.items():
            processor.reference = None if features is None else features[name]

    @contextlib.contextmanager
    def reference_attention(self, features: dict[str, torch.Tensor] | None):
        """Inside: the spatial self-attentions also attend to `features`; outside, as before."""
        previous = {name: p.reference for name, p in self._reference_processors.items()}
        try:
            self.set_reference_features(features)
            yield
        finally:
            for name, processor in self._reference_processors.items():
                processor.reference = previous[name]

    @contextlib.contextmanager
    def id_scale(self, scale: float):
        """Inside: the identity attention results are weighted by `scale` (1 = as trained, 0 = off)."""
        processors = [m for m in self.unet.modules() if isinstance(m, DecoupledIDAttnProcessor)]
        previous = [p.scale for p in processors]
        try:
            for p in processors:
                p.scale = float(scale)
            yield
        finally:
            for p, value in zip(processors, previous):
                p.scale = value

    # ------------------------------------------------------------------------------------------ forward
    def forward(self, sample: torch.Tensor, timestep, encoder_hidden_states: torch.Tensor,
                added_time_ids: torch.Tensor, pose_features: torch.Tensor | None = None, return_dict: bool = False):
        """The SVD UNet call with f_pose injected where the config says (see the module docstring)."""
        if pose_features is not None and self.config.pose_injection == "latent":
            batch, frames, _, height, width = sample.shape
            channels = self.config.latent_channels
            expected = (batch * frames, channels, height, width)
            if tuple(pose_features.shape) != expected:
                raise MarionetteError(f"Pose features {tuple(pose_features.shape)} do not fit the noisy latent "
                                      f"{expected}.", "Run the pose controller on one render + skeleton per frame.")
            pose = pose_features.to(sample.dtype).view(batch, frames, channels, height, width)
            noisy = sample[:, :, :channels] + pose
            sample = torch.cat([noisy, sample[:, :, channels:]], dim=2)
            pose_features = None
        return self.unet(sample, timestep, encoder_hidden_states, added_time_ids, pose_features=pose_features,
                         return_dict=return_dict)


def build_vividpose(config: VividPoseConfig) -> VividPose:
    """A randomly initialised VividPose in eval mode (build under `torch.device('meta')` to skip the
    initialisation before a checkpoint load)."""
    return VividPose(config).eval()
