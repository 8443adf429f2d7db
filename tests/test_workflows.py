"""Every shipped workflow, converted offline to an API prompt, runs in the real in-process host."""
import glob
import json
import os

from harness import ROOT
from harness.media import read_video
from harness.workflow import to_api


def test_pose_extraction_workflow_runs_and_writes_its_outputs(comfy_host, synthetic_media):
    with open(ROOT / "workflows" / "pose_extraction.json") as f:
        prompt = to_api(json.load(f), comfy_host.nodes.NODE_CLASS_MAPPINGS)
    result = comfy_host.run(prompt)
    assert result.success, result.error
    out = os.path.join(comfy_host.output_dir, "marionette")
    frames = synthetic_media["driving"].num_frames
    for name in ("skeleton", "overlay", "driving_skeleton"):
        video = read_video(sorted(glob.glob(os.path.join(out, f"{name}_*.mp4")))[-1])
        assert video.shape[0] == frames, name
    skeleton = read_video(sorted(glob.glob(os.path.join(out, "skeleton_*.mp4")))[-1])
    assert skeleton.shape[1:3] == (768, 512) and skeleton.max() > 100  # drawn at the reference size
    with open(sorted(glob.glob(os.path.join(out, "aligned_pose_*.json")))[-1]) as f:
        poses = json.load(f)
    assert len(poses) == frames and all(len(p["people"]) == 1 for p in poses)
    assert glob.glob(os.path.join(out, "person_mask_*.png"))
