"""Tier 2 on a 2024 host: the V1 nodes load and run in ComfyUI a28a9dc (March 2024) as well."""
import json
import os
import subprocess
import sys

from conftest import need_env
from harness.media import REFERENCE_FILE, write_png
from test_host import OUR_NODES, pose_node


def run_on_2024(comfy_2024: str, tmp_path, prompt: dict, *inputs: str) -> dict:
    """Runs `prompt` in the 2024 host in a subprocess (it cannot share a process with the 2025 one)."""
    prompt_file = tmp_path / "prompt.json"
    prompt_file.write_text(json.dumps(prompt))
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    run = subprocess.run([sys.executable, "-m", "harness.host2024", comfy_2024, str(prompt_file), *inputs],
                         cwd=tests_dir, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_every_node_loads_and_runs_on_the_2024_host(tmp_path, synthetic):
    comfy_2024 = need_env("MARIONETTE_COMFY_2024")
    reference = write_png(str(tmp_path / REFERENCE_FILE), synthetic["reference"].frames[0])
    prompt = {
        "1": {"class_type": "LoadReference", "inputs": {"image": REFERENCE_FILE, "size": "512x768", "fit": "crop",
                                                        "width": 512, "height": 768}},
        "2": pose_node(["1", 0]),
        "3": {"class_type": "PoseAlign", "inputs": {"reference_pose": ["2", 0], "driving_pose": ["2", 0],
                                                   "draw_style": "OpenPose", "reference_image": ["1", 0]}},
        "4": {"class_type": "SMPLXFit", "inputs": {"pose_keypoint": ["3", 0], "body_model": "Anny (embedded)",
                                                  "gender": "neutral", "iterations": 10,
                                                  "temporal_smoothing": 1.0, "images": ["1", 0]}},
        "5": {"class_type": "ShapeAlign", "inputs": {"driving_body": ["4", 0], "reference_body": ["4", 0],
                                                    "placement": "view transfer", "transfer_expression": True}},
        "6": {"class_type": "RenderGuidance", "inputs": {"body": ["5", 0], "skeleton_style": "MimicMotion"}},
        "7": {"class_type": "PreviewImage", "inputs": {"images": ["6", 2]}},
        "8": {"class_type": "SavePoseKeypoint", "inputs": {"pose_keypoint": ["3", 0], "filename_prefix": "old"}},
    }
    report = run_on_2024(comfy_2024, tmp_path, prompt, reference)
    assert set(OUR_NODES) <= set(report["nodes"])
    assert report["ok"], report["error"]
    assert report["outputs"]["2"]["marionette_people"] == [1, 1]
    assert report["outputs"]["7"]["images"]


def test_animation_nodes_run_on_the_2024_host(tmp_path, synthetic):
    """SVD Animation Loader (tiny StableAnimator) -> HJB Face Refine -> SVD Animate Sampler on the old host:
    its ModelPatcher / load_models_gpu / progress API and inference mode with the refinement's gradients."""
    comfy_2024 = need_env("MARIONETTE_COMFY_2024")
    reference = write_png(str(tmp_path / REFERENCE_FILE), synthetic["reference"].frames[0])
    prompt = {
        "1": {"class_type": "LoadReference", "inputs": {"image": REFERENCE_FILE, "size": "custom", "fit": "crop",
                                                        "width": 192, "height": 256}},
        "2": pose_node(["1", 0], draw_style="StableAnimator"),
        "3": {"class_type": "PoseAlign", "inputs": {"reference_pose": ["2", 0], "driving_pose": ["2", 0],
                                                   "draw_style": "StableAnimator"}},
        "4": {"class_type": "SVDAnimationLoader", "inputs": {
            "svd_folder": "tiny random (no download, testing only)", "animation": "StableAnimator",
            "checkpoint": "Animation/unet.pth", "dtype": "auto"}},
        "5": {"class_type": "HJBFaceRefine", "inputs": {
            "face_model": "tiny random (testing only)", "reference_image": ["1", 0], "reference_face_mask": ["1", 2],
            "start_step": 0, "end_step": 20, "iterations": 1, "learning_rate": 0.1, "decode_chunk": 4,
            "gradient_checkpointing": True, "target_pose": ["3", 0]}},
        "6": {"class_type": "SVDAnimateSampler", "inputs": {
            "model": ["4", 0], "reference_image": ["1", 0], "pose_images": ["3", 1], "steps": 2, "cfg_min": 3.0,
            "cfg_max": 3.0, "fps": 7, "motion_bucket_id": 127, "noise_aug_strength": 0.02, "tile_size": 16,
            "tile_overlap": 4, "seed": 1, "decode_chunk": 4, "face_refine": ["5", 0]}},
        "7": {"class_type": "PreviewImage", "inputs": {"images": ["6", 0]}},
    }
    report = run_on_2024(comfy_2024, tmp_path, prompt, reference)
    assert report["ok"], report["error"]
    info = report["outputs"]["6"]["marionette_svd"][0]
    assert info["model"] == "stableanimator" and info["face_refine"]["steps_refined"] == 2
    assert report["outputs"]["7"]["images"]
