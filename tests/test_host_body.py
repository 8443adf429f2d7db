"""Tier 2, body stage: SMPLXFit / ShapeAlign / RenderGuidance in the real host, and their bad inputs."""
import numpy as np
import torch

from test_host import pose_node


def fit_node(keypoints, images=None, iterations=20, **kw):
    inputs = {"pose_keypoint": keypoints, "body_model": "Anny (embedded)", "gender": "neutral",
              "iterations": iterations, "temporal_smoothing": 1.0}
    if images is not None:
        inputs["images"] = images
    inputs.update(kw)
    return {"class_type": "SMPLXFit", "inputs": inputs}


def driving_prompt(media):
    return {"1": {"class_type": "LoadVideo", "inputs": {"file": media["video_file"]}},
            "2": {"class_type": "GetVideoComponents", "inputs": {"video": ["1", 0]}},
            "3": pose_node(["2", 0])}


def test_frames_without_a_person_are_interpolated_and_reported(comfy_host, synthetic_media):
    prompt = driving_prompt(synthetic_media)
    # blank out frames 3 and 4: nobody is detected there
    prompt["4"] = {"class_type": "EmptyImage", "inputs": {"width": 384, "height": 384, "batch_size": 2, "color": 0}}
    prompt["5"] = {"class_type": "ImageFromBatch", "inputs": {"image": ["2", 0], "batch_index": 0, "length": 3}}
    prompt["6"] = {"class_type": "ImageFromBatch", "inputs": {"image": ["2", 0], "batch_index": 5, "length": 3}}
    prompt["7"] = {"class_type": "ImageBatch", "inputs": {"image1": ["5", 0], "image2": ["4", 0]}}
    prompt["8"] = {"class_type": "ImageBatch", "inputs": {"image1": ["7", 0], "image2": ["6", 0]}}
    prompt["3"] = pose_node(["8", 0])
    prompt["9"] = fit_node(["3", 0], ["8", 0])
    prompt["10"] = {"class_type": "PreviewImage", "inputs": {"images": ["9", 1]}}
    result = comfy_host.run(prompt)
    assert result.success, result.error
    body = result.output("9", 0)
    assert body.num_frames == 8 and body.frame_ok.tolist() == [True] * 3 + [False] * 2 + [True] * 3
    assert result.ui["9"]["marionette_body"][0]["interpolated"] == 2
    assert np.isfinite(body.pose).all() and np.isfinite(body.translation).all()
    assert tuple(result.output("9", 1).shape) == (8, 384, 384, 3)


def test_image_and_pose_frame_counts_must_match(comfy_host, synthetic_media):
    prompt = driving_prompt(synthetic_media)
    prompt["4"] = {"class_type": "ImageFromBatch", "inputs": {"image": ["2", 0], "batch_index": 0, "length": 5}}
    prompt["5"] = fit_node(["3", 0], ["4", 0])
    prompt["6"] = {"class_type": "PreviewImage", "inputs": {"images": ["5", 1]}}
    result = comfy_host.run(prompt)
    assert not result.success
    assert "5 images but 8 pose frames" in result.error["exception_message"]


def test_shape_align_needs_a_one_frame_reference(comfy_host, synthetic_media):
    prompt = driving_prompt(synthetic_media)
    prompt["4"] = fit_node(["3", 0])
    prompt["5"] = {"class_type": "ShapeAlign", "inputs": {"driving_body": ["4", 0], "reference_body": ["4", 0],
                                                          "placement": "reference position",
                                                          "transfer_expression": True}}
    prompt["6"] = {"class_type": "RenderGuidance", "inputs": {"body": ["5", 0], "skeleton_style": "OpenPose"}}
    prompt["7"] = {"class_type": "PreviewImage", "inputs": {"images": ["6", 0]}}
    result = comfy_host.run(prompt)
    assert not result.success
    message = result.error["exception_message"]
    assert "8 frames" in message and "Fix:" in message


def test_render_guidance_is_byte_reproducible(comfy_host, synthetic_media):
    node = comfy_host.node_class("RenderGuidance")()
    prompt = driving_prompt(synthetic_media)
    prompt["4"] = fit_node(["3", 0], iterations=10)
    prompt["5"] = {"class_type": "RenderGuidance", "inputs": {"body": ["4", 0], "skeleton_style": "StableAnimator"}}
    prompt["6"] = {"class_type": "PreviewImage", "inputs": {"images": ["5", 1]}}
    result = comfy_host.run(prompt)
    assert result.success, result.error
    first = [result.output("5", i) for i in range(6)]
    again = node.render(result.output("4", 0), "StableAnimator")["result"]
    for a, b in zip(first, again):
        assert torch.equal(a, b)


def test_no_person_in_any_frame_is_a_clear_error(comfy_host):
    prompt = {"1": {"class_type": "EmptyImage", "inputs": {"width": 128, "height": 128, "batch_size": 3, "color": 0}},
              "2": pose_node(["1", 0]),
              "3": fit_node(["2", 0]),
              "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 1]}}}
    result = comfy_host.run(prompt)
    assert not result.success and "Fix:" in result.error["exception_message"]
    assert comfy_host.run({"1": prompt["1"], "4": {"class_type": "PreviewImage",
                                                   "inputs": {"images": ["1", 0]}}}).success


def test_fit_status_and_clip_stable_depth(comfy_host, synthetic_media):
    """The status line's figures relative to the body size (no face figure for Anny), ShapeAlign's
    'reference' placement agreeing with PoseAlign's fit, and RenderGuidance's clip-stable depth."""
    prompt = driving_prompt(synthetic_media)
    prompt["4"] = fit_node(["3", 0], iterations=10)
    prompt["5"] = {"class_type": "ImageFromBatch", "inputs": {"image": ["2", 0], "batch_index": 0, "length": 1}}
    prompt["6"] = pose_node(["5", 0])
    prompt["7"] = fit_node(["6", 0], iterations=10)
    prompt["8"] = {"class_type": "ShapeAlign", "inputs": {"driving_body": ["4", 0], "reference_body": ["7", 0],
                                                          "placement": "reference", "transfer_expression": True}}
    for key, depth_range in (("9", "frame"), ("10", "clip")):
        prompt[key] = {"class_type": "RenderGuidance", "inputs": {"body": ["8", 0], "skeleton_style": "openpose",
                                                                  "depth_range": depth_range}}
    prompt["11"] = {"class_type": "PreviewImage", "inputs": {"images": ["9", 0]}}
    prompt["12"] = {"class_type": "PreviewImage", "inputs": {"images": ["10", 0]}}
    result = comfy_host.run(prompt)
    assert result.success, result.error
    status = result.ui["4"]["marionette_body"][0]
    assert 0 < status["reprojection_relative"] < 0.1 and "face" not in status["parts"]
    assert set(status["parts"]) >= {"torso", "head", "arms", "legs"}
    placed = result.output("8", 0).info["shape_align"]
    assert placed["placement"] == "reference position" and placed["torso_to_aligned_px"] < 10
    per_frame, clip = result.output("9", 0), result.output("10", 0)
    assert per_frame.shape == clip.shape and not torch.equal(per_frame, clip)
    assert torch.equal(result.output("9", 5), result.output("10", 5))     # the mask does not change
