"""Tier 2, SVD animation: SVDAnimationLoader -> SVDAnimateSampler in the real host with the tiny random
models, on the synthetic reference and the skeletons DWPoseExtract draws from the synthetic driving clip;
and the loader/sampler errors (size mismatch, CFG < 1, missing / wrong / truncated checkpoint)."""
import json
import os

import pytest
import torch

from harness.comfy_host import PromptRejected
from test_host import pose_node

TINY = "tiny random (no download, testing only)"
SIZE = 64
FRAMES = 5


def scale(image, size=SIZE):
    return {"class_type": "ImageScale", "inputs": {"image": image, "upscale_method": "bilinear", "width": size,
                                                   "height": size, "crop": "center"}}


def loader(animation="MimicMotion", svd_folder=TINY, checkpoint="MimicMotion_1-1.pth"):
    return {"class_type": "SVDAnimationLoader", "inputs": {"svd_folder": svd_folder, "animation": animation,
                                                          "checkpoint": checkpoint, "dtype": "auto"}}


def sampler(**kw):
    inputs = {"model": ["10", 0], "reference_image": ["2", 0], "pose_images": ["7", 0], "steps": 2,
              "cfg_min": 1.5, "cfg_max": 2.5, "fps": 7, "motion_bucket_id": 127, "noise_aug_strength": 0.02,
              "tile_size": 4, "tile_overlap": 1, "seed": 3, "decode_chunk": 2}
    inputs.update(kw)
    return {"class_type": "SVDAnimateSampler", "inputs": inputs}


def animate_prompt(media, animation="MimicMotion", pose_size=SIZE, **kw):
    """Reference scaled to 64x64; 5 driving frames -> DWPoseExtract skeletons scaled to `pose_size`."""
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": media["ref_file"]}},
        "2": scale(["1", 0]),
        "3": {"class_type": "LoadVideo", "inputs": {"file": media["video_file"]}},
        "4": {"class_type": "GetVideoComponents", "inputs": {"video": ["3", 0]}},
        "5": {"class_type": "ImageFromBatch", "inputs": {"image": ["4", 0], "batch_index": 0, "length": FRAMES}},
        "6": pose_node(["5", 0]),
        "7": scale(["6", 1], pose_size),
        "10": loader(animation),
        "11": sampler(**kw),
        "12": {"class_type": "PreviewImage", "inputs": {"images": ["11", 0]}},
    }


def run_with_progress(comfy_host, prompt):
    seen = []
    result = comfy_host.run_with_progress_hook(
        prompt, lambda value, total, preview, node_id=None: seen.append((node_id, value, total)))
    return result, seen


@pytest.mark.parametrize("animation, kept", [("MimicMotion", FRAMES), ("StableAnimator", FRAMES)])
def test_tiny_model_animates_the_pose_frames(comfy_host, synthetic_media, animation, kept):
    result, seen = run_with_progress(comfy_host, animate_prompt(synthetic_media, animation))
    assert result.success, result.error
    frames, latent = result.output("11", 0), result.output("11", 1)["samples"]
    # MimicMotion samples the reference pose as an extra frame 0 and drops it: as many frames as poses
    assert tuple(frames.shape) == (kept, SIZE, SIZE, 3)
    assert torch.isfinite(frames).all() and 0 <= float(frames.min()) <= float(frames.max()) <= 1
    assert float(frames.std()) > 0
    assert tuple(latent.shape) == (kept, 4, SIZE // 8, SIZE // 8) and torch.isfinite(latent).all()
    steps = [(value, total) for node, value, total in seen if node in ("11", None) and total == 2]
    assert steps[-2:] == [(1, 2), (2, 2)]
    info = result.ui["11"]["marionette_svd"][0]
    assert info["tiny"] and info["frames"] == kept and info["model"] == animation.lower()
    assert "untrained tiny model" in info["warning"] and "diffusers" in info["warning"]
    assert result.ui["11"]["images"], "no preview written"


def test_same_seed_same_video_and_pose_matters(comfy_host, synthetic_media):
    prompt = animate_prompt(synthetic_media)
    first = comfy_host.run(prompt)
    again = comfy_host.run(prompt)
    assert first.success and again.success
    assert torch.equal(first.output("11", 1)["samples"], again.output("11", 1)["samples"])
    prompt["7"] = {"class_type": "ImageInvert", "inputs": {"image": ["7", 0]}}
    prompt["13"] = scale(["6", 1])
    prompt["7"]["inputs"]["image"] = ["13", 0]
    other = comfy_host.run(prompt)
    assert other.success, other.error
    assert not torch.equal(first.output("11", 1)["samples"], other.output("11", 1)["samples"])


def test_pose_and_reference_sizes_must_match(comfy_host, synthetic_media):
    result = comfy_host.run(animate_prompt(synthetic_media, pose_size=128))
    assert not result.success
    message = result.error["exception_message"]
    assert "128x128" in message and "64x64" in message and "PoseAlign" in message
    assert comfy_host.run(animate_prompt(synthetic_media)).success  # the host keeps serving


def test_cfg_below_one_is_rejected(comfy_host, synthetic_media):
    with pytest.raises(PromptRejected) as caught:
        comfy_host.run(animate_prompt(synthetic_media, cfg_min=0.5))
    assert "cfg_min" in str(caught.value.node_errors)


# ------------------------------------------------------------------------------------ checkpoints
@pytest.fixture
def model_dirs(comfy_host, tmp_path):
    """A tiny SVD-xt diffusers folder registered under 'diffusers' and an empty 'animation' folder."""
    import folder_paths
    from diffusers import EulerDiscreteScheduler
    from transformers import CLIPImageProcessor

    from marionette.models.pipelines.svd_tiny import tiny_animation_model
    base = tiny_animation_model("mimicmotion")
    svd = tmp_path / "diffusers" / "stable-video-diffusion-img2vid-xt"
    base.vae.save_pretrained(svd / "vae")
    base.image_encoder.save_pretrained(svd / "image_encoder")
    (svd / "unet").mkdir()
    (svd / "unet" / "config.json").write_text(json.dumps(base.unet_config))
    CLIPImageProcessor().save_pretrained(svd / "feature_extractor")
    EulerDiscreteScheduler().save_config(svd / "scheduler")
    animation = tmp_path / "animation"
    animation.mkdir()
    added = {"diffusers": str(svd.parent), "animation": str(animation)}
    for kind, path in added.items():
        folder_paths.add_model_folder_path(kind, path)
    try:
        yield {"animation": animation, "base": base}
    finally:
        for kind, path in added.items():
            folder_paths.folder_names_and_paths[kind][0].remove(path)
            folder_paths.filename_list_cache.pop(kind, None)


def checkpoint_prompt(synthetic_media):
    prompt = animate_prompt(synthetic_media)
    prompt["10"] = loader(svd_folder="stable-video-diffusion-img2vid-xt")
    return prompt


def test_missing_checkpoint_names_file_folder_and_source(comfy_host, synthetic_media, model_dirs):
    result = comfy_host.run(checkpoint_prompt(synthetic_media))
    assert not result.success
    message = result.error["exception_message"]
    assert "MimicMotion_1-1.pth" in message and "'animation'" in message and "tencent/MimicMotion" in message


def test_wrong_checkpoint_type_is_named(comfy_host, synthetic_media, model_dirs):
    torch.save(model_dirs["base"].pose_net.state_dict(), model_dirs["animation"] / "MimicMotion_1-1.pth")
    result = comfy_host.run(checkpoint_prompt(synthetic_media))
    assert not result.success
    message = result.error["exception_message"]
    assert "PoseNet, which does not fit here" in message and "MimicMotion_1-1.pth" in message


def test_truncated_checkpoint_is_reported(comfy_host, synthetic_media, model_dirs):
    base = model_dirs["base"]
    weights = {f"unet.{k}": v for k, v in base.unet.state_dict().items()}
    weights.update({f"pose_net.{k}": v for k, v in base.pose_net.state_dict().items()})
    path = model_dirs["animation"] / "MimicMotion_1-1.pth"
    torch.save(weights, path)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    result = comfy_host.run(checkpoint_prompt(synthetic_media))
    assert not result.success
    message = result.error["exception_message"]
    assert "MimicMotion_1-1.pth" in message and "truncated" in message
    assert os.path.getsize(path) == len(data) // 2
    assert comfy_host.run(animate_prompt(synthetic_media)).success  # the host keeps serving


def test_nodes_register_with_stepped_float_inputs(comfy_host):
    import nodes
    for name in ("SVDAnimationLoader", "SVDAnimateSampler"):
        assert "Marionette" in nodes.NODE_DISPLAY_NAME_MAPPINGS[name]
        for section in nodes.NODE_CLASS_MAPPINGS[name].INPUT_TYPES().values():
            for inp, (kind, *opts) in section.items():
                if kind == "FLOAT":
                    assert "step" in opts[0], f"{name}.{inp} has no step"
    loader_inputs = nodes.NODE_CLASS_MAPPINGS["SVDAnimationLoader"].INPUT_TYPES()["required"]
    assert loader_inputs["svd_folder"][0][0] == TINY
    assert {"MimicMotion_1-1.pth", "Animation/unet.pth"} <= set(loader_inputs["checkpoint"][0])


def test_single_file_svd_is_offered_and_checked(comfy_host, synthetic_media, model_dirs, tmp_path):
    """ComfyUI's svd_xt*.safetensors in models/checkpoints is a choice of the loader and goes through the
    single-file conversion (here a file that is not SVD, which must be refused by name)."""
    import folder_paths
    import nodes
    from safetensors.torch import save_file
    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4, 3, 3)},
              str(checkpoints / "svd_xt.safetensors"))
    base = model_dirs["base"]
    weights = {f"unet.{k}": v for k, v in base.unet.state_dict().items()}
    weights.update({f"pose_net.{k}": v for k, v in base.pose_net.state_dict().items()})
    torch.save(weights, model_dirs["animation"] / "MimicMotion_1-1.pth")
    folder_paths.add_model_folder_path("checkpoints", str(checkpoints))
    try:
        choices = nodes.NODE_CLASS_MAPPINGS["SVDAnimationLoader"].INPUT_TYPES()["required"]["svd_folder"][0]
        assert "svd_xt.safetensors" in choices
        prompt = animate_prompt(synthetic_media)
        prompt["10"] = loader(svd_folder="svd_xt.safetensors")
        result = comfy_host.run(prompt)
    finally:
        folder_paths.folder_names_and_paths["checkpoints"][0].remove(str(checkpoints))
        folder_paths.filename_list_cache.pop("checkpoints", None)
    assert not result.success
    message = result.error["exception_message"]
    assert "svd_xt.safetensors" in message and "checkpoints" in message


def test_latent_previews_reach_the_progress_bar(comfy_host, synthetic_media):
    """With ComfyUI's latent2rgb previews on, every step sends a preview image of the current x0."""
    result, previews = comfy_host.run_with_latent_previews(animate_prompt(synthetic_media, "StableAnimator", seed=11))
    assert result.success, result.error
    steps = [(value, preview) for value, total, preview in previews if total == 2]
    assert [value for value, _ in steps[-2:]] == [1, 2]
    for _, preview in steps[-2:]:
        kind, image, _ = preview
        assert kind == "JPEG" and image.size == (SIZE // 8, SIZE // 8)
