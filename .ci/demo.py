"""The demo: the shipped workflows run headless in a real ComfyUI on synthetic media.

A reference photo and a driving clip are rendered from the Anny body model (different body
shapes) and put into ComfyUI's input folder under the names the workflows use. Each UI workflow
that needs no downloads is converted to an API prompt and executed, and every output lands in the
folder given.
"""
import json
import os
import shutil
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
import harness  # noqa: E402,F401  (registers the `marionette` library alias)
from harness.comfy_host import ComfyHost  # noqa: E402
from harness.media import DRIVING_FILE, REFERENCE_FILE, write_media  # noqa: E402
from harness.workflow import to_api  # noqa: E402


# the workflows that run without downloads (vividpose_guidance.json needs the SMPL-X files); the animation
# graphs run their shipped choice, the untrained tiny models, with few steps: their videos show the graphs
# work, not a person (with the real weights selected in the loaders they are the real thing)
DEMO_WORKFLOWS = {"pose_extraction.json": {}, "champ_guidance.json": {},
                  "mimicmotion.json": {"SVDAnimateSampler": {"steps": 2}},
                  "stableanimator_hjb.json": {"SVDAnimateSampler": {"steps": 2},
                                              "HJBFaceRefine": {"iterations": 1, "end_step": 0}},
                  "dispose.json": {"SVDAnimateSampler": {"steps": 2}}}
# insightface's antelopev2 pack cannot be downloaded here: without it ID Adapter Apply is bypassed (its model
# input passed straight on, as the UI's bypass does) and StableAnimator runs with zero face tokens
NEEDS_ANTELOPEV2 = "IDAdapterApply"


def bypass(prompt: dict, class_type: str) -> list[str]:
    """Remove the nodes of `class_type`, wiring their consumers to the node's first linked input."""
    removed = [node_id for node_id, node in prompt.items() if node["class_type"] == class_type]
    for node_id in removed:
        node = prompt.pop(node_id)
        upstream = next(v for v in node["inputs"].values() if isinstance(v, list))
        for other in prompt.values():
            for name, value in other["inputs"].items():
                if isinstance(value, list) and value[0] == node_id:
                    other["inputs"][name] = upstream
    return removed


def antelopev2_present() -> bool:
    import folder_paths
    return any(os.path.isfile(os.path.join(root, "models", "antelopev2", "glintr100.onnx"))
               for root in folder_paths.get_folder_paths("insightface"))


def main(out_dir: str) -> int:
    from marionette.models.synthetic.clip import render_driving_clip, render_reference
    t0 = time.time()
    print("rendering the synthetic reference photo and driving clip (Anny body model)…", flush=True)
    media = {"reference": render_reference(width=512, height=768, seed=7),
             "driving": render_driving_clip(frames=24, width=512, height=512, seed=3)}
    host = ComfyHost.get()
    write_media(host.input_dir, media)
    for name, overrides in DEMO_WORKFLOWS.items():
        with open(os.path.join(ROOT, "workflows", name)) as f:
            prompt = to_api(json.load(f), host.nodes.NODE_CLASS_MAPPINGS)
        for node in prompt.values():
            node["inputs"].update(overrides.get(node["class_type"], {}))
        if not antelopev2_present() and bypass(prompt, NEEDS_ANTELOPEV2):
            print("NOTE: no insightface antelopev2 pack in models/insightface/models/antelopev2: ID Adapter "
                  "Apply is bypassed (zero face tokens).", flush=True)
        print(f"running workflows/{name} in ComfyUI 0.3.75 ({len(prompt)} nodes)…", flush=True)
        t = time.time()
        result = host.run(prompt)
        if not result.success:
            print(f"{name} failed:", result.error, file=sys.stderr)
            return 1
        for ui in result.ui.values():
            for info in ui.get("marionette_svd", []):
                if info.get("warning"):
                    print("NOTE:", info["warning"], flush=True)
                if info.get("face_refine"):
                    refine = info["face_refine"]
                    losses = (f"{refine['loss_first']:.3f}" if refine["steps_refined"] == 1 else
                              f"{refine['loss_first']:.3f} -> {refine['loss_last']:.3f}")
                    print(f"  HJB face refinement at {refine['steps_refined']} step(s), identity loss {losses} "
                          "(tiny random face model)", flush=True)
        print(f"  done in {time.time() - t:.0f} s", flush=True)
    os.makedirs(out_dir, exist_ok=True)
    shutil.copytree(host.output_dir, out_dir, dirs_exist_ok=True)
    for name in (REFERENCE_FILE, DRIVING_FILE):  # the synthetic inputs, for comparison
        shutil.copy(os.path.join(host.input_dir, name), os.path.join(out_dir, "input_" + name))
    print(f"done in {time.time() - t0:.1f} s; outputs in {os.path.abspath(out_dir)}:")
    for folder, _, files in sorted(os.walk(out_dir)):
        for name in sorted(files):
            print("  ", os.path.relpath(os.path.join(folder, name), out_dir))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "demo_output"))
