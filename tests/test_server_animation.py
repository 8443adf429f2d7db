"""Tier 3a: the animation samplers of every backbone family through the real ComfyUI server (HTTP +
websocket) with the tiny test models: SVD (MimicMotion), Champ and Animate Anyone (SD1.5)."""
import os

import pytest
from harness.media import write_media
from harness.server import ComfyServer
from test_server import run_over_ws

from conftest import need_env

SIZE, FRAMES, STEPS = 64, 4, 2
TINY = "tiny random (no download, testing only)"


@pytest.fixture(scope="module")
def server(synthetic):
    need_env("MARIONETTE_COMFY")
    with ComfyServer(test_models=True) as running:
        running.media = write_media(os.path.join(running.base, "input"), synthetic)
        running.info = running.get("/object_info")
        yield running


def node(server, class_type, **inputs):
    """A prompt node with the node's own defaults for every widget input not given."""
    spec = server.info[class_type]["input"]
    for name, (kind, *options) in spec["required"].items():
        if name not in inputs and options and "default" in options[0]:
            inputs[name] = options[0]["default"]
        elif name not in inputs and isinstance(kind, list):
            inputs[name] = kind[0]
    return {"class_type": class_type, "inputs": inputs}


def media(server) -> dict:
    """Reference + pose frames at SIZE x SIZE from the server's input files."""
    scale = {"upscale_method": "bilinear", "width": SIZE, "height": SIZE, "crop": "center"}
    return {"r1": {"class_type": "LoadImage", "inputs": {"image": server.media["ref_file"]}},
            "r2": {"class_type": "ImageScale", "inputs": {"image": ["r1", 0], **scale}},
            "v1": {"class_type": "LoadVideo", "inputs": {"file": server.media["video_file"]}},
            "v2": {"class_type": "GetVideoComponents", "inputs": {"video": ["v1", 0]}},
            "v3": {"class_type": "ImageFromBatch", "inputs": {"image": ["v2", 0], "batch_index": 0, "length": FRAMES}},
            "v4": {"class_type": "ImageScale", "inputs": {"image": ["v3", 0], **scale}}}


def check_run(server, prompt, sampler, info_key):
    prompt["out"] = {"class_type": "PreviewImage", "inputs": {"images": [sampler, 0]}}
    _, events = run_over_ws(server, prompt, timeout=600)
    assert events[-1]["type"] == "execution_success", events[-1]
    progress = [e["data"] for e in events if e["type"] == "progress" and e["data"].get("node") == sampler]
    assert progress and progress[-1]["value"] == progress[-1]["max"]
    executed = [e["data"]["output"] for e in events if e["type"] == "executed" and e["data"]["node"] == sampler]
    info = executed[0][info_key][0]
    assert info["frames"] == FRAMES and info["tiny"] is True and "warning" in info
    assert executed[0]["images"], "the node shows its frames"


def test_svd_sampler_runs_over_the_server(server):
    prompt = media(server)
    prompt["m"] = node(server, "SVDAnimationLoader", svd_folder=TINY, animation="mimicmotion")
    prompt["s"] = node(server, "SVDAnimateSampler", model=["m", 0], reference_image=["r2", 0],
                       pose_images=["v4", 0], steps=STEPS, tile_size=FRAMES + 1, tile_overlap=1)
    check_run(server, prompt, "s", "marionette_svd")


@pytest.mark.parametrize("family,sampler,maps", [("champ", "ChampSampler", ("depth", "skeleton")),
                                                  ("animate_anyone", "AnimateAnyoneSampler", ("pose_images",))])
def test_sd15_samplers_run_over_the_server(server, family, sampler, maps):
    prompt = media(server)
    prompt["m"] = node(server, "SD15AnimationLoader", family=family, denoising_unet=TINY)
    prompt["s"] = node(server, sampler, model=["m", 0], reference_image=["r2", 0], steps=STEPS,
                       **{name: ["v4", 0] for name in maps})
    check_run(server, prompt, "s", "marionette_sd15")
