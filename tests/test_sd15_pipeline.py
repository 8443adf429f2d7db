"""The SD1.5 ReferenceNet pipeline (Champ, Moore-AnimateAnyone) on small random models: the whole run against
a re-derivation in the official pipelines' structure (diffusers' DDIMScheduler and noise call, reference UNet
at t = 0 on the conditional branch, guidance in both branches, windows averaged before CFG), chunked
guidance encoding, CFG <= 1, the raw-space LATENT, and the input errors."""
import pytest
import torch
from diffusers import AutoencoderKL, DDIMScheduler
from diffusers.utils.torch_utils import randn_tensor
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from marionette.models.errors import MarionetteError
from marionette.models.pipelines import sd15_animation
from marionette.models.pipelines.sd15_animation import SD15Animation, animate_sd15
from marionette.models.pipelines.sd15_conditioning import clip_pixels, reference_pixels
from marionette.models.sd15.context import context_windows
from marionette.models.sd15.guidance_convs import GuidanceConvStack
from marionette.models.sd15.reference import record_reference, reference_attention
from marionette.models.sd15.refnet_unet import build_denoising_unet, build_reference_unet, sd15_unet_config
from marionette.models.sd15.sampler import SD15SamplerSettings

SIZE, CONTEXT = 32, 16


def small_model(family="champ", maps=("depth", "normal")) -> SD15Animation:
    torch.manual_seed(0)
    config = sd15_unet_config()
    config.update(block_out_channels=[32, 64], down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
                  up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"], attention_head_dim=2, cross_attention_dim=16,
                  norm_num_groups=8, layers_per_block=1)
    motion = dict(num_attention_heads=2, temporal_position_encoding_max_len=32, mid_block=True, norm_num_groups=8)
    unet, reference_unet = build_denoising_unet(config, motion), build_reference_unet(config)
    for p in unet.parameters():  # the official zero-initialised outputs would hide the guidance paths
        p.data.normal_(0, 0.05) if p.ndim > 1 else None
    encoders = {m: GuidanceConvStack((4, 8, 8, 8), 32).eval() for m in (("pose",) if family == "animate_anyone"
                                                                         else maps)}
    vae = AutoencoderKL(block_out_channels=(8, 8, 8, 8), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, norm_num_groups=4,
                        layers_per_block=1).eval()
    clip = CLIPVisionModelWithProjection(CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                                          num_attention_heads=2, image_size=224, patch_size=32,
                                                          projection_dim=16)).eval()
    return SD15Animation(family, unet, reference_unet, encoders, vae, clip, torch.float32, tiny=True)


def inputs(frames, maps=("depth", "normal"), seed=1):
    gen = torch.Generator().manual_seed(seed)
    reference = torch.rand(1, 48, 40, 3, generator=gen)  # another size: squashed to the guidance size
    return reference, {m: torch.rand(frames, SIZE, SIZE, 3, generator=gen) for m in maps}


def official_run(model, reference, guidance, settings, frames):
    """Champ's `MultiGuidance2LongVideoPipeline.__call__` structure, step by step, on our modules."""
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                              beta_schedule=settings.beta_schedule, steps_offset=1, clip_sample=False,
                              rescale_betas_zero_snr=True, timestep_spacing="trailing", prediction_type="v_prediction")
    scheduler.set_timesteps(settings.steps)
    generator = torch.Generator().manual_seed(settings.seed)
    with torch.no_grad():
        clip = model.image_encoder(clip_pixels(reference)).image_embeds.unsqueeze(1)
        latents = randn_tensor((1, 4, frames, SIZE // 8, SIZE // 8), generator=generator, dtype=torch.float32)
        ref_latent = model.vae.encode(reference_pixels(reference, (SIZE, SIZE))).latent_dist.mean * 0.18215
        features = torch.stack([model.guidance_encoders[m](guidance[m].permute(0, 3, 1, 2))
                                for m in guidance]).sum(0).transpose(0, 1).unsqueeze(0)  # [1, C, F, h, w]
        banks = record_reference(model.reference_unet, ref_latent, clip, 0)
        cfg = settings.cfg > 1
        windows = context_windows(frames, settings.context_frames, settings.context_overlap)
        for t in scheduler.timesteps:
            noise_pred = torch.zeros(2 if cfg else 1, *latents.shape[1:])
            counter = torch.zeros(1, 1, frames, 1, 1)
            for c in windows:
                preds = []
                if cfg:  # the official unconditional rows: zero CLIP token, no reference tokens
                    preds.append(model.denoising_unet(latents[:, :, c], t, torch.zeros_like(clip), features[:, :, c]))
                with reference_attention(model.denoising_unet, banks):
                    preds.append(model.denoising_unet(latents[:, :, c], t, clip, features[:, :, c]))
                noise_pred[:, :, c] = noise_pred[:, :, c] + torch.cat(preds)
                counter[:, :, c] = counter[:, :, c] + 1
            noise_pred = noise_pred / counter
            if cfg:
                uncond, text = noise_pred.chunk(2)
                noise_pred = uncond + settings.cfg * (text - uncond)
            latents = scheduler.step(noise_pred, t, latents).prev_sample
        video = torch.cat([model.vae.decode(latents[:, :, i] / 0.18215).sample for i in range(frames)])
    return latents[0].transpose(0, 1), (video / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1)


@pytest.mark.parametrize("frames,cfg", [(20, 3.5), (9, 1.0)])
def test_pipeline_matches_the_official_structure(frames, cfg):
    model = small_model()
    reference, guidance = inputs(frames)
    settings = SD15SamplerSettings(steps=3, cfg=cfg, context_frames=CONTEXT, context_overlap=4, seed=5)
    result = animate_sd15(model, reference, guidance, settings, device=torch.device("cpu"), decode_chunk=3)
    latents, video = official_run(model, reference, guidance, settings, frames)
    assert torch.allclose(result.latents * 0.18215, latents, rtol=1e-4, atol=1e-4)
    assert torch.allclose(result.frames, video, atol=1e-4)
    assert result.frames.shape == (frames, SIZE, SIZE, 3) and result.latents.shape == (frames, 4, 4, 4)


def test_guidance_is_encoded_in_chunks(monkeypatch):
    model = small_model()
    _, guidance = inputs(21)
    sizes = []
    encoder = model.guidance_encoders["depth"]
    original = encoder.forward
    monkeypatch.setattr(encoder, "forward", lambda x: sizes.append(x.shape[0]) or original(x))
    monkeypatch.setattr(sd15_animation, "GUIDANCE_CHUNK", 8)
    with torch.no_grad():
        chunked = sd15_animation.encode_guidance(model, guidance, 21, "cpu", "cpu", lambda: None)
        whole = sum(model.guidance_encoders[m](guidance[m].permute(0, 3, 1, 2)) for m in guidance)
    assert sizes == [8, 8, 5, 21]  # three chunks, then the whole clip at once for the comparison
    assert torch.allclose(chunked, whole, atol=1e-6)


def test_unconditional_branch_has_no_reference_and_a_zero_token():
    model = small_model()
    reference, guidance = inputs(4)
    with torch.no_grad():
        features = sd15_animation.encode_guidance(model, guidance, 4, "cpu", "cpu", lambda: None)
        clip = torch.randn(1, 1, 16)
        banks = record_reference(model.reference_unet, torch.randn(1, 4, 4, 4), clip)
        denoiser = sd15_animation.WindowDenoiser(model.denoising_unet, banks, clip, features, "cpu")
        x, frames = torch.randn(4, 4, 4, 4), torch.arange(4)
        uncond = denoiser(x, 500, frames, False)
        cond = denoiser(x, 500, frames, True)
        plain = model.denoising_unet(x.transpose(0, 1)[None], torch.tensor(500), torch.zeros_like(clip),
                                     features.transpose(0, 1)[None])[0].transpose(0, 1)
    assert torch.equal(uncond, plain) and not torch.allclose(cond, uncond)


def test_seed_and_guidance_drive_the_result():
    model = small_model("animate_anyone")
    reference, guidance = inputs(5, ("pose",))
    settings = SD15SamplerSettings(steps=2, seed=1)
    run = lambda g, s: animate_sd15(model, reference, g, s, device=torch.device("cpu")).latents  # noqa: E731
    first = run(guidance, settings)
    assert torch.equal(first, run(guidance, settings))
    assert not torch.equal(first, run(guidance, SD15SamplerSettings(steps=2, seed=2)))
    assert not torch.equal(first, run({"pose": 1 - guidance["pose"]}, settings))


def test_frames_subset_and_errors():
    model = small_model()
    reference, guidance = inputs(6)
    settings = SD15SamplerSettings(steps=1)
    device = torch.device("cpu")
    assert animate_sd15(model, reference, guidance, settings, device=device, frames=4).frames.shape[0] == 4
    with pytest.raises(MarionetteError, match="only 6"):
        animate_sd15(model, reference, guidance, settings, device=device, frames=7)
    short = dict(guidance, normal=guidance["normal"][:5])
    with pytest.raises(MarionetteError, match="differ in size or length"):
        animate_sd15(model, reference, short, settings, device=device)
    with pytest.raises(MarionetteError, match="semantic_map"):
        animate_sd15(model, reference, dict(guidance, semantic_map=guidance["depth"]), settings, device=device)
    with pytest.raises(MarionetteError, match="No guidance"):
        animate_sd15(model, reference, {}, settings, device=device)
    odd = {m: g[:, :30, :30] for m, g in guidance.items()}
    with pytest.raises(MarionetteError, match="multiples of 8"):
        animate_sd15(model, reference, odd, settings, device=device)
    with pytest.raises(MarionetteError, match="pose"):
        SD15Animation("animate_anyone", model.denoising_unet, model.reference_unet,
                      {"depth": model.guidance_encoders["depth"]}, model.vae, model.image_encoder, torch.float32)


def test_cancel_reaches_guidance_sampling_and_decode():
    model = small_model()
    reference, guidance = inputs(6)

    class Stop(Exception):
        pass

    for stop_at in (1, 2, 4):
        seen = []

        def check():
            seen.append(1)
            if len(seen) == stop_at:
                raise Stop

        with pytest.raises(Stop):
            animate_sd15(model, reference, guidance, SD15SamplerSettings(steps=2), device=torch.device("cpu"),
                         check=check)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_models_sample(dtype):
    """The released tiny models in a half dtype: noise drawn in the model dtype, latents integrated in float32."""
    from marionette.models.animate_anyone.tiny import tiny_animate_anyone
    from marionette.models.sd15.refnet_tiny import tiny_image_encoder, tiny_vae
    if dtype == torch.float16:
        try:
            torch.nn.functional.conv2d(torch.zeros(1, 1, 3, 3, dtype=dtype), torch.zeros(1, 1, 1, 1, dtype=dtype))
        except RuntimeError:
            pytest.skip("this torch build has no float16 convolution on the CPU")
    model = SD15Animation.from_parts("animate_anyone", tiny_animate_anyone(dtype=dtype), tiny_vae(dtype=dtype),
                                     tiny_image_encoder(dtype=dtype), tiny=True)
    reference, guidance = inputs(3, ("pose",))
    result = animate_sd15(model, reference, guidance, SD15SamplerSettings(steps=2), device=torch.device("cpu"))
    assert result.latents.dtype == torch.float32 and torch.isfinite(result.latents).all()
    assert result.frames.shape == (3, SIZE, SIZE, 3) and torch.isfinite(result.frames).all()
