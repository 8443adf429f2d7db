"""Tier 2, VividPose: VividPose Loader -> VividPose Guidance -> SVD Animate Sampler in the real host with the
tiny random model (skeletons from DWPoseExtract as τ2, a stand-in image batch as τ1's renders), and the
errors a user can run into."""
import os
import shutil

import pytest
import torch

from insightface_fixture import face_image, write_antelopev2
from test_host_svd import FRAMES, SIZE, animate_prompt, model_dirs, run_with_progress  # noqa: F401 (fixture)

TINY = "tiny random VividPose (no download, testing only)"


def vividpose_prompt(media, guidance=True, **kw):
    prompt = animate_prompt(media, **kw)
    prompt["10"] = {"class_type": "VividPoseLoader",
                    "inputs": {"checkpoint": TINY, "svd_folder": "stable-video-diffusion-img2vid-xt", "dtype": "auto"}}
    if guidance:
        prompt["13"] = {"class_type": "ImageInvert", "inputs": {"image": ["7", 0]}}  # stands in for a body render
        prompt["14"] = {"class_type": "VividPoseGuidance",
                        "inputs": {"model": ["10", 0], "render_images": ["13", 0], "id_scale": 1.0,
                                   "face": "none", "no_face": "error"}}
        prompt["11"]["inputs"]["model"] = ["14", 0]
    return prompt


def test_tiny_vividpose_animates_through_the_svd_sampler(comfy_host, synthetic_media):
    result, seen = run_with_progress(comfy_host, vividpose_prompt(synthetic_media))
    assert result.success, result.error
    frames, latent = result.output("11", 0), result.output("11", 1)["samples"]
    assert tuple(frames.shape) == (FRAMES, SIZE, SIZE, 3) and float(frames.std()) > 0
    assert tuple(latent.shape) == (FRAMES, 4, SIZE // 8, SIZE // 8)
    steps = [(value, total) for node, value, total in seen if node in ("11", None) and total == 2]
    assert steps[-2:] == [(1, 2), (2, 2)]
    info = result.ui["11"]["marionette_svd"][0]
    assert info["model"] == "vividpose" and info["tiny"] and info["pose_injection"] == "latent"
    assert "untrained tiny VividPose" in info["warning"]
    assert result.ui["11"]["images"], "no preview written"
    loaded = result.ui["10"]["marionette_vividpose"][0]
    assert loaded["identity"] and loaded["render_type"] == "dense"


def test_sampler_without_guidance_names_the_missing_node(comfy_host, synthetic_media):
    result = comfy_host.run(vividpose_prompt(synthetic_media, guidance=False))
    assert not result.success and "VividPose Guidance" in str(result.error)


def test_guidance_refuses_other_models(comfy_host, synthetic_media):
    prompt = animate_prompt(synthetic_media)
    prompt["14"] = {"class_type": "VividPoseGuidance",
                    "inputs": {"model": ["10", 0], "render_images": ["7", 0], "id_scale": 1.0, "face": "none",
                               "no_face": "error"}}
    prompt["11"]["inputs"]["model"] = ["14", 0]
    result = comfy_host.run(prompt)
    assert not result.success and "not a VividPose model" in str(result.error)


def test_tiny_choice_is_hidden_without_the_test_models_switch(comfy_host, monkeypatch):
    from marionette.nodes.vividpose import VividPoseLoader
    monkeypatch.delenv("MARIONETTE_TEST_MODELS", raising=False)
    assert TINY not in VividPoseLoader.INPUT_TYPES()["required"]["checkpoint"][0]
    monkeypatch.setenv("MARIONETTE_TEST_MODELS", "1")
    assert TINY in VividPoseLoader.INPUT_TYPES()["required"]["checkpoint"][0]


@pytest.fixture
def antelopev2(comfy_host):
    import folder_paths
    folder = write_antelopev2(os.path.join(folder_paths.models_dir, "insightface"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_the_reference_face_reaches_the_identity_controller(comfy_host, synthetic_media, antelopev2):
    """face: antelopev2 gives the (fake pack's) ArcFace embedding of the reference's face to the identity
    controller, which changes the video; a reference without a face stops or goes on with zeros."""
    from PIL import Image
    for face in (True, False):
        Image.fromarray(face_image(SIZE, face)).save(os.path.join(comfy_host.input_dir, f"vividpose_face_{face}.png"))

    def run(face, choice="antelopev2", no_face="error"):
        prompt = vividpose_prompt(synthetic_media)
        prompt["1"]["inputs"]["image"] = f"vividpose_face_{face}.png"
        prompt["14"]["inputs"].update(face=choice, no_face=no_face, reference_image=["2", 0])
        return comfy_host.run(prompt)

    plain, with_face = run(True, "none"), run(True)
    assert plain.success and with_face.success, with_face.error
    assert with_face.ui["14"]["marionette_face"][0]["face"] is True
    assert (with_face.output("11", 1)["samples"] - plain.output("11", 1)["samples"]).abs().max() > 1e-5
    faceless = run(False)
    assert not faceless.success and "No face found" in str(faceless.error)
    zeros, faceless_plain = run(False, no_face="zeros"), run(False, "none")
    assert zeros.success and zeros.ui["14"]["marionette_face"][0]["face"] is False
    assert torch.equal(zeros.output("11", 1)["samples"], faceless_plain.output("11", 1)["samples"])


def test_a_vividpose_checkpoint_loads_with_the_svd_folder(comfy_host, synthetic_media, model_dirs):
    """The user's path: a trained checkpoint in models/animation + SVD-xt's folder; the same weights as the
    tiny choice give the same video, and the loader says what the model was trained with."""
    from marionette.models.vividpose.checkpoint import save_vividpose
    from marionette.models.vividpose.config import tiny_config
    from marionette.models.vividpose.tiny import tiny_vividpose
    save_vividpose(tiny_vividpose(0), model_dirs["animation"] / "vividpose.safetensors")
    save_vividpose(tiny_vividpose(0, tiny_config(identity=False, pose_injection="conv_in")),
                   model_dirs["animation"] / "vividpose_no_id.safetensors")
    tiny = comfy_host.run(vividpose_prompt(synthetic_media))
    prompt = vividpose_prompt(synthetic_media)
    prompt["10"]["inputs"]["checkpoint"] = "vividpose.safetensors"
    real = comfy_host.run(prompt)
    assert tiny.success and real.success, real.error
    assert not real.ui["11"]["marionette_svd"][0]["tiny"]
    assert (real.output("11", 1)["samples"] - tiny.output("11", 1)["samples"]).abs().max() < 1e-3
    prompt["10"]["inputs"]["checkpoint"] = "vividpose_no_id.safetensors"
    no_id = comfy_host.run(prompt)
    assert no_id.success, no_id.error
    info = no_id.ui["10"]["marionette_vividpose"][0]
    assert not info["identity"] and info["pose_injection"] == "conv_in" and "without the identity" in info["note"]


def test_a_checkpoint_that_bundles_its_vae_and_image_encoder_needs_no_svd_folder(comfy_host, synthetic_media,
                                                                                  model_dirs):
    """A file made by the trainer without SVD (as the shipped small model) carries its own VAE and image
    encoder: the loader takes those (not the SVD folder's) and gives the same video as they do in memory."""
    from marionette.models.pipelines.vividpose import tiny_vividpose_animation
    from marionette.models.vividpose.checkpoint import save_vividpose
    net = tiny_vividpose_animation(0)
    save_vividpose(net.model, model_dirs["animation"] / "vividpose_bundled.safetensors",
                   companions={"vae": net.vae, "image_encoder": net.image_encoder})
    tiny = comfy_host.run(vividpose_prompt(synthetic_media))
    shutil.rmtree(model_dirs["animation"].parent / "diffusers" / "stable-video-diffusion-img2vid-xt")  # not needed
    prompt = vividpose_prompt(synthetic_media)
    prompt["10"]["inputs"]["checkpoint"] = "vividpose_bundled.safetensors"
    bundled = comfy_host.run(prompt)
    assert tiny.success and bundled.success, bundled.error
    # the same weights on both paths: float rounding, amplified over 25 steps of a random network, reaches
    # 7e-4 on some CPUs (1e-7 typical); the SVD folder's VAE or encoder in their place would differ by far more
    assert (bundled.output("11", 1)["samples"] - tiny.output("11", 1)["samples"]).abs().max() < 5e-3


def test_other_files_are_refused_by_the_loader(comfy_host, synthetic_media, model_dirs):
    from safetensors.torch import save_file
    save_file({"unet.conv_in.weight": torch.zeros(1)}, str(model_dirs["animation"] / "MimicMotion.safetensors"))
    prompt = vividpose_prompt(synthetic_media)
    prompt["10"]["inputs"]["checkpoint"] = "MimicMotion.safetensors"
    result = comfy_host.run(prompt)
    assert not result.success and "is not a VividPose checkpoint" in str(result.error)
    prompt["10"]["inputs"]["checkpoint"] = "vividpose.safetensors"  # offered by name, not there
    missing = comfy_host.run(prompt)
    assert not missing.success and "vividpose.safetensors" in str(missing.error) and "trainer" in str(missing.error)
