"""Every shipped workflow, converted offline to an API prompt, runs in the real in-process host."""
import glob
import json
import os

import numpy as np
import pytest
from harness import ROOT
from harness.media import read_video
from harness.migrate_workflows import migrate
from harness.workflow import TINY_MODELS, add_missing_widgets, override, to_api


def shipped_prompt(host, name):
    with open(ROOT / "workflows" / name) as f:
        return to_api(json.load(f), host.nodes.NODE_CLASS_MAPPINGS)


def run_workflow(host, name, overrides=None):
    """Runs a shipped workflow on the tiny test models (widget `overrides` by class type); returns the
    result and a map class_type → node ids."""
    prompt = override(shipped_prompt(host, name), TINY_MODELS, overrides or {})
    result = host.run(prompt)
    assert result.success, result.error
    ids = {}
    for node_id, node in prompt.items():
        ids.setdefault(node["class_type"], []).append(node_id)
    return result, ids


def newest(host, pattern):
    files = sorted(glob.glob(os.path.join(host.output_dir, "marionette", pattern)), key=os.path.getmtime)
    assert files, pattern
    return files[-1]


def test_every_workflow_has_a_run_test():
    shipped = {os.path.basename(p) for p in glob.glob(str(ROOT / "workflows" / "*.json"))}
    assert shipped == {"pose_extraction.json", "champ_guidance.json", "vividpose_guidance.json", "mimicmotion.json",
                       "stableanimator.json", "stableanimator_hjb.json", "dispose.json", "champ.json",
                       "animate_anyone.json", "vividpose.json"}  # vividpose.json: test_workflow_vividpose.py


def test_pose_extraction_workflow_runs_and_writes_its_outputs(comfy_host, synthetic_media):
    run_workflow(comfy_host, "pose_extraction.json")
    frames = synthetic_media["driving"].num_frames
    for name in ("skeleton", "overlay", "driving_skeleton"):
        assert read_video(newest(comfy_host, f"{name}_*.mp4")).shape[0] == frames, name
    skeleton = read_video(newest(comfy_host, "skeleton_*.mp4"))
    assert skeleton.shape[1:3] == (768, 512) and skeleton.max() > 100  # drawn at the reference size
    with open(newest(comfy_host, "aligned_pose_*.json")) as f:
        poses = json.load(f)
    assert len(poses) == frames and all(len(p["people"]) == 1 for p in poses)
    assert glob.glob(os.path.join(comfy_host.output_dir, "marionette", "person_mask_*.png"))


def test_champ_guidance_workflow_renders_every_map(comfy_host, synthetic_media):
    result, ids = run_workflow(comfy_host, "champ_guidance.json")
    frames = synthetic_media["driving"].num_frames
    for name in ("depth", "normal", "semantic", "skeleton", "mask"):
        video = read_video(newest(comfy_host, f"champ_{name}_*.mp4"))
        assert video.shape[:3] == (frames, 768, 512), name
        assert video.max() > 100, name
    render = ids["RenderGuidance"][0]
    depth, normal, semantic, dense, skeleton, mask = (result.output(render, i) for i in range(6))
    assert tuple(semantic.shape) == (frames, 768, 512, 3) and tuple(mask.shape) == (frames, 768, 512)
    body = mask > 0.5
    assert 0.02 < float(body.float().mean()) < 0.6
    assert float(depth[~body].abs().max()) == 0.0 and float(normal[~body].abs().max()) == 0.0
    from marionette.models.render.palette import SEMANTIC_PALETTE
    colours = {tuple(c) for c in np.unique((semantic[body] * 255).round().int().numpy(), axis=0)}
    assert colours <= {tuple(int(v) for v in c) for c in SEMANTIC_PALETTE}


def test_vividpose_guidance_workflow_runs_on_smplx_files(comfy_host, synthetic_media):
    import folder_paths
    from smplx_fixture import small_vertex_ids, write_fixture
    folder = os.path.join(folder_paths.models_dir, "smplx")
    write_fixture(folder)  # a small file with SMPL-X's structure stands in for the licensed one
    try:
        with small_vertex_ids():
            run_workflow(comfy_host, "vividpose_guidance.json")
    finally:
        os.remove(os.path.join(folder, "SMPLX_NEUTRAL.npz"))
    frames = synthetic_media["driving"].num_frames
    for name in ("dense", "skeleton"):
        assert read_video(newest(comfy_host, f"vividpose_{name}_*.mp4")).shape[:3] == (frames, 768, 512), name


@pytest.mark.parametrize("gender", ["female"])  # neutral may be cached from the fixture run above
def test_missing_smplx_file_names_file_folder_and_licence(comfy_host, gender):
    prompt = {"1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
              "2": {"class_type": "DWPoseExtract", "inputs": {
                  "images": ["1", 0], "backend": "blazepose", "detect_body": True, "detect_hands": True,
                  "detect_face": True, "draw_style": "mimicmotion", "bbox_detector": "yolox_l.onnx",
                  "pose_estimator": "dw-ll_ucoco_384.onnx"}},
              "3": {"class_type": "SMPLXFit", "inputs": {"pose_keypoint": ["2", 0], "body_model": "smplx",
                                                        "gender": gender, "iterations": 10,
                                                        "temporal_smoothing": 1.0}},
              "4": {"class_type": "RenderGuidance", "inputs": {"body": ["3", 0], "skeleton_style": "mimicmotion"}},
              "5": {"class_type": "PreviewImage", "inputs": {"images": ["4", 0]}}}
    result = comfy_host.run(prompt)
    assert not result.success
    message = result.error["exception_message"]
    assert f"SMPLX_{gender.upper()}.npz" in message and "models/smplx" in message.replace("\\", "/")
    assert "licence" in message


def test_mimicmotion_workflow_makes_a_video_with_the_tiny_model(comfy_host, synthetic_media):
    """The shipped graph end to end on the untrained tiny model (2 steps to stay fast)."""
    result, ids = run_workflow(comfy_host, "mimicmotion.json", {"SVDAnimateSampler": {"steps": 2}})
    frames = synthetic_media["driving"].num_frames
    video = read_video(newest(comfy_host, "mimicmotion_*.mp4"))
    assert video.shape[:3] == (frames, 768, 512)
    sampler = ids["SVDAnimateSampler"][0]
    info = result.ui[sampler]["marionette_svd"][0]
    assert info["tiny"] and "untrained" in info["warning"]
    assert tuple(result.output(sampler, 1)["samples"].shape) == (frames, 4, 96, 64)


@pytest.fixture
def antelopev2(comfy_host):
    """A fake antelopev2 pack (tests/insightface_fixture.py) where IDAdapterApply looks for it."""
    import shutil

    import folder_paths
    from insightface_fixture import write_antelopev2
    folder = write_antelopev2(os.path.join(folder_paths.models_dir, "insightface"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


# the StableAnimator graphs at a smaller size and 2 steps to stay fast (the shipped sizes are the official
# ones); the fake antelopev2 detector finds no face in the synthetic render, so the official zero embedding
SMALL_STABLEANIMATOR = {"LoadReference": {"size": "custom", "width": 192, "height": 256},
                        "SVDAnimateSampler": {"steps": 2}, "HJBFaceRefine": {"iterations": 1},
                        "IDAdapterApply": {"no_face": "zeros"}}


@pytest.mark.parametrize("name,size", [("stableanimator.json", "576x1024"), ("stableanimator_hjb.json", "512x512")])
def test_stableanimator_workflows_make_a_video_with_the_tiny_models(comfy_host, synthetic_media, antelopev2,
                                                                    name, size):
    shipped = shipped_prompt(comfy_host, name)
    by_type = {node["class_type"]: node["inputs"] for node in shipped.values()}
    assert by_type["LoadReference"]["size"] == size
    assert by_type["SVDAnimateSampler"]["cfg_min"] == 3.0 and by_type["SVDAnimateSampler"]["seed"] == 23123134
    result, ids = run_workflow(comfy_host, name, SMALL_STABLEANIMATOR)
    frames = synthetic_media["driving"].num_frames
    video = read_video(newest(comfy_host, f"{name[:-5]}_*.mp4"))
    assert video.shape[:3] == (frames, 256, 192)
    info = result.ui[ids["SVDAnimateSampler"][0]]["marionette_svd"][0]
    assert info["model"] == "stableanimator" and info["face_id"] and info["tiny"]
    assert ("face_refine" in info) == name.endswith("_hjb.json")
    if "face_refine" in info:
        assert info["face_refine"]["steps_refined"] == 2


def test_dispose_workflow_makes_a_video_with_the_tiny_models(comfy_host, synthetic_media):
    small = {"LoadReference": {"size": "custom", "width": 192, "height": 256}, "SVDAnimateSampler": {"steps": 2},
             "KeypointCorrespondence": {"ensemble": 2}}
    result, ids = run_workflow(comfy_host, "dispose.json", small)
    frames = synthetic_media["driving"].num_frames
    assert read_video(newest(comfy_host, "dispose_*.mp4")).shape[:3] == (frames, 256, 192)
    info = result.ui[ids["SVDAnimateSampler"][0]]["marionette_svd"][0]
    assert info["model"] == "mimicmotion" and info["tiny"]
    assert info["dispose"] == {"motion": "fallback", "strength": 1.0, "keypoints": True}


@pytest.mark.parametrize("name,sampler,size", [("champ.json", "ChampSampler", (256, 256)),
                                               ("animate_anyone.json", "AnimateAnyoneSampler", (256, 192))])
def test_sd15_refnet_workflows_make_a_video_with_the_tiny_models(comfy_host, synthetic_media, name, sampler, size):
    """Champ (body fit x2 -> shape align -> guidance maps -> Champ Sampler) and Animate Anyone (pose align ->
    Animate Anyone Sampler) end to end on the tiny models, smaller and with 2 steps; shipped at the official
    sizes, steps and CFG."""
    shipped = {node["class_type"]: node["inputs"] for node in shipped_prompt(comfy_host, name).values()}
    official_steps = 20 if name == "champ.json" else 30
    assert (shipped[sampler]["steps"], shipped[sampler]["cfg"], shipped[sampler]["beta_schedule"]) == \
        (official_steps, 3.5, "linear")
    assert shipped["SD15AnimationLoader"]["denoising_unet"].endswith("/denoising_unet.pth")
    small = {"LoadReference": {"size": "custom", "width": size[1], "height": size[0]}, sampler: {"steps": 2}}
    result, ids = run_workflow(comfy_host, name, small)
    frames = synthetic_media["driving"].num_frames
    assert read_video(newest(comfy_host, f"{name[:-5]}_*.mp4")).shape[:3] == (frames, *size)
    info = result.ui[ids[sampler][0]]["marionette_sd15"][0]
    assert info["tiny"] and info["frames"] == frames
    if name == "champ.json":
        assert info["guidance"] == ["depth", "dwpose", "normal", "semantic_map"] and "note" not in info


SHIPPED = sorted(os.path.basename(p) for p in glob.glob(str(ROOT / "workflows" / "*.json")))
EXAMPLE_INPUTS = ROOT / "workflows" / "inputs"


def _combo_inputs(node_class):
    spec = node_class.INPUT_TYPES()
    inputs = {**spec.get("required", {}), **spec.get("optional", {})}
    return {name: s[0] for name, s in inputs.items() if isinstance(s[0], list)}


def test_tiny_models_are_choices_only_for_tests_and_the_demo(comfy_host, monkeypatch):
    for enabled in (False, True):
        if enabled:
            monkeypatch.setenv("MARIONETTE_TEST_MODELS", "1")
        else:
            monkeypatch.delenv("MARIONETTE_TEST_MODELS", raising=False)
        for class_type, table in TINY_MODELS.items():
            choices = _combo_inputs(comfy_host.node_class(class_type))
            for name, tiny in table.items():
                if "tiny" in tiny:
                    assert (tiny in choices[name]) == enabled, (class_type, name, enabled)
                    assert not any("tiny" in c for c in choices[name]) or enabled


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_workflow_names_real_files_and_validates_as_a_user_opens_it(comfy_host, monkeypatch, name):
    """A user's ComfyUI (no test models): every combo value is one the node offers now (no tiny model, no
    value an earlier version saved), and the prompt passes ComfyUI's validation with the example inputs."""
    monkeypatch.delenv("MARIONETTE_TEST_MODELS", raising=False)
    with open(ROOT / "workflows" / name) as f:
        ui = json.load(f)
    classes = comfy_host.nodes.NODE_CLASS_MAPPINGS
    outdated = add_missing_widgets(ui, classes) + migrate(ui, classes)
    assert outdated == [], f"run .ci/sync_workflows.py: {outdated}"  # else the frontend's prompt differs
    prompt = shipped_prompt(comfy_host, name)
    for node_id, node in prompt.items():
        for input_name, choices in _combo_inputs(comfy_host.node_class(node["class_type"])).items():
            value = node["inputs"].get(input_name)
            if value is not None and not isinstance(value, list):
                assert value in choices, (name, node["class_type"], input_name, value)
    valid, error, _, node_errors = comfy_host.loop.run_until_complete(
        comfy_host.execution.validate_prompt("shipped-" + name, prompt, None))
    assert valid, (error, node_errors)


def test_a_generative_workflow_as_shipped_names_the_missing_weights(comfy_host, monkeypatch):
    monkeypatch.delenv("MARIONETTE_TEST_MODELS", raising=False)
    result = comfy_host.run(shipped_prompt(comfy_host, "mimicmotion.json"))
    assert not result.success
    message = result.error["exception_message"].replace("\\", "/")
    assert "MimicMotion_1-1.pth" in message and "models/animation" in message and "tencent/MimicMotion" in message


def _example_inputs_module():
    import importlib.util
    spec = importlib.util.spec_from_file_location("marionette_example_inputs", ROOT / "nodes" / "example_inputs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_inputs_ship_small_and_are_what_the_workflows_open(comfy_host):
    shipped = {p.name: p.stat().st_size for p in EXAMPLE_INPUTS.iterdir()}
    assert set(shipped) == {"marionette_reference.png", "marionette_driving.mp4"}
    assert sum(shipped.values()) < 1_000_000
    opened = set()
    for name in SHIPPED:
        for node in shipped_prompt(comfy_host, name).values():
            if node["class_type"] in ("LoadReference", "LoadVideo"):
                opened.add(node["inputs"].get("image", node["inputs"].get("file")))
    assert opened == set(shipped)
    clip = read_video(str(EXAMPLE_INPUTS / "marionette_driving.mp4"))
    assert clip.shape == (24, 512, 512, 3)
    # the pack put them into the host's input folder when it was imported
    assert all(os.path.isfile(os.path.join(comfy_host.input_dir, f)) for f in shipped)


def test_example_inputs_are_copied_where_missing_and_never_replace_a_users_file(tmp_path):
    module = _example_inputs_module()
    users = tmp_path / "input" / "marionette_reference.png"
    users.parent.mkdir()
    users.write_bytes(b"the user's own picture")
    assert module.install_example_inputs(str(users.parent)) == ["marionette_driving.mp4"]
    assert users.read_bytes() == b"the user's own picture"
    copied = tmp_path / "input" / "marionette_driving.mp4"
    assert copied.read_bytes() == (EXAMPLE_INPUTS / "marionette_driving.mp4").read_bytes()
    assert module.install_example_inputs(str(users.parent)) == []
    assert sorted(os.listdir(users.parent)) == ["marionette_driving.mp4", "marionette_reference.png"]
    fresh = tmp_path / "new" / "input"  # a folder that does not exist yet is made
    assert module.install_example_inputs(str(fresh)) == ["marionette_driving.mp4", "marionette_reference.png"]


def _demo_module():
    import importlib.util
    spec = importlib.util.spec_from_file_location("marionette_demo", ROOT / ".ci" / "demo.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_demo_runs_the_shipped_graphs_where_a_users_comfyui_has_the_weights(comfy_host, tmp_path):
    """Without weights the demo stands the tiny models in and names the files and folders of the user's
    ComfyUI; with `--comfyui` pointing at a ComfyUI that has them, it runs the graph as shipped."""
    import copy

    import folder_paths
    demo = _demo_module()
    jobs, wanted = demo.plan(comfy_host)
    kinds = {name: kind for name, _, kind in jobs}
    assert kinds["pose_extraction.json"] == kinds["champ_guidance.json"] == "real"
    assert kinds["mimicmotion.json"] == kinds["dispose.json"] == "tiny"
    assert kinds["vividpose.json"] == "real"  # its small model ships with the pack
    assert "vividpose_guidance.json" not in kinds  # it needs the licensed SMPL-X files
    assert ("mimicmotion.json", "animation", "MimicMotion_1-1.pth") in wanted
    assert ("stableanimator_hjb.json", "animation", os.path.join("Animation", "pose_net.pth")) in wanted
    user = tmp_path / "ComfyUI"
    (user / "models" / "diffusers" / "stable-video-diffusion-img2vid-xt").mkdir(parents=True)
    (user / "models" / "animation").mkdir()
    (user / "models" / "animation" / "MimicMotion_1-1.pth").write_bytes(b"weights")
    saved = copy.deepcopy(folder_paths.folder_names_and_paths)
    try:
        assert demo.use_users_comfyui(str(user)) == str(user / "models")
        kinds = {name: kind for name, _, kind in demo.plan(comfy_host)[0]}
        assert kinds["mimicmotion.json"] == "weights" and kinds["dispose.json"] == "tiny"
    finally:
        folder_paths.folder_names_and_paths.clear()
        folder_paths.folder_names_and_paths.update(saved)
        folder_paths.filename_list_cache.clear()
    with pytest.raises(SystemExit, match="no models/ folder"):
        demo.use_users_comfyui(str(tmp_path / "elsewhere"))
