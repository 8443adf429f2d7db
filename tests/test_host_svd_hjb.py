"""Tier 2, HJB face refinement in the real host: LoadReference (face mask) + PoseAlign (aligned poses, face
boxes from their landmarks) -> HJBFaceRefine -> SVDAnimateSampler with the tiny StableAnimator model and
the tiny random face model; the refinement changes the video and reports its loss; errors for an empty
reference mask, a wrong number of target masks, a missing face model and the tiny face model on a real one."""
import pytest
import torch

from test_host import pose_node, reference_node

TINY = "tiny random (no download, testing only)"
TINY_FACE = "tiny random (testing only)"
FRAMES, WIDTH, HEIGHT = 3, 192, 256


def refine_node(**kw):
    inputs = {"face_model": TINY_FACE, "reference_image": ["1", 0], "reference_face_mask": ["1", 2],
              "start_step": 0, "end_step": 20, "iterations": 1, "learning_rate": 0.1, "decode_chunk": 2,
              "gradient_checkpointing": True, "target_pose": ["6", 0], "window": "single"}
    inputs.update(kw)
    return {"class_type": "HJBFaceRefine", "inputs": inputs}


def hjb_prompt(media, refine=True, **refine_inputs):
    prompt = {
        "1": reference_node(media["ref_file"], size="custom", width=WIDTH, height=HEIGHT),
        "2": {"class_type": "LoadVideo", "inputs": {"file": media["video_file"]}},
        "3": {"class_type": "GetVideoComponents", "inputs": {"video": ["2", 0]}},
        "4": pose_node(["1", 0]),
        "5": pose_node(["3", 0]),
        "6": {"class_type": "PoseAlign", "inputs": {"reference_pose": ["4", 0], "driving_pose": ["5", 0],
                                                   "draw_style": "MimicMotion"}},
        "7": {"class_type": "ImageFromBatch", "inputs": {"image": ["6", 1], "batch_index": 0, "length": FRAMES}},
        "10": {"class_type": "SVDAnimationLoader", "inputs": {"svd_folder": TINY, "animation": "StableAnimator",
                                                             "checkpoint": "Animation/unet.pth", "dtype": "auto"}},
        "11": {"class_type": "SVDAnimateSampler", "inputs": {
            "model": ["10", 0], "reference_image": ["1", 0], "pose_images": ["7", 0], "steps": 2, "cfg_min": 2.0,
            "cfg_max": 2.0, "fps": 7, "motion_bucket_id": 127, "noise_aug_strength": 0.02, "tile_size": 16,
            "tile_overlap": 4, "seed": 5, "decode_chunk": 4}},
        "12": {"class_type": "PreviewImage", "inputs": {"images": ["11", 0]}},
    }
    if refine:
        prompt["13"] = refine_node(**refine_inputs)
        prompt["11"]["inputs"]["face_refine"] = ["13", 0]
        prompt["14"] = {"class_type": "MaskToImage", "inputs": {"mask": ["13", 1]}}
        prompt["15"] = {"class_type": "PreviewImage", "inputs": {"images": ["14", 0]}}
    return prompt


def test_refinement_runs_and_changes_the_video(comfy_host, synthetic_media):
    prompt = hjb_prompt(synthetic_media, target_pose=None, target_face_masks=["20", 0])
    # the face masks the pose gives, cut to the sampled frames
    prompt["19"] = refine_node()
    prompt["20"] = {"class_type": "MaskToImage", "inputs": {"mask": ["19", 1]}}
    prompt["21"] = {"class_type": "ImageFromBatch", "inputs": {"image": ["20", 0], "batch_index": 0,
                                                              "length": FRAMES}}
    prompt["22"] = {"class_type": "ImageToMask", "inputs": {"image": ["21", 0], "channel": "red"}}
    prompt["13"]["inputs"]["target_face_masks"] = ["22", 0]
    refined = comfy_host.run(prompt)
    assert refined.success, refined.error
    plain = comfy_host.run(hjb_prompt(synthetic_media, refine=False))
    assert plain.success, plain.error
    info = refined.ui["11"]["marionette_svd"][0]["face_refine"]
    assert info["steps_refined"] == 2 and info["loss_first"] > 0
    masks = refined.output("19", 1)
    assert masks.shape[1:] == (HEIGHT, WIDTH) and masks.shape[0] == synthetic_media["driving"].num_frames
    area = (masks > 0.5).float().mean(dim=(1, 2))
    assert bool((area > 0.002).all()) and bool((area < 0.2).all())  # a head-sized box in every frame
    ours, theirs = refined.output("11", 1)["samples"], plain.output("11", 1)["samples"]
    assert ours.shape == theirs.shape == (FRAMES, 4, HEIGHT // 8, WIDTH // 8)
    assert (ours - theirs).abs().max() > 1e-3
    report = refined.ui["13"]["marionette_face_refine"][0]
    assert report["frames_with_face"] == FRAMES and len(report["reference_box"]) == 4
    assert report["window"] == "single"


def test_the_window_is_optional_and_defaults_to_the_official_single_window(comfy_host, synthetic_media):
    """Prompts saved before the window input existed still run: they get the official single window."""
    spec = comfy_host.nodes.NODE_CLASS_MAPPINGS["HJBFaceRefine"].INPUT_TYPES()["optional"]["window"]
    assert spec[0] == ["single", "tiles"] and spec[1]["default"] == "single" and "memory" in spec[1]["tooltip"]
    prompt = hjb_prompt(synthetic_media, target_pose=None, target_face_masks=["22", 0])
    del prompt["13"]["inputs"]["window"]
    prompt["19"] = refine_node()
    prompt["21"] = {"class_type": "ImageFromBatch", "inputs": {"image": ["20", 0], "batch_index": 0,
                                                              "length": FRAMES}}
    prompt["20"] = {"class_type": "MaskToImage", "inputs": {"mask": ["19", 1]}}
    prompt["22"] = {"class_type": "ImageToMask", "inputs": {"image": ["21", 0], "channel": "red"}}
    result = comfy_host.run(prompt)
    assert result.success, result.error
    assert result.ui["13"]["marionette_face_refine"][0]["window"] == "single"


def test_pose_masks_of_another_length_are_refused(comfy_host, synthetic_media):
    result = comfy_host.run(hjb_prompt(synthetic_media))  # all driving poses, only FRAMES pose images
    assert not result.success
    message = result.error["exception_message"]
    assert f"target face masks for {FRAMES} pose frames" in message


@pytest.mark.parametrize("change,words", [
    (dict(reference_face_mask=["30", 0]), "reference face mask is empty"),
    (dict(face_model="Animation/glintr100_torch.pth"), "glintr100_torch.pth"),
])
def test_bad_inputs_are_named(comfy_host, synthetic_media, change, words):
    prompt = hjb_prompt(synthetic_media, **change)
    prompt["30"] = {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": WIDTH, "height": HEIGHT}}
    result = comfy_host.run(prompt)
    assert not result.success
    message = result.error["exception_message"]
    assert words in message
    if "glintr100" in words:
        assert "models/animation" in message.replace("\\", "/") and "FrancisRing/StableAnimator" in message


def test_the_host_keeps_serving_after_errors(comfy_host, synthetic_media):
    prompt = hjb_prompt(synthetic_media, refine=False)
    result = comfy_host.run(prompt)
    assert result.success and torch.isfinite(result.output("11", 0)).all()
