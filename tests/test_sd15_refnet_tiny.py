"""The tiny random SD1.5 ReferenceNet models (tests and the no-download demo): deterministic per seed,
the released structure (16 reference blocks, 21 motion modules), parts that fit together — VAE latents
at 1/8 with 4 channels, CLIP tokens as wide as the cross-attention, encoder features as wide as conv_in."""
import torch

from marionette.models.animate_anyone.tiny import tiny_animate_anyone
from marionette.models.champ.tiny import tiny_champ
from marionette.models.sd15.clip_image import encode_reference
from marionette.models.sd15.guidance_convs import maps_to_input
from marionette.models.sd15.reference import record_reference, reference_attention
from marionette.models.sd15.refnet_tiny import tiny_backbone, tiny_image_encoder, tiny_vae


def test_tiny_backbone_is_deterministic_and_structured_as_released():
    a, b, c = tiny_backbone(seed=1), tiny_backbone(seed=1), tiny_backbone(seed=2)
    first = next(iter(a.denoising_unet.state_dict().values()))
    assert torch.equal(first, next(iter(b.denoising_unet.state_dict().values())))
    assert not torch.equal(first, next(iter(c.denoising_unet.state_dict().values())))
    assert len(a.denoising_unet.transformer_blocks()) == 16 == len(a.reference_unet.transformer_blocks())
    assert len(a.denoising_unet.motion_modules()) == 21 and a.denoising_unet.max_frames == 32
    assert not any(p.requires_grad for p in a.denoising_unet.parameters())


def test_tiny_parts_fit_together_for_both_families():
    vae, clip = tiny_vae(), tiny_image_encoder()
    frames, size = 4, 64
    reference = torch.rand(1, size, size, 3)
    skeletons = maps_to_input(torch.rand(frames, size, size, 3))
    with torch.no_grad():
        latent = vae.encode(reference.permute(0, 3, 1, 2) * 2 - 1).latent_dist.mean * vae.config.scaling_factor
        tokens = encode_reference(clip, reference)
        assert latent.shape == (1, 4, size // 8, size // 8) and tokens.shape == (1, 1, 16)
        for model, features in ((tiny_animate_anyone(), lambda m: m.pose_guider(skeletons)),
                                (tiny_champ(types=("dwpose",)), lambda m: m.guidance({"dwpose": skeletons}))):
            guidance = features(model).reshape(1, frames, -1, size // 8, size // 8).transpose(1, 2)
            banks = record_reference(model.backbone.reference_unet, latent, tokens)
            noise = torch.randn(1, 4, frames, size // 8, size // 8)
            with reference_attention(model.backbone.denoising_unet, banks):
                v = model.backbone.denoising_unet(noise, 999, tokens, guidance)
            assert v.shape == noise.shape and torch.isfinite(v).all()
            decoded = vae.decode(v[0].transpose(0, 1) / vae.config.scaling_factor).sample
            assert decoded.shape == (frames, 3, size, size)
