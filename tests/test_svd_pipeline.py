"""The SVD animation pipeline against diffusers' StableVideoDiffusionPipeline, an independent implementation of
the pipeline MimicMotion's and StableAnimator's are copies of: one generator drawing the reference's noise
first and then the start latents, CFG per frame, decoding ALL sampled frames in chunks (MimicMotion's anchor
included) and the per-model decode chunk. Nothing on the reference side comes from our sampler, noise or
decoding code: only the tiny random modules are shared (with a zeroed PoseNet, which diffusers' UNet lacks)."""
import pytest
import torch
from PIL import Image
from diffusers import EulerDiscreteScheduler, StableVideoDiffusionPipeline
from transformers import CLIPImageProcessor

from marionette.models.pipelines.svd_animation import DECODE_CHUNKS, SVDAnimation, animate_svd
from marionette.models.pipelines.svd_tiny import tiny_animation_model
from marionette.models.svd.conditioning import CLIP_MEAN, CLIP_STD
from marionette.models.svd.sampler import SamplerSettings

SIZE, FRAMES, STEPS, SEED = 64, 9, 3, 1234
SVD_SCHEDULER = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, num_train_timesteps=1000,
                     prediction_type="v_prediction", sigma_min=0.002, sigma_max=700.0, use_karras_sigmas=True,
                     timestep_type="continuous", timestep_spacing="leading", steps_offset=1,
                     interpolation_type="linear")


def _model(variant: str) -> SVDAnimation:
    base = tiny_animation_model(variant)
    with torch.no_grad():  # no pose residual: diffusers' SVD UNet has no PoseNet input
        for parameter in base.pose_net.parameters():
            parameter.zero_()
    return SVDAnimation(base, variant, tiny=True)


def _diffusers(model: SVDAnimation) -> StableVideoDiffusionPipeline:
    return StableVideoDiffusionPipeline(
        vae=model.vae, image_encoder=model.image_encoder, unet=model.unet,
        scheduler=EulerDiscreteScheduler(**SVD_SCHEDULER),
        feature_extractor=CLIPImageProcessor(image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD)))


def _inputs(frames: int):
    generator = torch.Generator().manual_seed(5)
    reference = torch.randint(0, 256, (1, SIZE, SIZE, 3), generator=generator).float() / 255  # 8-bit, as a photo
    poses = torch.rand(frames, SIZE, SIZE, 3, generator=generator)
    return reference, poses


def _official(model, reference, frames, settings, decode_chunk):
    """The official call: one generator for everything, frames [F, H, W, 3] in 0..1 for all F frames."""
    pipe = _diffusers(model)
    photo = Image.fromarray((reference[0] * 255).round().to(torch.uint8).numpy())  # the scripts pass a PIL image
    out = pipe(photo, height=SIZE, width=SIZE, num_frames=frames,
               num_inference_steps=settings.steps, min_guidance_scale=settings.cfg_min,
               max_guidance_scale=settings.cfg_max, fps=settings.fps, motion_bucket_id=settings.motion_bucket_id,
               noise_aug_strength=settings.noise_aug_strength, decode_chunk_size=decode_chunk,
               generator=torch.Generator().manual_seed(settings.seed), output_type="pt")
    return out.frames[0].permute(0, 2, 3, 1)


@pytest.fixture(scope="module")
def mimicmotion():
    return _model("mimicmotion")


def test_mimicmotion_equals_the_official_pipeline_with_the_same_seed(mimicmotion):
    """Same seed + same device -> the official video: the anchor is sampled and decoded with the driving
    frames (chunks of 8) and only its image is dropped."""
    reference, poses = _inputs(FRAMES)
    settings = SamplerSettings.preset("mimicmotion", steps=STEPS, seed=SEED, noise_aug_strength=0.02)
    ours = animate_svd(mimicmotion, reference, poses, settings, device=torch.device("cpu"))
    official = _official(mimicmotion, reference, FRAMES + 1, settings, DECODE_CHUNKS["mimicmotion"])[1:]
    assert ours.frames.shape == official.shape == (FRAMES, SIZE, SIZE, 3)
    assert official.std() > 0.05  # a real image, not a flat one
    torch.testing.assert_close(ours.frames, official, atol=2e-4, rtol=0)


def test_the_old_orders_would_fail_this_comparison(mimicmotion):
    """Guards the comparison above: dropping the anchor latent before decoding, two generators, or another
    decode chunk all change the frames far beyond its tolerance."""
    reference, poses = _inputs(FRAMES)
    settings = SamplerSettings.preset("mimicmotion", steps=STEPS, seed=SEED, noise_aug_strength=0.02)
    official = _official(mimicmotion, reference, FRAMES + 1, settings, DECODE_CHUNKS["mimicmotion"])[1:]
    result = animate_svd(mimicmotion, reference, poses, settings, device=torch.device("cpu"))
    scaled = result.latents * mimicmotion.vae_scaling_factor  # driving frames only: anchor dropped first
    from diffusers.pipelines.stable_video_diffusion.pipeline_stable_video_diffusion import \
        StableVideoDiffusionPipeline as Pipe
    pipe = _diffusers(mimicmotion)
    anchor_first = Pipe.decode_latents(pipe, scaled[None], FRAMES, DECODE_CHUNKS["mimicmotion"])
    anchor_first = (anchor_first[0].permute(1, 2, 3, 0) / 2 + 0.5).clamp(0, 1)
    assert (anchor_first - official).abs().max() > 1e-2
    other_chunk = animate_svd(mimicmotion, reference, poses, settings, device=torch.device("cpu"), decode_chunk=4)
    assert (other_chunk.frames - official).abs().max() > 1e-2
    other_noise = animate_svd(mimicmotion, reference, poses, settings.__class__(
        **{**settings.__dict__, "seed": SEED + 1}), device=torch.device("cpu"))
    assert (other_noise.frames - official).abs().max() > 1e-2


def test_latent_output_is_the_vae_raw_space():
    """ComfyUI's LATENT convention: the VAE decodes the latents as they are (no 1/0.18215 to apply)."""
    model = _model("stableanimator")
    reference, poses = _inputs(4)
    settings = SamplerSettings.preset("stableanimator", steps=2, seed=SEED)
    result = animate_svd(model, reference, poses, settings, device=torch.device("cpu"), decode_chunk=4)
    assert result.latents.shape == (4, 4, SIZE // 8, SIZE // 8)
    with torch.no_grad():
        decoded = model.vae.decode(result.latents, num_frames=4).sample
    torch.testing.assert_close((decoded / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1), result.frames, atol=1e-5, rtol=0)


def test_mimicmotion_latents_leave_the_anchor_out(mimicmotion):
    reference, poses = _inputs(4)
    settings = SamplerSettings.preset("mimicmotion", steps=1, seed=SEED)
    result = animate_svd(mimicmotion, reference, poses, settings, device=torch.device("cpu"))
    assert result.latents.shape[0] == result.frames.shape[0] == 4


def test_stableanimator_decodes_in_chunks_of_four_like_its_script():
    model = _model("stableanimator")
    reference, poses = _inputs(6)
    settings = SamplerSettings.preset("stableanimator", steps=2, seed=SEED)
    ours = animate_svd(model, reference, poses, settings, device=torch.device("cpu"))
    scaled = ours.latents * model.vae_scaling_factor
    official = _diffusers(model).decode_latents(scaled[None], 6, 4)  # command_basic_infer.sh: chunk 4
    torch.testing.assert_close(ours.frames, (official[0].permute(1, 2, 3, 0) / 2 + 0.5).clamp(0, 1),
                               atol=1e-5, rtol=0)
    assert DECODE_CHUNKS == {"stableanimator": 4, "mimicmotion": 8}


def test_a_cpu_generator_gives_the_same_noise_wherever_the_model_runs(mimicmotion):
    reference, poses = _inputs(3)
    settings = SamplerSettings.preset("mimicmotion", steps=1, seed=SEED)
    on_model = animate_svd(mimicmotion, reference, poses, settings, device=torch.device("cpu"))
    explicit = animate_svd(mimicmotion, reference, poses, settings, device=torch.device("cpu"), noise_device="cpu")
    assert torch.equal(on_model.frames, explicit.frames)
