"""Training the autoencoder a model trained without SVD's VAE uses (the same engine, the same data).

The architecture is SVD's own VAE class, `AutoencoderKLTemporalDecoder` (8x downsampling, 4 latent
channels, a temporal decoder), at a small width; trained on windows of consecutive frames with an L1
reconstruction loss and a small KL term (Stable Diffusion's VAE recipe without the adversarial and
perceptual parts, which need pretrained networks we do not have). The export holds the config in its
metadata, with `scaling_factor` = 1 / std of the training latents, so scaled latents have unit variance as
the EDM objective assumes.
"""
from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import MarionetteError
from .edm import sample_generator
from .engine import saved_config

FORMAT = "marionette.autoencoder"
SMALL_VAE = dict(block_out_channels=[32, 64, 64, 64], down_block_types=["DownEncoderBlock2D"] * 4,
                 layers_per_block=1)
SCALE_SAMPLES = 64  # windows encoded to measure the latent std at export


@dataclass
class AutoencoderTaskConfig:
    """`init`: an autoencoder export to start from; `decoder_only`: train the decoder alone (the encoder,
    hence the latent space a VividPose was trained in, stays bit-identical), e.g. to teach the temporal
    decoder the window length the sampler decodes (`frames`). `latent_channels`: SVD's VAE has 4; more
    keep more detail at the same 8x downsampling (Stable Diffusion 3 uses 16)."""
    data: str
    frames: int = 4
    kl_weight: float = 1e-6
    init: str = ""
    decoder_only: bool = False
    latent_channels: int = 4


def signed_pixels(images: torch.Tensor) -> torch.Tensor:
    """uint8 frames [N, H, W, 3] -> the VAE's input, float [N, 3, H, W] in [-1, 1]."""
    return images.permute(0, 3, 1, 2).float() / 127.5 - 1.0


class AutoencoderTrainer(nn.Module):
    def __init__(self, vae: nn.Module, config: AutoencoderTaskConfig):
        super().__init__()
        self.vae, self.settings = vae, config

    def forward(self, frames: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        batch, count = frames.shape[:2]
        x = signed_pixels(frames.flatten(0, 1))
        posterior = self.vae.encode(x).latent_dist
        z = posterior.mean + posterior.std * eps.to(x.device)
        recon = self.vae.decode(z, num_frames=count).sample
        l1 = (recon.float() - x).abs().flatten(1).mean(1).view(batch, count).mean(1)
        kl = posterior.kl().float().view(batch, count).mean(1)
        return l1 + self.settings.kl_weight * kl


class AutoencoderTask:
    name = "autoencoder"

    def __init__(self, config: AutoencoderTaskConfig):
        self.c = config

    def config(self) -> dict:
        return saved_config(self.c, {"init": "", "decoder_only": False, "latent_channels": 4})

    def build(self) -> AutoencoderTrainer:
        from diffusers import AutoencoderKLTemporalDecoder
        if self.c.decoder_only and not self.c.init:
            raise MarionetteError("decoder_only needs the autoencoder to start from.", "Pass --init FILE.")
        vae = load_autoencoder(self.c.init).requires_grad_(True) if self.c.init else \
            AutoencoderKLTemporalDecoder(**SMALL_VAE, latent_channels=self.c.latent_channels)
        self.latent_channels = int(vae.config.latent_channels)   # --init's, whatever the option says
        if self.c.decoder_only:
            vae.encoder.requires_grad_(False)
            vae.quant_conv.requires_grad_(False)
        return AutoencoderTrainer(vae.train(), self.c)

    def dataset(self):
        from .dataset import ClipDataset
        return ClipDataset(self.c.data, split="train", frames=self.c.frames)

    def drop_probability(self) -> float:
        return 0.0

    def loss(self, module, batch: dict, keys: list[int], drop: bool) -> torch.Tensor:
        frames = batch["frames"]
        b, f, h, w, _ = frames.shape
        shape = (f, self.latent_channels, h // 8, w // 8)
        eps = torch.stack([torch.randn(shape, generator=sample_generator(k)) for k in keys])
        device = next(module.parameters()).device
        return module(frames.to(device), eps.flatten(0, 1))

    def scope(self, plain):
        return contextlib.nullcontext()

    def enable_gradient_checkpointing(self, plain: AutoencoderTrainer) -> None:
        plain.vae.enable_gradient_checkpointing()

    @torch.no_grad()
    def export(self, plain: AutoencoderTrainer, path: str, metadata: dict[str, str],
               dtype: torch.dtype = torch.float32) -> None:
        """The VAE in float32 whatever `dtype` (it is the next run's frozen input, not a deliverable). A
        decoder-only run keeps --init's scaling factor: its latents are those a model was trained on."""
        vae = plain.vae
        if self.c.decoder_only:
            save_autoencoder(vae, path, float(vae.config.scaling_factor), metadata)
            return
        data = self.dataset()
        count = min(len(data), SCALE_SAMPLES)
        device = next(vae.parameters()).device
        latents = [vae.encode(signed_pixels(data[i]["frames"]).to(device)).latent_dist.mode() for i in range(count)]
        std = float(torch.cat(latents).float().std())
        save_autoencoder(vae, path, 1.0 / std, metadata)

    @torch.no_grad()
    def validate(self, plain: AutoencoderTrainer, folder: str, step: int) -> None:
        from PIL import Image
        frames = self.dataset()[0]["frames"]
        x = signed_pixels(frames).to(next(plain.parameters()).device)
        recon = plain.vae.decode(plain.vae.encode(x).latent_dist.mode(), num_frames=x.shape[0]).sample
        recon = ((recon.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu()
        strip = torch.cat([torch.cat(list(frames), 1), torch.cat(list(recon), 1)], 0)
        Image.fromarray(strip.numpy()).save(os.path.join(folder, f"autoencoder_{step:06d}.png"))


def save_autoencoder(vae: nn.Module, path: str, scaling_factor: float, metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file
    config = dict(vae.config)
    config["scaling_factor"] = float(scaling_factor)
    config = {k: v for k, v in config.items() if not k.startswith("_")}
    info = dict(metadata or {}, format=FORMAT, config=json.dumps(config, sort_keys=True, default=list),
                **{"class": type(vae).__name__})
    save_file({k: v.detach().cpu().contiguous() for k, v in vae.state_dict().items()}, path, metadata=info)


def load_autoencoder(path: str, dtype: torch.dtype = torch.float32) -> nn.Module:
    """An autoencoder export (or a fitted patch latent), or the autoencoder a small VividPose export bundles
    (strict), eval, frozen."""
    from safetensors import safe_open
    from ..vividpose.checkpoint import build_companion, companion_specs, fill_companion, load_companions
    from ..vividpose.config import FORMAT as VIVIDPOSE_FORMAT
    if not os.path.isfile(path):
        raise MarionetteError(f"The autoencoder {path} does not exist.",
                              "Train it first: python -m models.training autoencoder --data CACHE --output-dir DIR.")
    with safe_open(path, framework="pt", device="cpu") as handle:
        metadata = handle.metadata() or {}
        state = {k: handle.get_tensor(k) for k in handle.keys()} if metadata.get("format") == FORMAT else None
    if metadata.get("format") == VIVIDPOSE_FORMAT and "vae" in companion_specs(path):
        return load_companions(path, dtype)["vae"]
    if state is None:
        raise MarionetteError(f"{os.path.basename(path)} is not an autoencoder export of Marionette's trainer.",
                              "Pass the autoencoder.safetensors an `autoencoder` run wrote (or a small VividPose "
                              "file that bundles its autoencoder).")
    spec = {"class": metadata.get("class", "AutoencoderKLTemporalDecoder"), "config": json.loads(metadata["config"])}
    with torch.device("meta"):
        vae = build_companion("vae", spec)
    return fill_companion(vae, state, "autoencoder", path, "Pass the autoencoder.safetensors of a finished run.", dtype)
