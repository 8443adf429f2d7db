"""Training VividPose: the EDM objective on clips of a prepared dataset (`training.dataset`).

Per sample: F consecutive frames of a clip, the clip's first frame (or another of `reference_frames`) as
the reference, and the frames' τ1 body renders and τ2 skeletons. The VAE (frozen) encodes the frames to x0
and the noise-augmented reference to the concatenated conditioning latent, as SVD; the image encoder gives
the context; the ReferenceNet sees the clean reference latent. Conditioning dropout: with
`drop_probability` a micro-step is unconditional in exactly the way the sampler's unconditional pass is
(zero reference latent, zero context, no reference features, no pose), so classifier-free guidance has a
trained negative.

Trainable (the paper): the UNet, ReferenceNet, pose controller and identity controller; the VAE and,
when it comes from SVD, the CLIP encoder are frozen. A small model trained without CLIP trains its own
small image encoder alongside (`train_image_encoder`); the choice is recorded in the checkpoint.

Two sizes: the small model (`autoencoder`: this trainer's own VAE or a fitted patch latent; the export
bundles it and the image encoder) and the full-size one (`svd`: the paper's init from the user's SVD-xt
folder and, with `sd21`, Stable Diffusion 2.1's UNet, `training.initialise`; the export bundles nothing
and runs with that SVD folder).
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import MarionetteError
from ..svd.conditioning import CLIP_MEAN, CLIP_STD, DEFAULT_NOISE_AUG, clip_pixel_values
from ..vividpose.checkpoint import save_vividpose
from ..vividpose.config import VividPoseConfig
from ..vividpose.model import VividPose
from ..vividpose.patch_latent import PatchLatent
from .augment import check_stretch, crop_and_resize, crop_box
from .autoencoder import load_autoencoder, signed_pixels
from .edm import denoiser_inputs, edm_loss, noise_and_sigma, sample_generator
from .engine import saved_config

FPS, MOTION_BUCKET = 7, 127  # SVD micro-conditioning the sampler node uses by default


def small_unet_config(frames: int = 8) -> dict:
    """The SVD UNet of the small model trained here: SVD-xt's block kinds at 32/64/96 channels, 32-channel
    heads (the ReferenceNet mirrors it: ~6 M parameters together)."""
    return {
        "in_channels": 8, "out_channels": 4,
        "down_block_types": ["CrossAttnDownBlockSpatioTemporal", "CrossAttnDownBlockSpatioTemporal",
                             "DownBlockSpatioTemporal"],
        "up_block_types": ["UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal",
                           "CrossAttnUpBlockSpatioTemporal"],
        "block_out_channels": [32, 64, 96], "layers_per_block": 1, "cross_attention_dim": 64,
        "num_attention_heads": [1, 2, 3], "transformer_layers_per_block": 1, "addition_time_embed_dim": 16,
        "projection_class_embeddings_input_dim": 48, "num_frames": frames, "sample_size": 16,
    }


SMALL_IMAGE_ENCODER = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                           image_size=64, patch_size=16)


SMALL_POSE, FULL_POSE = ((16, 32, 64, 128), 4), ((16, 32, 96, 256), 8)  # (channels, heads)
SD21_LATENT_SCALE = 0.18215  # what SD2.1 (the full-size ReferenceNet's init) was trained on
# left out of a run's saved config at these values: runs saved before (small ones, older options) resume
LEFT_OUT = {"autoencoder": "", "svd": "", "sd21": "", "init": "", "reference_frames": (0,), "colour_orders": 1,
            "stretch": 1.0, "person_weight": 1.0}


@dataclass
class VividPoseTaskConfig:
    """One VividPose training. Exactly one of `autoencoder` and/or `init` (small model) and `svd` (full size).
    Left at None, `train_image_encoder`, `unet`, `pose_channels` and `pose_heads` take the size's defaults; with
    `svd` the UNet is SVD-xt's (unet/config.json of the folder) and the CLIP encoder frozen. `init`
    continues a small model from its export (architecture, weights, bundled VAE and image encoder); with
    `autoencoder` too, that VAE replaces the bundled one, which needs the same encoder (e.g. a decoder-only
    fine-tune of it): the latents the model learnt stay the same."""
    data: str                                  # a prepared dataset folder (training.dataset)
    autoencoder: str = ""                      # the VAE: an autoencoder export of this trainer
    init: str = ""                             # or a small VividPose export to continue from
    frames: int = 8
    drop_probability: float = 0.1
    noise_aug_strength: float = DEFAULT_NOISE_AUG
    identity: bool = False                     # needs face embeddings in the dataset (ArcFace, antelopev2)
    render_type: str = "dense"
    train_image_encoder: bool | None = None
    unet: dict | None = None
    pose_channels: tuple | None = None
    pose_heads: int | None = None
    validation_clip: str = ""                  # a clip of the dataset (default: the first held-out one)
    reference_frames: tuple = (0,)             # the frames of a clip used as the reference image
    colour_orders: int = 1                     # RGB channel orders each window is also seen in (1..6)
    stretch: float = 1.0                       # > 1: each window cropped and stretched up to this (`augment`)
    person_weight: float = 1.0                 # the loss over the person (cached masks) counts this many times
    svd: str = ""                              # full size: the stable-video-diffusion-img2vid-xt folder
    sd21: str = ""                             # full size: SD2.1's UNet file for the ReferenceNet's init

    def __post_init__(self):
        if bool(self.autoencoder or self.init) == bool(self.svd):
            raise MarionetteError("VividPose training needs exactly one of an autoencoder or a small model's export "
                                  "to continue from (small model) and an SVD-xt folder (full size).",
                                  "Pass --autoencoder runs/ae/autoencoder.safetensors and/or --init "
                                  "vividpose.safetensors, or --svd stable-video-diffusion-img2vid-xt [--sd21 FILE].")
        self.reference_frames = tuple(int(r) for r in self.reference_frames)
        check_stretch(self.stretch)
        if not self.person_weight > 0:
            raise MarionetteError(f"person_weight {self.person_weight} is not positive.",
                                  "Use 1 (the loss even over the frame) or more, e.g. 3.")
        if self.sd21 and not self.svd:
            raise MarionetteError("--sd21 initialises the full-size ReferenceNet; the small model has none of "
                                  "SD2.1's size.", "Pass --svd FOLDER with it, or leave --sd21 out.")
        if self.svd:
            if self.train_image_encoder:
                raise MarionetteError("SVD's CLIP image encoder stays frozen in full-size training.",
                                      "Leave train_image_encoder unset (or False) with svd.")
            if self.unet:
                raise MarionetteError("Full-size training takes the UNet config from the SVD-xt folder.",
                                      "Leave unet unset with svd.")
        channels, heads = FULL_POSE if self.svd else SMALL_POSE
        self.train_image_encoder = (not self.svd) if self.train_image_encoder is None else self.train_image_encoder
        self.unet = ({} if self.svd else small_unet_config()) if self.unet is None else self.unet
        self.pose_channels = tuple(channels if self.pose_channels is None else self.pose_channels)
        self.pose_heads = heads if self.pose_heads is None else self.pose_heads


class VividPoseTrainer(nn.Module):
    """The training module: VividPose + image encoder (+ the frozen VAE). `forward` returns per-sample
    losses, so DDP sees every trained parameter's use."""

    def __init__(self, model: VividPose, vae: nn.Module, image_encoder: nn.Module, config: VividPoseTaskConfig):
        super().__init__()
        self.model, self.vae, self.image_encoder, self.settings = model, vae.requires_grad_(False), image_encoder, config
        self.image_encoder.requires_grad_(config.train_image_encoder)
        self.scaling = float(vae.config.scaling_factor)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """uint8/float IMAGE [N, H, W, 3] (float in [-1, 1] after augmentation allowed) -> raw latents."""
        return self.vae.encode(images).latent_dist.mode()

    def forward(self, latents, reference, render, skeleton, noise, sigma, ref_noise, drop: bool, face=None,
                regions=None):
        """latents [B, F, C, h, w]: the frames' raw VAE latents (`LatentWindows`); images uint8; regions: the
        loss's weights per latent cell [B, F, 1, h, w] (`person_regions`), None for an even loss."""
        batch, count = latents.shape[:2]
        x0 = latents.float() * self.scaling
        ref = signed_pixels(reference)
        model = self.model
        if drop:
            cond_latent = torch.zeros_like(x0)
            context = torch.zeros(batch, 1 + (model.config.id_tokens if model.id_controller else 0),
                                  model.config.context_dim, device=x0.device)
            features = pose = None
        else:
            cond_latent = self.encode(ref + self.settings.noise_aug_strength * ref_noise)
            cond_latent = cond_latent.unsqueeze(1).expand(-1, count, -1, -1, -1)
            size = int(self.image_encoder.config.image_size)
            pixels = clip_pixel_values(reference.float() / 255.0, size=size).to(x0.device)
            clip = self.image_encoder(pixel_values=pixels).image_embeds.unsqueeze(1)
            tokens = model.identity_tokens(face) if (model.id_controller is not None and face is not None) else None
            context = model.context(clip, tokens)
            features = model.reference_features(self.encode(ref), clip)
            pose = model.pose_features(_unit(render.flatten(0, 1)), _unit(skeleton.flatten(0, 1)))
        scaled, noisy, c_noise = denoiser_inputs(x0, noise, sigma)
        model.set_reference_features(features)  # cleared by the task's scope after the backward
        time_ids = torch.tensor([[FPS - 1, MOTION_BUCKET, self.settings.noise_aug_strength]],
                                device=x0.device).expand(batch, -1)
        sample = torch.cat([scaled, cond_latent.to(scaled.dtype)], dim=2)
        v = model(sample, c_noise, context, time_ids, pose_features=pose)[0]
        return edm_loss(v, noisy, x0, sigma, regions)


def _vae_note(vae: nn.Module) -> str:
    if not isinstance(vae, PatchLatent):
        return ""
    c = vae.config
    return f"patch latent: {c.components} principal components of {c.factor}x{c.factor} patches (fixed, bundled)"


def _check_same_latents(bundled: nn.Module, vae: nn.Module, path: str, init: str) -> None:
    """`vae` must encode exactly as `bundled` (encoder, quant_conv, scaling factor all equal)."""
    ours, theirs = vae.state_dict(), bundled.state_dict()
    encoder = [k for k in theirs if k.startswith(("encoder.", "quant_conv."))]
    same = type(vae) is type(bundled) and float(vae.config.scaling_factor) == float(
        bundled.config.scaling_factor) and all(
        k in ours and ours[k].shape == theirs[k].shape and torch.equal(ours[k].float(), theirs[k].float())
        for k in encoder)
    if not same:
        raise MarionetteError(f"{os.path.basename(path)} encodes differently from the autoencoder "
                              f"{os.path.basename(init)} was trained with.",
                              "Pass an autoencoder whose encoder is that one (a --decoder-only fine-tune of it), "
                              "or leave --autoencoder out.")


def _train_size(data: str) -> str:
    """'WxH' of a prepared dataset ('' where `data` is not one yet)."""
    from .dataset import read_index
    if not os.path.isfile(os.path.join(data, "index.json")):
        return ""
    width, height = read_index(data)["settings"]["size"]
    return f"{width}x{height}"


def _unit(images: torch.Tensor) -> torch.Tensor:
    return images.permute(0, 3, 1, 2).float() / 255.0


def small_image_encoder(context_dim: int) -> nn.Module:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection
    return CLIPVisionModelWithProjection(CLIPVisionConfig(**SMALL_IMAGE_ENCODER, projection_dim=context_dim))


class VividPoseTask:
    name = "vividpose"

    def __init__(self, config: VividPoseTaskConfig, split: str = "train"):
        self.c, self.split = config, split
        self._vae, self._dataset = None, None

    def config(self) -> dict:
        return saved_config(self.c, LEFT_OUT)

    def vividpose_config(self, scaling: float, svd_unet: dict | None = None, clip_mean=CLIP_MEAN,
                         clip_std=CLIP_STD, latent_channels: int = 4, vae_note: str = "") -> VividPoseConfig:
        """The architecture trained: the small UNet with this trainer's autoencoder (latent scale
        `scaling`, `latent_channels`), or, full size, `svd_unet` (the SVD folder's unet/config.json) with
        SD2.1's scale. `vae_note`: how the bundled VAE was made."""
        c = self.c
        unet = copy.deepcopy(svd_unet if c.svd else c.unet)
        unet["num_frames"] = c.frames
        if not c.svd:   # noisy + reference latents in, a latent out
            unet["in_channels"], unet["out_channels"] = 2 * latent_channels, latent_channels
        extras = {"vae": vae_note or "autoencoder trained by Marionette's trainer (bundled)",
                  "image_encoder": ("small CLIP ViT trained with the model (bundled)" if c.train_image_encoder
                                    else "small CLIP ViT, random and frozen (bundled)"),
                  "identity": "on (ArcFace antelopev2)" if c.identity else "off: trained without ArcFace",
                  "train_size": _train_size(c.data), "clip_mean": list(clip_mean), "clip_std": list(clip_std),
                  "frames": c.frames,
                  "fps": FPS, "motion_bucket_id": MOTION_BUCKET, "noise_aug_strength": c.noise_aug_strength}
        if c.svd:
            scaling = SD21_LATENT_SCALE
            extras.update(vae="SVD-xt (frozen)", image_encoder="SVD-xt CLIP ViT-H (frozen)",
                          unet_init="SVD-xt (stable-video-diffusion-img2vid-xt)",
                          reference_net_init=(f"SD2.1 ({os.path.basename(c.sd21)})" if c.sd21 else "random"))
        return VividPoseConfig(unet=unet, identity=c.identity, render_type=c.render_type,
                               pose_channels=c.pose_channels, pose_heads=c.pose_heads,
                               reference_latent_scale=scaling, extras=extras)

    def build(self) -> VividPoseTrainer:
        if self.c.svd:
            from .initialise import initialise_full_size, load_svd_parts
            base = load_svd_parts(self.c.svd)
            config = self.vividpose_config(base.vae_scaling_factor, base.unet_config, base.clip_mean, base.clip_std)
            model = initialise_full_size(VividPose(config), base, self.c.sd21)
            self._vae = base.vae
            return VividPoseTrainer(model, base.vae, base.image_encoder, self.c)
        if self.c.init:
            return self._continued()
        vae = self._vae = load_autoencoder(self.c.autoencoder)
        config = self.vividpose_config(float(vae.config.scaling_factor), latent_channels=vae.config.latent_channels,
                                       vae_note=_vae_note(vae))
        model = VividPose(config)
        encoder = small_image_encoder(config.context_dim)
        return VividPoseTrainer(model, vae, encoder, self.c)

    def _continued(self) -> VividPoseTrainer:
        """The small model of `init`, trainable, with its bundled VAE (frozen) and image encoder; its
        architecture is the file's (the task's unet / pose options do not apply)."""
        from ..vividpose.checkpoint import load_companions, load_vividpose
        companions = load_companions(self.c.init)
        if set(companions) != {"vae", "image_encoder"}:
            raise MarionetteError(f"{os.path.basename(self.c.init)} does not bundle its VAE and image encoder.",
                                  "Continue only from a small model's export (python -m models.training vividpose "
                                  "--autoencoder ... writes one).")
        model = load_vividpose(self.c.init).requires_grad_(True).train()
        model.config.extras["init"] = os.path.basename(self.c.init)
        self._vae = companions["vae"]
        if self.c.autoencoder:
            self._vae = load_autoencoder(self.c.autoencoder)
            _check_same_latents(companions["vae"], self._vae, self.c.autoencoder, self.c.init)
        return VividPoseTrainer(model, self._vae, companions["image_encoder"].train(), self.c)

    def dataset(self):
        from .dataset import ClipDataset
        if self._dataset is None:
            windows = ClipDataset(self.c.data, split=self.split, frames=self.c.frames, anchor=True,
                                  references=self.c.reference_frames, colour_orders=self.c.colour_orders)
            self._dataset = LatentWindows(windows, self._vae)
        return self._dataset

    def drop_probability(self) -> float:
        return float(self.c.drop_probability)

    def loss(self, module, batch: dict, keys: list[int], drop: bool) -> torch.Tensor:
        device = next(module.parameters()).device
        latents = batch["latents"].to(device)
        b, f, channels, lh, lw = latents.shape
        h, w = batch["reference"].shape[1:3]
        noise, sigma, ref_noise, boxes = [], [], [], []
        for key in keys:
            g = sample_generator(key)
            n, s = noise_and_sigma((f, channels, lh, lw), g)
            noise.append(n)
            sigma.append(s)
            ref_noise.append(torch.randn((3, h, w), generator=g))
            if self.c.stretch > 1.0:
                boxes.append(crop_box(g, w, h, self.c.stretch))
        if boxes:
            batch = stretched(batch, boxes)
            latents = torch.stack([encode_frames(self._vae, frames) for frames in batch["frames"]]).to(device)
        face = batch.get("face_embedding")
        if self.c.identity and face is None:
            raise MarionetteError("identity=True needs face embeddings in the dataset.",
                                  "Prepare the dataset with --face-root (insightface antelopev2), or train with "
                                  "identity off.")
        regions = None
        if self.c.person_weight != 1.0:
            if "mask" not in batch:
                raise MarionetteError("person_weight needs the clips' person masks, and this dataset has none.",
                                      "Put <video>.mask.npz beside each video and prepare again, or train with "
                                      "person_weight 1.")
            regions = person_regions(batch["mask"], (lh, lw), self.c.person_weight).to(device)
        return module(latents, batch["reference"].to(device), batch["render"].to(device),
                      batch["skeleton"].to(device), torch.stack(noise).to(device), torch.stack(sigma),
                      torch.stack(ref_noise).to(device), drop, None if face is None else face.to(device), regions)

    def scope(self, plain: VividPoseTrainer):
        return plain.model.reference_attention(None)

    def enable_gradient_checkpointing(self, plain: VividPoseTrainer) -> None:
        plain.model.unet.enable_gradient_checkpointing()
        plain.model.reference_net.enable_gradient_checkpointing()

    def export(self, plain: VividPoseTrainer, path: str, metadata: dict[str, str],
               dtype: torch.dtype = torch.float32) -> None:
        """Small: VividPose with its VAE and image encoder bundled. Full size: VividPose alone (it runs with
        the user's SVD folder, `pipelines.vividpose.load_vividpose_animation(path, svd_folder)`)."""
        companions = None if self.c.svd else {"vae": plain.vae, "image_encoder": plain.image_encoder}
        save_vividpose(plain.model, path, metadata, companions=companions, dtype=dtype)

    def validate(self, plain: VividPoseTrainer, folder: str, step: int) -> None:
        from .validation import validation_video
        validation_video(plain, self.c, folder, step)


def encode_frames(vae: nn.Module, frames: torch.Tensor, chunk: int = 16) -> torch.Tensor:
    """uint8 frames [N, H, W, 3] -> their raw latents [N, C, h, w] (float32, CPU), `chunk` frames at a time."""
    device = next(vae.parameters()).device
    with torch.no_grad():
        return torch.cat([vae.encode(signed_pixels(frames[i:i + chunk]).to(device)).latent_dist.mode().float().cpu()
                          for i in range(0, len(frames), chunk)])


def person_regions(masks: torch.Tensor, size: tuple[int, int], weight: float) -> torch.Tensor:
    """uint8 person masks [B, F, H, W] (0/255) -> the loss's weight per latent cell [B, F, 1, h, w]: 1 over
    the background, `weight` over the person, between them by the share of the cell's pixels it covers."""
    b, f = masks.shape[:2]
    share = F.interpolate(masks.flatten(0, 1).unsqueeze(1).float() / 255.0, size=size, mode="area")
    return (1.0 + (float(weight) - 1.0) * share).view(b, f, 1, *size)


def stretched(batch: dict, boxes: list) -> dict:
    """The batch's images (frames, reference, renders, skeletons, masks), sample i cropped to boxes[i] and
    resized back (`augment.crop_and_resize`)."""
    out = dict(batch)
    for key in ("frames", "reference", "render", "skeleton"):
        out[key] = torch.stack([crop_and_resize(x, box) for x, box in zip(batch[key], boxes)])
    if "mask" in batch:
        out["mask"] = torch.stack([crop_and_resize(m.unsqueeze(-1), box)[..., 0]
                                   for m, box in zip(batch["mask"], boxes)])
    return out


class LatentWindows(torch.utils.data.Dataset):
    """`ClipDataset` windows plus their frames' raw VAE latents ('latents' [F, C, h, w]): the frozen VAE
    encodes every clip (in each of the windows' colour orders) once when the dataset is made, not every step."""

    def __init__(self, windows, vae: nn.Module, chunk: int = 16):
        from .dataset import COLOUR_ORDERS, load_clip
        self.windows, self.latents = windows, []
        for name in windows.clips:
            frames = load_clip(windows.cache_dir, name)["frames"]
            orders = COLOUR_ORDERS[:windows.colour_orders]
            self.latents.append([encode_frames(vae, frames[..., list(order)], chunk) for order in orders])

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> dict:
        item = self.windows[i]
        item["latents"] = self.latents[int(item["clip"])][int(item["colour_order"])][item["indices"]]
        return item


def check_data(path: str) -> None:
    if not os.path.isfile(os.path.join(path, "index.json")):
        raise MarionetteError(f"{path} is not a prepared dataset (no index.json).",
                              "Run `python -m models.training prepare --videos DIR --cache DIR` first.")
