"""The demo: the shipped workflows run headless in a real ComfyUI on the example inputs they ship with.

    bash .ci/demo [OUTPUT_FOLDER] [--comfyui PATH_TO_YOUR_COMFYUI]

Pose extraction, Champ's guidance maps and VividPose (on the small model the pack ships, trained here on
synthetic people at 96x128) need no downloads and run as shipped: their videos are the real thing. The
other generative graphs (Champ, MimicMotion, StableAnimator with HJB, DisPose, Animate Anyone) run as
shipped when their weights are found (in your ComfyUI's model folders, given with --comfyui); otherwise
on untrained tiny models, small and with 2 steps, which proves the graphs run end to end but not the look.
ComfyUI's own log goes to OUTPUT_FOLDER/comfyui.log; the terminal shows the demo's lines only.
"""
import argparse
import json
import os
import resource
import shutil
import sys
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
import harness  # noqa: E402,F401  (registers the `marionette` library alias)
from harness.workflow import TINY_MODELS, override, to_api  # noqa: E402

NO_DOWNLOAD = ("pose_extraction.json", "champ_guidance.json")
SMPLX_GRAPHS = ("vividpose_guidance.json",)  # run when SMPLX_NEUTRAL is in models/smplx
SHIPPED_MODEL = "vividpose.json"  # its model ships with the pack: always run as shipped
# without their weights, the generative graphs run the tiny models at a small size with few steps
SMALL = {"size": "custom", "width": 192, "height": 256}
# (in this order: the executor keeps a node's output only while the next graph has that node too, so
# champ.json follows champ_guidance.json and reuses its body fit of the driving clip, as vividpose.json
# then does)
TINY_SETTINGS = {
    "champ.json": {"LoadReference": {"size": "custom", "width": 256, "height": 256}, "ChampSampler": {"steps": 2}},
    SHIPPED_MODEL: {},
    "mimicmotion.json": {"LoadReference": SMALL, "SVDAnimateSampler": {"steps": 2}},
    "stableanimator_hjb.json": {"LoadReference": SMALL, "SVDAnimateSampler": {"steps": 2},
                                "HJBFaceRefine": {"iterations": 1, "end_step": 0}},
    "dispose.json": {"LoadReference": SMALL, "SVDAnimateSampler": {"steps": 2},
                     "KeypointCorrespondence": {"ensemble": 2}},
    "animate_anyone.json": {"LoadReference": SMALL, "AnimateAnyoneSampler": {"steps": 2}},
}
# (node, input) -> the model folder its file is looked up in (ComfyUI/models/<folder>)
WEIGHT_INPUTS = {("SVDAnimationLoader", "svd_folder"): "diffusers", ("SVDAnimationLoader", "checkpoint"): "animation",
                 ("IDAdapterApply", "face_encoder"): "animation", ("HJBFaceRefine", "face_model"): "animation",
                 ("DisPoseControlNetLoader", "controlnet"): "dispose", ("DenseMotionField", "cmp_model"): "dispose",
                 ("KeypointCorrespondence", "sd15"): "checkpoints",
                 ("SD15AnimationLoader", "denoising_unet"): "animation",
                 ("SD15AnimationLoader", "image_encoder"): "diffusers", ("SD15AnimationLoader", "vae"): "diffusers",
                 ("VividPoseLoader", "checkpoint"): "animation", ("VividPoseLoader", "svd_folder"): "diffusers"}
# a diffusers folder can also be one file in another folder (ComfyUI's single-file checkpoints)
SINGLE_FILE_FOLDERS = {("SVDAnimationLoader", "svd_folder"): "checkpoints",
                       ("SD15AnimationLoader", "image_encoder"): "clip_vision", ("SD15AnimationLoader", "vae"): "vae"}
# insightface's antelopev2 pack: without it ID Adapter Apply is bypassed (its model input passed straight
# on, as the UI's bypass does) and StableAnimator runs with zero face tokens
NEEDS_ANTELOPEV2 = "IDAdapterApply"


class Terminal:
    """The demo's own lines go to the terminal; everything else written to stdout/stderr (ComfyUI's
    import warnings, progress bars, native libraries' logs) goes to the log file."""

    def __init__(self, log_path: str):
        self.out = os.fdopen(os.dup(1), "w", buffering=1)
        self.log_path = log_path
        self.log = open(log_path, "w", buffering=1)
        sys.stdout.flush(), sys.stderr.flush()
        os.dup2(self.log.fileno(), 1)
        os.dup2(self.log.fileno(), 2)

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)


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


def use_users_comfyui(comfy_dir: str) -> str:
    """Adds the model folders of the user's ComfyUI (and its extra_model_paths.yaml) to the demo's host."""
    import folder_paths
    models = os.path.join(os.path.abspath(comfy_dir), "models")
    if not os.path.isdir(models):
        raise SystemExit(f"--comfyui {comfy_dir}: there is no models/ folder in it. Give your ComfyUI folder "
                         "(the one with main.py and models/).")
    for name, (dirs, _) in list(folder_paths.folder_names_and_paths.items()):
        default = next((d for d in dirs if d.startswith(folder_paths.models_dir + os.sep)), None)
        if default:
            sub = os.path.relpath(default, folder_paths.models_dir)
            folder_paths.add_model_folder_path(name, os.path.join(models, sub))
    extra = os.path.join(os.path.abspath(comfy_dir), "extra_model_paths.yaml")
    if os.path.isfile(extra):
        from utils.extra_config import load_extra_path_config
        load_extra_path_config(extra)
    return models


def weight_found(folder: str, name: str, single_file_folder: str | None = None) -> bool:
    import folder_paths
    if folder == "diffusers":
        if any(os.path.isdir(os.path.join(root, name)) for root in folder_paths.get_folder_paths("diffusers")):
            return True
        if single_file_folder is None:
            return False
        folder = single_file_folder
    path = folder_paths.get_full_path(folder, name)
    return bool(path and os.path.isfile(path))


def missing_weights(prompt: dict) -> list[tuple[str, str]]:
    """(model folder, file) for every weight file the shipped graph names and that is not found."""
    wanted = []
    for node in prompt.values():
        kind, inputs = node["class_type"], node["inputs"]
        for (class_type, input_name), folder in WEIGHT_INPUTS.items():
            if kind == class_type and isinstance(inputs.get(input_name), str):
                if kind != "DenseMotionField" or inputs.get("method") == "cmp":
                    wanted.append((folder, inputs[input_name], SINGLE_FILE_FOLDERS.get((kind, input_name))))
        if kind == "SVDAnimationLoader" and inputs.get("animation") == "stableanimator":
            wanted.append(("animation", os.path.join(os.path.dirname(inputs["checkpoint"]), "pose_net.pth"), None))
    missing = sorted({(folder, name) for folder, name, single in wanted if not weight_found(folder, name, single)})
    if any(node["class_type"] == NEEDS_ANTELOPEV2 for node in prompt.values()) and not antelopev2_present():
        missing.append(("insightface", os.path.join("models", "antelopev2", "")))
    return missing


class Runner:
    """One executor for all the graphs, so nodes they share with the same inputs (the example inputs'
    poses) run once."""

    def __init__(self, host):
        self.host = host
        self.executor = host.execution.PromptExecutor(host.server, cache_type=host.execution.CacheType.CLASSIC,
                                                      cache_args={"lru": 0, "ram": 0})

    def run(self, prompt: dict):
        """(error message or None, ui outputs by node id)."""
        pid = str(uuid.uuid4())
        loop = self.host.loop
        valid, error, outputs, node_errors = loop.run_until_complete(
            self.host.execution.validate_prompt(pid, prompt, None))
        if not valid:
            return f"{error.get('message')}: {error.get('details')} {node_errors}", {}
        self.executor.success = True
        loop.run_until_complete(self.executor.execute_async(prompt, pid, {}, outputs))
        failure = next((data for kind, data in self.executor.status_messages if kind == "execution_error"), None)
        message = None if failure is None else f"{failure['node_type']}: {failure['exception_message']}"
        return message, dict(self.executor.history_result.get("outputs", {}))


def graph_notes(ui: dict) -> list[str]:
    notes = []
    for info in (i for node in ui.values() for i in node.get("marionette_svd", [])):
        if info.get("face_refine"):
            refine = info["face_refine"]
            losses = (f"{refine['loss_first']:.3f}" if refine["steps_refined"] == 1 else
                      f"{refine['loss_first']:.3f} -> {refine['loss_last']:.3f}")
            notes.append(f"HJB face refinement at {refine['steps_refined']} step(s), identity loss {losses}")
    return notes


def plan(host):
    """[(workflow, prompt, kind)] with kind 'real', 'weights' (the user's weights) or 'tiny'; and the
    weights the tiny graphs stand in for."""
    import folder_paths
    classes = host.nodes.NODE_CLASS_MAPPINGS
    jobs, wanted = [], []
    smplx = any(folder_paths.get_full_path("smplx", f"SMPLX_NEUTRAL{ext}") for ext in (".npz", ".pkl"))
    for name in NO_DOWNLOAD + (SMPLX_GRAPHS[:1] if smplx else ()):
        jobs.append((name, load(name, classes), "real"))
    for name, settings in TINY_SETTINGS.items():
        if name in SMPLX_GRAPHS and not smplx:
            continue
        prompt = load(name, classes)
        if name == SHIPPED_MODEL:
            jobs.append((name, prompt, "real"))
            continue
        missing = missing_weights(prompt)
        if missing:
            override(prompt, TINY_MODELS, settings)
            wanted += [(name, folder, file) for folder, file in missing]
        jobs.append((name, prompt, "tiny" if missing else "weights"))
    return jobs, wanted


def load(name: str, classes: dict) -> dict:
    with open(os.path.join(ROOT, "workflows", name)) as f:
        return to_api(json.load(f), classes)


def antelopev2_present() -> bool:
    import folder_paths
    return any(os.path.isfile(os.path.join(root, "models", "antelopev2", "glintr100.onnx"))
               for root in folder_paths.get_folder_paths("insightface"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", nargs="?", default="demo_output")
    parser.add_argument("--comfyui", default=os.environ.get("COMFYUI_DIR"),
                        help="your ComfyUI folder: its model folders are searched for the real weights")
    args = parser.parse_args()
    if args.comfyui and not os.path.isdir(os.path.join(args.comfyui, "models")):
        parser.error(f"--comfyui {args.comfyui}: there is no models/ folder in it; give your ComfyUI folder "
                     "(the one with main.py and models/)")
    out_dir = os.path.abspath(args.out_dir)
    shutil.rmtree(os.path.join(out_dir, "marionette"), ignore_errors=True)  # only this run's outputs
    os.makedirs(out_dir, exist_ok=True)
    term = Terminal(os.path.join(out_dir, "comfyui.log"))
    try:
        return run_demo(term, args, out_dir)
    except Exception as e:  # noqa: BLE001 - the terminal shows it; the traceback is in the log
        import traceback
        traceback.print_exc()
        term.say(f"FAILED: {type(e).__name__}: {e} (traceback in {term.log_path})")
        return 1


def run_demo(term: Terminal, args, out_dir: str) -> int:
    t0 = time.time()
    os.environ["MARIONETTE_TEST_MODELS"] = "1"  # the tiny models stand in where weights are missing
    term.say(f"Marionette demo: starting ComfyUI 0.3.75 headless (its log: {term.log_path})…")
    from harness.comfy_host import ComfyHost
    host = ComfyHost.get()
    user_models = use_users_comfyui(args.comfyui) if args.comfyui else None
    runner = Runner(host)
    jobs, wanted = plan(host)
    term.say("inputs: workflows/inputs/ (a reference photo and a 24-frame driving clip rendered from the Anny "
             "body model), which the pack copied into ComfyUI's input folder, as it does in yours")
    failed = 0
    for i, (name, prompt, kind) in enumerate(jobs, 1):
        what = {"real": "", "weights": " with your weights (slow on a CPU)",
                "tiny": " on untrained tiny models, small, 2 steps (weights missing)"}[kind]
        term.say(f"[{i}/{len(jobs)}] workflows/{name}{what}…")
        if not antelopev2_present() and bypass(prompt, NEEDS_ANTELOPEV2):
            term.say("   (no insightface antelopev2 pack in models/insightface/models/antelopev2: ID Adapter Apply "
                     "is bypassed, zero face tokens)")
        t = time.time()
        error, ui = runner.run(prompt)
        if error:
            failed += 1
            term.say(f"   FAILED: {error}")
            continue
        for note in graph_notes(ui):
            term.say(f"   {note}")
        term.say(f"   done in {time.time() - t:.0f} s")
    shutil.copytree(host.output_dir, out_dir, dirs_exist_ok=True)
    for name in os.listdir(host.input_dir):  # the example inputs, for comparison
        if name.startswith("marionette_"):
            shutil.copy(os.path.join(host.input_dir, name), os.path.join(out_dir, "input_" + name))
    report(term, out_dir, jobs, wanted, user_models)
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
    term.say(f"done in {time.time() - t0:.0f} s, peak memory {peak_gb:.1f} GB" +
             (f"; {failed} workflow(s) failed (see above and {term.log_path})" if failed else ""))
    return 1 if failed else 0


def report(term: Terminal, out_dir: str, jobs, wanted, user_models) -> None:
    term.say(f"\noutputs in {out_dir}:")
    kinds = {name[:-5]: kind for name, _, kind in jobs}
    outputs = sorted(os.listdir(os.path.join(out_dir, "marionette"))) if os.path.isdir(
        os.path.join(out_dir, "marionette")) else []
    tiny = sorted({k for k, v in kinds.items() if v == "tiny"})
    for file in outputs:
        # a graph's own video is <workflow>_<counter>: champ_00001_.mp4 is champ.json's, champ_depth_... is not
        made_by_tiny = any(file.startswith(k + "_") and file[len(k) + 1:len(k) + 2].isdigit() for k in tiny)
        small = file.startswith(SHIPPED_MODEL[:-5] + "_0")
        term.say(f"   marionette/{file}" + ("   (tiny untrained model: proves the graph, not the look)"
                                           if made_by_tiny else "   (the small VividPose trained here: weak, "
                                           "see models/vividpose/weights/TRAINING.md)" if small else ""))
    term.say("   input_marionette_*   the example inputs")
    if not wanted:
        return
    where = user_models or "ComfyUI/models"
    term.say("\nTo animate for real, put the weights the workflows name into your ComfyUI "
             f"({'found: ' + where if user_models else 'the models/ folder next to its main.py'}):")
    for folder, file in sorted({(f, n) for _, f, n in wanted}):
        term.say(f"   {os.path.join(where, folder, file)}")
    term.say("Where to get each file: README.md, 'Model files'. Then open workflows/<name>.json in your ComfyUI "
             "(its example inputs are copied into ComfyUI/input when the pack loads), or rerun:\n"
             "   bash .ci/demo --comfyui /path/to/your/ComfyUI")


if __name__ == "__main__":
    sys.exit(main())
