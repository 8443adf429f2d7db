"""The shipped VividPose workflow (reference -> pose -> body fit x2 -> shape align -> dense render (τ1) +
skeleton (τ2) -> VividPose Loader / Guidance -> SVD Animate Sampler -> video) runs in the real in-process
host on the tiny VividPose, smaller and with 2 steps; it ships at the paper's 512x768 and 14-frame windows."""
import os

from harness.workflow import override
from test_workflows import newest, shipped_prompt

from harness.media import read_video

TINY = {"VividPoseLoader": {"checkpoint": "tiny random VividPose (no download, testing only)"}}
SMALL = {"LoadReference": {"size": "custom", "width": 128, "height": 192}, "SVDAnimateSampler": {"steps": 2}}


def test_vividpose_workflow_ships_the_papers_settings(comfy_host):
    shipped = {node["class_type"]: node["inputs"] for node in shipped_prompt(comfy_host, "vividpose.json").values()}
    assert shipped["LoadReference"]["size"] == "512x768"
    assert shipped["SVDAnimateSampler"]["tile_size"] == 14 and shipped["SVDAnimateSampler"]["steps"] == 25
    assert shipped["VividPoseLoader"]["checkpoint"] == "vividpose.safetensors"
    assert shipped["ShapeAlign"]["transfer_expression"] is True  # β and ψ from the reference
    assert shipped["SMPLXFit"]["body_model"] == "smplx"


def test_vividpose_workflow_makes_a_video_with_the_tiny_model(comfy_host, synthetic_media):
    import folder_paths
    from smplx_fixture import small_vertex_ids, write_fixture
    folder = os.path.join(folder_paths.models_dir, "smplx")
    write_fixture(folder)  # a small file with SMPL-X's structure stands in for the licensed one
    prompt = override(shipped_prompt(comfy_host, "vividpose.json"), TINY, SMALL)
    try:
        with small_vertex_ids():
            result = comfy_host.run(prompt)
    finally:
        os.remove(os.path.join(folder, "SMPLX_NEUTRAL.npz"))
    assert result.success, result.error
    frames = synthetic_media["driving"].num_frames
    assert read_video(newest(comfy_host, "vividpose_0*.mp4")).shape[:3] == (frames, 192, 128)
    sampler = next(i for i, n in prompt.items() if n["class_type"] == "SVDAnimateSampler")
    info = result.ui[sampler]["marionette_svd"][0]
    assert info["model"] == "vividpose" and info["tiny"] and info["frames"] == frames
    assert tuple(result.output(sampler, 1)["samples"].shape) == (frames, 4, 24, 16)
