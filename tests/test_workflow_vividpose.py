"""The shipped VividPose workflow (reference -> pose -> Anny fit x2 -> shape align -> dense render (τ1) +
skeleton (τ2) -> VividPose Loader / Guidance -> SVD Animate Sampler -> video) runs as shipped in the real
in-process host on the small model the pack ships, and animates: the person in the video moves where the
driving body moves and wears the reference's colours."""
import pytest
import torch

from harness.media import read_video
from test_workflows import newest, shipped_prompt

SMALL_CHOICE = "vividpose-small-96x128 (bundled)"


def _node(prompt, class_type):
    return next(i for i, n in prompt.items() if n["class_type"] == class_type)


def test_vividpose_workflow_ships_the_small_model(comfy_host):
    shipped = {node["class_type"]: node["inputs"] for node in shipped_prompt(comfy_host, "vividpose.json").values()}
    reference = shipped["LoadReference"]
    # trained at 96x128; LoadReference sizes are multiples of 64, so the graph runs it at 128x128 (the person
    # fills the height as in training, with more background beside)
    assert (reference["size"], reference["width"], reference["height"]) == ("custom", 128, 128)
    sampler = shipped["SVDAnimateSampler"]
    assert sampler["tile_size"] == 8 and sampler["steps"] == 25
    # no guidance: held out, the small model is 0.5 dB better inside the person and 1.5 dB outside without it
    assert sampler["cfg_min"] == sampler["cfg_max"] == 1.0
    assert shipped["VividPoseLoader"]["checkpoint"] == SMALL_CHOICE
    assert shipped["ShapeAlign"]["transfer_expression"] is True  # β (and ψ where the body has it) from the reference
    assert shipped["SMPLXFit"]["body_model"] == "anny"


@pytest.fixture(scope="module")
def shipped_run(comfy_host):
    prompt = shipped_prompt(comfy_host, "vividpose.json")
    result = comfy_host.run(prompt)
    assert result.success, result.error
    return prompt, result


def test_the_shipped_workflow_makes_a_video_of_the_driving_clips_length(comfy_host, shipped_run):
    prompt, result = shipped_run
    frames = result.output(_node(prompt, "SVDAnimateSampler"), 0)
    assert tuple(frames.shape) == (24, 128, 128, 3)
    assert read_video(newest(comfy_host, "vividpose_0*.mp4")).shape[:3] == (24, 128, 128)
    loaded = result.ui[_node(prompt, "VividPoseLoader")]["marionette_vividpose"][0]
    assert not loaded["tiny"] and loaded["identity"] is False and "note" in loaded  # the loader says so
    assert loaded["train_size"] == "96x128"


def test_the_person_moves_with_the_driving_body_in_the_reference_colours(shipped_run):
    prompt, result = shipped_run
    frames = result.output(_node(prompt, "SVDAnimateSampler"), 0).float()
    body = result.output(_node(prompt, "RenderGuidance"), 5) > 0.5  # the shape-aligned body, per frame
    moved = body ^ body[:1]               # where the body came or went since frame 0
    background = ~(body | body[:1])
    change = (frames - frames[:1]).abs().mean(-1)
    assert moved.sum() > 500  # the driving clip moves
    # the small model moves the body weakly (3.2x the background's change with the shipped model at CFG 1; noise ~1x)
    assert change[moved].mean() > 2 * change[background].mean(), (change[moved].mean(), change[background].mean())
    reference = result.output(_node(prompt, "LoadReference"), 0)[0].float()
    person = result.output(_node(prompt, "LoadReference"), 1)[0] > 0.5
    worn = frames[body].mean(0)           # mean colour where the body is, over the video
    own = reference[person].mean(0)
    assert torch.dist(worn, own) < torch.dist(worn, reference[~person].mean(0)), (worn, own)
