"""VividPose's configuration: every choice the paper leaves open, kept with the weights.

The configuration travels as JSON in the safetensors metadata of a checkpoint, so a file always rebuilds
the model it was trained as (the pose injection point, the number of identity tokens, ...), and loading
can never pair weights with the wrong architecture.
"""
from __future__ import annotations

import copy
import json
from dataclasses import asdict, dataclass, field, fields

from ..errors import MarionetteError
from ..svd.configs import svd_xt_unet_config, tiny_unet_config

POSE_INJECTIONS = ("latent", "conv_in")  # the paper's text / the SVD family's habit (MimicMotion, StableAnimator)
RENDER_TYPES = ("dense", "normal", "depth", "semantic")  # RenderGuidance maps a τ1 can be trained on
FORMAT = "marionette.vividpose"
FORMAT_VERSION = 1


def reference_net_config_from_svd(unet: dict) -> dict:
    """The SD2.1-layout UNet2DConditionModel config whose spatial self-attentions line up 1:1 with those of
    the SVD UNet `unet` (same block kinds, widths, heads and cross-attention width). For SVD-xt this is
    exactly SD2.1's UNet (320/640/1280/1280, 64-channel heads, 1024-d cross-attention, linear projections)."""
    kinds = {"CrossAttnDownBlockSpatioTemporal": "CrossAttnDownBlock2D", "DownBlockSpatioTemporal": "DownBlock2D",
             "UpBlockSpatioTemporal": "UpBlock2D", "CrossAttnUpBlockSpatioTemporal": "CrossAttnUpBlock2D"}
    heads = unet["num_attention_heads"]
    heads = list(heads) if isinstance(heads, (list, tuple)) else [heads] * len(unet["block_out_channels"])
    return {
        "in_channels": unet["out_channels"],   # the VAE's latent channels (4 for SVD's)
        "out_channels": unet["out_channels"],
        "down_block_types": [kinds[k] for k in unet["down_block_types"]],
        "up_block_types": [kinds[k] for k in unet["up_block_types"]],
        "block_out_channels": list(unet["block_out_channels"]),
        "layers_per_block": unet["layers_per_block"],
        "cross_attention_dim": unet["cross_attention_dim"],
        "attention_head_dim": heads,  # diffusers reads this as the number of heads (SD2.1's config does the same)
        "use_linear_projection": True,
        "sample_size": unet.get("sample_size", 96),
    }


@dataclass
class VividPoseConfig:
    """Architecture of one VividPose model.

    `unet`: the SVD UNet's diffusers config (`svd.configs`). `reference_net`: the SD2.1-layout UNet's
    (default: derived from `unet`). `identity`: whether the identity controller exists (off for models
    trained without ArcFace); `id_tokens` tokens of the CLIP width come out of its MLP. `pose_injection`:
    "latent" adds f_pose (the latent's channels) to the noisy latent before `conv_in`; "conv_in" adds it (first block
    width) to `conv_in`'s output. `render_type`: the RenderGuidance map τ1 was trained on.
    `reference_latent_scale`: the ReferenceNet sees the reference latent times this (SD2.1 was trained on
    scaled latents; the SVD UNet's concatenated copy stays unscaled, as SVD). `extras`: free-form notes a
    trainer records (which VAE / image encoder the model was trained with, ...)."""
    unet: dict = field(default_factory=svd_xt_unet_config)
    reference_net: dict | None = None
    identity: bool = True
    id_tokens: int = 1
    arcface_dim: int = 512
    pose_injection: str = "latent"
    render_type: str = "dense"
    pose_channels: tuple[int, ...] = (16, 32, 96, 256)
    pose_heads: int = 8
    reference_latent_scale: float = 0.18215
    extras: dict = field(default_factory=dict)

    def __post_init__(self):
        self.unet = copy.deepcopy(dict(self.unet))
        if self.reference_net is None:
            self.reference_net = reference_net_config_from_svd(self.unet)
        self.reference_net = copy.deepcopy(dict(self.reference_net))
        self.pose_channels = tuple(int(c) for c in self.pose_channels)
        if self.pose_injection not in POSE_INJECTIONS:
            raise MarionetteError(f"Unknown pose injection '{self.pose_injection}'.",
                                  f"Use one of: {', '.join(POSE_INJECTIONS)}.")
        if self.render_type not in RENDER_TYPES:
            raise MarionetteError(f"Unknown render type '{self.render_type}'.",
                                  f"Use one of: {', '.join(RENDER_TYPES)}.")
        if self.identity and (isinstance(self.id_tokens, bool) or not isinstance(self.id_tokens, int)
                              or self.id_tokens < 1):
            raise MarionetteError(f"id_tokens must be a positive integer, got {self.id_tokens!r}.",
                                  "Use 1 (the default) or e.g. 4 as IP-Adapter; set identity=False to drop the "
                                  "identity controller.")
        if self.reference_net["cross_attention_dim"] != self.unet["cross_attention_dim"]:
            raise MarionetteError("The ReferenceNet's cross-attention width differs from the SVD UNet's.",
                                  "Both read the same CLIP image embedding: give them the same cross_attention_dim.")
        if len(self.pose_channels) != 4 or self.pose_channels[-1] % self.pose_heads:
            raise MarionetteError(f"pose_channels {self.pose_channels} must be 4 widths (the last divisible by "
                                  f"pose_heads {self.pose_heads}): the input conv and three stride-2 convs (8x).",
                                  "Use the default (16, 32, 96, 256) with 8 heads.")

    @property
    def context_dim(self) -> int:
        return int(self.unet["cross_attention_dim"])

    @property
    def latent_channels(self) -> int:
        """The VAE's latent channels (4 for SVD's): the UNet's output, half its input."""
        return int(self.unet["out_channels"])

    @property
    def pose_out_channels(self) -> int:
        """Channels of f_pose: the noisy latent's, or the first block's width after conv_in."""
        return self.latent_channels if self.pose_injection == "latent" else int(self.unet["block_out_channels"][0])

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str, source: str = "This checkpoint") -> "VividPoseConfig":
        try:
            values = json.loads(text)
        except (TypeError, json.JSONDecodeError) as error:
            raise MarionetteError(f"{source} has an unreadable VividPose configuration ({error}).",
                                  "Save the model again with save_vividpose.") from error
        if not isinstance(values, dict):
            raise MarionetteError(f"{source}'s VividPose configuration is not a JSON object.",
                                  "Save the model again with save_vividpose.")
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise MarionetteError(f"{source}'s VividPose configuration has unknown entries: {unknown}.",
                                  "It was written by a newer Marionette: update the pack.")
        return cls(**values)


def tiny_config(**overrides) -> VividPoseConfig:
    """A structurally complete VividPose of a few hundred thousand parameters for CPU tests and the demo."""
    values = dict(unet=tiny_unet_config(), pose_channels=(8, 16, 16, 32), pose_heads=2, id_tokens=1)
    values.update(overrides)
    return VividPoseConfig(**values)
