"""Tier 2, Champ and Animate Anyone: SD15AnimationLoader -> ChampSampler / AnimateAnyoneSampler in the real host
with the tiny random models, on the synthetic reference and DWPoseExtract's skeletons; progress per window,
Cancel inside sampling, and the loader/sampler errors (family mismatch, more frames than guidance, sizes,
a Moore file given as Champ, missing files)."""
import pytest
import torch

from harness.comfy_host import PromptRejected
from test_host import pose_node

TINY = "tiny random (no download, testing only)"
SIZE, FRAMES = 64, 5


def scale(image, size=SIZE):
    return {"class_type": "ImageScale", "inputs": {"image": image, "upscale_method": "bilinear", "width": size,
                                                   "height": size, "crop": "center"}}


def loader(family="animate_anyone", unet=TINY):
    return {"class_type": "SD15AnimationLoader", "inputs": {"family": family, "denoising_unet": unet,
                                                           "image_encoder": "sd-image-variations-diffusers",
                                                           "vae": "sd-vae-ft-mse", "dtype": "auto"}}


def common(**kw):
    inputs = {"model": ["10", 0], "reference_image": ["2", 0], "steps": 2, "cfg": 3.5, "beta_schedule": "linear",
              "context_frames": 4, "context_overlap": 1, "closed_loop": True, "seed": 3, "frames": 0,
              "decode_chunk": 2, "noise_device": "cpu"}
    inputs.update(kw)
    return inputs


def prompt_for(media, family="animate_anyone", pose_size=SIZE, maps=("depth", "normal", "semantic", "skeleton"), **kw):
    """Reference scaled to 64x64 (another size than the poses when pose_size differs); 5 driving frames ->
    skeletons, used as the pose frames (Animate Anyone) or as stand-in maps (Champ)."""
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": media["ref_file"]}},
        "2": scale(["1", 0], 48),
        "3": {"class_type": "LoadVideo", "inputs": {"file": media["video_file"]}},
        "4": {"class_type": "GetVideoComponents", "inputs": {"video": ["3", 0]}},
        "5": {"class_type": "ImageFromBatch", "inputs": {"image": ["4", 0], "batch_index": 0, "length": FRAMES}},
        "6": pose_node(["5", 0]),
        "7": scale(["6", 1], pose_size),
        "10": loader(family),
        "12": {"class_type": "PreviewImage", "inputs": {"images": ["11", 0]}},
    }
    if family == "animate_anyone":
        prompt["11"] = {"class_type": "AnimateAnyoneSampler", "inputs": {**common(**kw), "pose_images": ["7", 0]}}
    else:
        prompt["11"] = {"class_type": "ChampSampler", "inputs": {**common(**kw), **{m: ["7", 0] for m in maps}}}
    return prompt


@pytest.mark.parametrize("family", ["animate_anyone", "champ"])
def test_tiny_models_animate_with_progress_per_window(comfy_host, synthetic_media, family):
    seen = []
    result = comfy_host.run_with_progress_hook(prompt_for(synthetic_media, family),
                           lambda value, total, preview, node_id=None: seen.append((node_id, value, total)))
    assert result.success, result.error
    frames, latent = result.output("11", 0), result.output("11", 1)["samples"]
    assert tuple(frames.shape) == (FRAMES, SIZE, SIZE, 3) and 0 <= float(frames.min()) <= float(frames.max()) <= 1
    assert float(frames.std()) > 0
    assert tuple(latent.shape) == (FRAMES, 4, SIZE // 8, SIZE // 8) and torch.isfinite(latent).all()
    windows = 2  # 5 frames, windows of 4 with overlap 1, closed loop: starts 0 and 3
    progress = [(value, total) for node, value, total in seen if node in ("11", None) and total == 2 * windows]
    assert progress == [(i, 2 * windows) for i in range(1, 2 * windows + 1)]
    info = result.ui["11"]["marionette_sd15"][0]
    assert info["tiny"] and info["model"] == family and "untrained tiny model" in info["warning"]
    assert result.ui["11"]["images"], "no preview written"


def test_seed_cfg_one_and_champ_subset(comfy_host, synthetic_media):
    prompt = prompt_for(synthetic_media, "champ", maps=("depth",))
    first, again = comfy_host.run(prompt), comfy_host.run(prompt)
    assert first.success and again.success, first.error
    assert torch.equal(first.output("11", 1)["samples"], again.output("11", 1)["samples"])
    assert "outside its training distribution" in first.ui["11"]["marionette_sd15"][0]["note"]
    prompt["11"]["inputs"]["cfg"] = 1.0
    single = comfy_host.run(prompt)
    assert single.success, single.error
    assert not torch.equal(first.output("11", 1)["samples"], single.output("11", 1)["samples"])


def test_cancel_stops_inside_the_window_loop(comfy_host, synthetic_media):
    import comfy.model_management as mm
    seen = []

    def hook(value, total, preview, node_id=None):
        if node_id in ("11", None) and total == 4:
            seen.append(value)
            if value == 1:
                mm.interrupt_current_processing(True)

    result = comfy_host.run_with_progress_hook(prompt_for(synthetic_media, steps=2), hook)
    assert not result.success and "execution_interrupted" in [kind for kind, _ in result.messages]
    assert max(seen) <= 2
    assert comfy_host.run(prompt_for(synthetic_media)).success  # the host keeps serving


def test_errors_name_the_fix(comfy_host, synthetic_media):
    too_many = prompt_for(synthetic_media, frames=9)
    wrong_family = prompt_for(synthetic_media)
    wrong_family["10"] = loader("champ")
    odd_size = prompt_for(synthetic_media, pose_size=60)
    for prompt, words in ((too_many, ["9 frames", "only 5"]), (wrong_family, ["runs animate_anyone", "champ"]),
                          (odd_size, ["multiples of 8"])):
        result = comfy_host.run(prompt)
        assert not result.success
        message = result.error["exception_message"]
        assert all(w in message for w in words), message


def test_unknown_beta_schedule_is_rejected(comfy_host, synthetic_media):
    with pytest.raises(PromptRejected) as caught:
        comfy_host.run(prompt_for(synthetic_media, beta_schedule="sqrt_linear"))
    assert "beta_schedule" in str(caught.value.node_errors)


@pytest.fixture
def animation_dir(comfy_host, tmp_path):
    import folder_paths
    folder = tmp_path / "animation"
    (folder / "champ").mkdir(parents=True)
    folder_paths.add_model_folder_path("animation", str(folder))
    try:
        yield folder
    finally:
        folder_paths.folder_names_and_paths["animation"][0].remove(str(folder))
        folder_paths.filename_list_cache.pop("animation", None)


def test_moore_files_given_as_champ_and_missing_files_are_named(comfy_host, synthetic_media, animation_dir):
    import folder_paths
    champ = animation_dir / "champ"
    for name in ("denoising_unet.pth", "reference_unet.pth", "motion_module.pth"):
        torch.save({"x": torch.zeros(1)}, champ / name)
    prompt = prompt_for(synthetic_media, "champ")
    prompt["10"] = loader("champ", "champ/denoising_unet.pth")
    torch.save({"conv_in.weight": torch.zeros(16, 3, 3, 3)}, champ / "pose_guider.pth")
    folder_paths.filename_list_cache.pop("animation", None)
    result = comfy_host.run(prompt)
    assert not result.success
    message = result.error["exception_message"]
    assert "guidance_encoder_" in message and "pose_guider.pth" in message and "animate_anyone" in message
    (champ / "reference_unet.pth").unlink()
    result = comfy_host.run(prompt)
    assert "reference_unet.pth was not found" in result.error["exception_message"]


def test_loader_and_samplers_run_on_the_2024_host(tmp_path, synthetic):
    """The old host's ModelPatcher / load_models_gpu / progress API with both samplers (tiny models)."""
    from conftest import need_env
    from harness.media import REFERENCE_FILE, write_png
    from test_host_2024 import run_on_2024
    comfy_2024 = need_env("MARIONETTE_COMFY_2024")
    reference = write_png(str(tmp_path / REFERENCE_FILE), synthetic["reference"].frames[0])
    prompt = {
        "1": {"class_type": "LoadReference", "inputs": {"image": REFERENCE_FILE, "size": "custom", "fit": "crop",
                                                        "width": 64, "height": 64}},
        "2": pose_node(["1", 0]),
        "3": {"class_type": "PoseAlign", "inputs": {"reference_pose": ["2", 0], "driving_pose": ["2", 0],
                                                   "draw_style": "openpose"}},
        "4": loader("animate_anyone"),
        "5": {"class_type": "AnimateAnyoneSampler", "inputs": {**common(model=["4", 0], reference_image=["1", 0]),
                                                                "pose_images": ["3", 1]}},
        "6": loader("champ"),
        "7": {"class_type": "ChampSampler", "inputs": {**common(model=["6", 0], reference_image=["1", 0]),
                                                        "skeleton": ["3", 1], "depth": ["3", 1]}},
        "8": {"class_type": "PreviewImage", "inputs": {"images": ["5", 0]}},
        "9": {"class_type": "PreviewImage", "inputs": {"images": ["7", 0]}},
    }
    report = run_on_2024(comfy_2024, tmp_path, prompt, reference)
    assert report["ok"], report["error"]
    assert report["outputs"]["5"]["marionette_sd15"][0]["model"] == "animate_anyone"
    assert report["outputs"]["7"]["marionette_sd15"][0]["guidance"] == ["depth", "dwpose"]
    assert report["outputs"]["8"]["images"] and report["outputs"]["9"]["images"]


def test_a_moore_pose_guider_renamed_as_a_champ_encoder_is_refused(comfy_host, synthetic_media, animation_dir):
    """Family by keys, never by file name: Moore's pose guider saved as guidance_encoder_depth.pth is named as such."""
    from marionette.models.animate_anyone.pose_guider import PoseGuider
    champ = animation_dir / "champ"
    for name in ("denoising_unet.pth", "reference_unet.pth", "motion_module.pth"):
        torch.save({"x": torch.zeros(1)}, champ / name)
    torch.save(PoseGuider().state_dict(), champ / "guidance_encoder_depth.pth")
    import folder_paths
    diffusers = animation_dir.parent / "diffusers"
    for name in ("sd-image-variations-diffusers", "sd-vae-ft-mse"):  # found (the guidance file fails first)
        (diffusers / name).mkdir(parents=True)
    folder_paths.add_model_folder_path("diffusers", str(diffusers))
    prompt = prompt_for(synthetic_media, "champ")
    prompt["10"] = loader("champ", "champ/denoising_unet.pth")
    try:
        result = comfy_host.run(prompt)
    finally:
        folder_paths.folder_names_and_paths["diffusers"][0].remove(str(diffusers))
    assert not result.success
    message = result.error["exception_message"]
    assert "guidance_encoder_depth.pth" in message and ("PoseGuider" in message or "pose_guider" in message), message


def test_latent_previews_reach_the_progress_bar(comfy_host, synthetic_media):
    """With ComfyUI's latent2rgb previews on, every step sends a preview image of the current x0."""
    result, previews = comfy_host.run_with_latent_previews(prompt_for(synthetic_media, seed=12))
    assert result.success, result.error
    shown = [preview for value, total, preview in previews if total == 4 and preview is not None]
    assert len(shown) == 2  # one per step
    for kind, image, _ in shown:
        assert kind == "JPEG" and image.size == (SIZE // 8, SIZE // 8)


@pytest.mark.parametrize("family", ["animate_anyone", "champ"])
def test_low_vram_sampling_gives_the_full_load_frames(comfy_host, synthetic_media, family):
    """ComfyUI's partial load (low VRAM): the layers left in RAM are cast on use; the frames are the full load's."""
    import comfy.model_management as mm
    from test_host_memory import forced_low_vram

    def loaded_model():
        return next(e for e in mm.current_loaded_models if type(e.model.model).__name__ == "SD15Animation")

    prompt = prompt_for(synthetic_media, family)
    mm.unload_all_models()
    full = comfy_host.run(prompt)
    assert full.success, full.error
    size = loaded_model().model.model_size()
    assert not loaded_model().model.model.model_lowvram
    mm.unload_all_models()
    with forced_low_vram(budget_bytes=size // 3):
        low = comfy_host.run(prompt)
    assert low.success, low.error
    net = loaded_model().model.model
    assert net.model_lowvram and 0 < net.model_loaded_weight_memory < size
    assert len([m for m in net.modules() if getattr(m, "comfy_cast_weights", False)]) > 50
    assert torch.equal(full.output("11", 0), low.output("11", 0))
    assert torch.equal(full.output("11", 1)["samples"], low.output("11", 1)["samples"])
    mm.unload_all_models()


def test_loader_fingerprint_follows_the_files(comfy_host, animation_dir):
    """IS_CHANGED changes when a file beside denoising_unet.pth or the VAE folder changes (ComfyUI reloads)."""
    import folder_paths
    loader_class = comfy_host.node_class("SD15AnimationLoader")
    champ = animation_dir / "champ"
    for name in ("denoising_unet.pth", "reference_unet.pth", "motion_module.pth", "guidance_encoder_depth.pth"):
        torch.save({"x": torch.zeros(1)}, champ / name)
    vae = animation_dir.parent / "diffusers" / "sd-vae-ft-mse"
    vae.mkdir(parents=True)
    (vae / "config.json").write_text("{}")
    folder_paths.add_model_folder_path("diffusers", str(vae.parent))
    folder_paths.filename_list_cache.pop("animation", None)
    try:
        inputs = {"family": "champ", "denoising_unet": "champ/denoising_unet.pth",
                  "image_encoder": "sd-image-variations-diffusers", "vae": "sd-vae-ft-mse", "dtype": "auto"}
        first = loader_class.IS_CHANGED(**inputs)
        torch.save({"x": torch.ones(2)}, champ / "guidance_encoder_depth.pth")
        second = loader_class.IS_CHANGED(**inputs)
        (vae / "config.json").write_text('{"changed": 1}')
        third = loader_class.IS_CHANGED(**inputs)
    finally:
        folder_paths.folder_names_and_paths["diffusers"][0].remove(str(vae.parent))
    assert len({first, second, third}) == 3
    assert loader_class.IS_CHANGED(**{**inputs, "denoising_unet": TINY}) == ""
