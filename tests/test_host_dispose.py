"""Tier 2, DisPose on MimicMotion in the real host: DWPose -> PoseAlign -> Dense Motion Field (embedded
fallback) -> DisPose ControlNet Loader (tiny) -> DisPose Control Apply -> SVD Animate Sampler with the tiny
MimicMotion model; the control changes the video; errors for a missing CMP file, StableAnimator, and a
motion field of another length."""
import pytest

from test_host import pose_node, reference_node
from test_host_svd import TINY

FALLBACK = "embedded fallback (keypoint interpolation in the person mask, no download)"
CMP = "CMP (official, ckpt_iter_42000.pth.tar)"
SIZE = 128


TINY_SD = "tiny random SD1.5 (no download, testing only)"


def dispose_prompt(media, control=True, method=FALLBACK, animation="MimicMotion", frames=None, keypoints=True):
    prompt = {
        "1": reference_node(media["ref_file"], size="custom", width=SIZE, height=SIZE),
        "2": {"class_type": "LoadVideo", "inputs": {"file": media["video_file"]}},
        "3": {"class_type": "GetVideoComponents", "inputs": {"video": ["2", 0]}},
        "4": pose_node(["1", 0]),
        "5": pose_node(["3", 0]),
        "6": {"class_type": "PoseAlign", "inputs": {"reference_pose": ["4", 0], "driving_pose": ["5", 0],
                                                   "draw_style": "MimicMotion"}},
        "7": {"class_type": "DenseMotionField", "inputs": {
            "reference_pose": ["4", 0], "aligned_pose": ["6", 0], "reference_image": ["1", 0], "method": method,
            "cmp_model": "ckpt_iter_42000.pth.tar", "person_mask": ["1", 1]}},
        "8": {"class_type": "DisPoseControlNetLoader", "inputs": {"controlnet": TINY, "dtype": "auto"}},
        "9": {"class_type": "DisPoseControlApply", "inputs": {"controlnet": ["8", 0], "motion_field": ["7", 0],
                                                             "strength": 1.0}},
        "10": {"class_type": "SVDAnimationLoader", "inputs": {"svd_folder": TINY, "animation": animation,
                                                             "checkpoint": "MimicMotion_1-1.pth", "dtype": "auto"}},
        "11": {"class_type": "SVDAnimateSampler", "inputs": {
            "model": ["10", 0], "reference_image": ["1", 0], "pose_images": ["6", 1], "reference_pose": ["4", 1],
            "steps": 2, "cfg_min": 2.0, "cfg_max": 2.0, "fps": 7, "motion_bucket_id": 127,
            "noise_aug_strength": 0.0, "tile_size": 16, "tile_overlap": 6, "seed": 42, "decode_chunk": 4}},
        "12": {"class_type": "PreviewImage", "inputs": {"images": ["11", 0]}},
        "13": {"class_type": "PreviewImage", "inputs": {"images": ["7", 1]}},
        "15": {"class_type": "KeypointCorrespondence", "inputs": {
            "sd15": TINY_SD, "reference_image": ["1", 0], "reference_pose": ["4", 0], "aligned_pose": ["6", 0],
            "seed": 0, "ensemble": 2}},
    }
    if keypoints:
        prompt["9"]["inputs"]["keypoints"] = ["15", 0]
        prompt["16"] = {"class_type": "PreviewImage", "inputs": {"images": ["15", 1]}}
    if control:
        prompt["11"]["inputs"]["control"] = ["9", 0]
    else:
        for node in ("7", "8", "9", "13", "15", "16"):
            prompt.pop(node, None)
    if frames is not None:
        prompt["14"] = {"class_type": "ImageFromBatch", "inputs": {"image": ["6", 1], "batch_index": 0,
                                                                  "length": frames}}
        prompt["11"]["inputs"]["pose_images"] = ["14", 0]
    return prompt


def test_the_control_steers_the_video(comfy_host, synthetic_media):
    controlled = comfy_host.run(dispose_prompt(synthetic_media))
    assert controlled.success, controlled.error
    plain = comfy_host.run(dispose_prompt(synthetic_media, control=False))
    assert plain.success, plain.error
    frames = synthetic_media["driving"].num_frames
    ours, theirs = controlled.output("11", 1)["samples"], plain.output("11", 1)["samples"]
    assert ours.shape == theirs.shape == (frames, 4, SIZE // 8, SIZE // 8)
    assert (ours - theirs).abs().max() > 1e-3
    field = controlled.output("7", 0)
    assert field.dense.shape == field.sparse.shape == (frames, 2, SIZE, SIZE) and field.method == "fallback"
    outside = controlled.output("1", 1)[0] == 0  # the fallback field is weighted by the soft person mask
    assert float(field.dense.norm(dim=1)[:, outside].max()) == 0.0 and float(field.dense.abs().max()) > 0.5
    assert tuple(controlled.output("7", 1).shape) == (frames, SIZE, SIZE, 3)
    info = controlled.ui["11"]["marionette_svd"][0]["dispose"]
    assert info == {"motion": "fallback", "strength": 1.0, "keypoints": True}
    keypoints = controlled.output("15", 0)
    assert keypoints.embeddings.shape == (1, 18, 64) and keypoints.points.shape == (frames + 1, 18, 2)
    assert bool(keypoints.visible[0].sum() >= 10) and tuple(controlled.output("15", 1).shape) == (frames, SIZE, SIZE, 3)
    without = comfy_host.run(dispose_prompt(synthetic_media, keypoints=False))
    assert without.success, without.error
    assert (without.output("11", 1)["samples"] - ours).abs().max() > 1e-5  # the correspondence matters


@pytest.mark.parametrize("change,words", [
    (dict(method=CMP), ["ckpt_iter_42000.pth.tar", "models/dispose", "embedded fallback"]),
    (dict(animation="StableAnimator"), ["trained on MimicMotion"]),
    (dict(frames=3), ["motion field has 8 frames for 3 pose frames"]),
])
def test_bad_inputs_are_named(comfy_host, synthetic_media, change, words):
    result = comfy_host.run(dispose_prompt(synthetic_media, **change))
    assert not result.success
    message = result.error["exception_message"].replace("\\", "/")
    for word in words:
        assert word in message
    assert comfy_host.run(dispose_prompt(synthetic_media, control=False)).success


def test_cmp_method_runs_on_a_file_shaped_like_the_release(comfy_host, synthetic_media):
    """A full-size CMP with random weights, saved as the released ckpt_iter_42000.pth.tar is (legacy torch
    format, {step, state_dict}, `module.` names, no BatchNorm counters), in models/dispose."""
    import os

    import folder_paths
    import torch

    from marionette.models.dispose.cmp import random_cmp
    state = {"module." + k: v for k, v in random_cmp(seed=3).state_dict().items() if "num_batches_tracked" not in k}
    folder = os.path.join(folder_paths.models_dir, "dispose")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "ckpt_iter_42000.pth.tar")
    torch.save({"step": 42000, "state_dict": state}, path, _use_new_zipfile_serialization=False)
    folder_paths.filename_list_cache.pop("dispose", None)
    try:
        result = comfy_host.run(dispose_prompt(synthetic_media, method=CMP, keypoints=False))
    finally:
        os.remove(path)
        folder_paths.filename_list_cache.pop("dispose", None)
    assert result.success, result.error
    field = result.output("7", 0)
    frames = synthetic_media["driving"].num_frames
    assert field.method == "cmp" and field.dense.shape == (frames, 2, SIZE, SIZE)
    # CMP saturates near 49.5 px of its 384 grid, scaled to the video size
    assert 0 < float(field.dense.abs().max()) <= 49.5 * SIZE / 384 + 1e-3
    assert result.ui["11"]["marionette_svd"][0]["dispose"]["motion"] == "cmp"
    import comfy.model_management as mm
    loaded = [type(getattr(entry.model, "model", None)).__name__ for entry in mm.current_loaded_models]
    assert "CMPNet" in loaded  # CMP went through load_models_gpu: it runs on ComfyUI's device
