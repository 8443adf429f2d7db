"""Tier 2, memory: our models under ComfyUI's model management in the real host (CPU).

- Low VRAM: ComfyUI may load a model partially; the layers left in RAM must be cast on use and nothing
  else may stay behind. Checked with the 'meta' device standing in for the GPU (weights left on the CPU
  meet 'meta' inputs, and a torch-function mode refuses every op that mixes devices), and end to end:
  SVD Animate Sampler with load_models_gpu forced into a partial load gives the full load's frames.
- Caches: keyed by file (path, modification time, size), a replaced file is read again, and ComfyUI's
  unload_all_models ("Unload models", /free) empties them so the memory is given back.
"""
import gc
import importlib
import json
import os
import subprocess
import sys
import weakref
from contextlib import contextmanager

import pytest
import torch

from conftest import need_env
from lowvram_probe import partial_load_on_meta
from smplx_fixture import small_vertex_ids, write_fixture
from test_host_dispose import dispose_prompt
from test_host_svd import animate_prompt
from test_host_svd_hjb import FRAMES as FRAMES_HJB, hjb_prompt

TINY_FACE = "tiny random (testing only)"


def pack_module(comfy_host, name):
    """A module of the pack as the host loaded it (one copy of its caches)."""
    package = comfy_host.node_class("SVDAnimationLoader").__module__.rsplit(".", 2)[0]
    return importlib.import_module(f"{package}.{name}")


def tiny_svd(comfy_host, animation="stableanimator"):
    base = pack_module(comfy_host, "models.pipelines.svd_tiny").tiny_animation_model(animation)
    return pack_module(comfy_host, "models.pipelines.svd_animation").SVDAnimation(base, animation, tiny=True)


def check_partial_load(report):
    assert report["swapped"] > 300 and report["cast_on_use"] > 100
    assert 0 < report["left_in_ram"] < report["parameters"]  # a real partial load
    left = report["off_device_before"]
    assert "pose_net.scale" in left and any(name.endswith("mix_factor") for name in left)  # what ComfyUI skips
    assert report["off_device_after"] == []
    assert report["moved_bytes"] < 0.05 * report["size_bytes"]  # leftovers and anchors, not offloaded weights
    assert report["run"] == "ok"


def test_a_partial_load_leaves_nothing_on_the_wrong_device(comfy_host):
    lowvram = pack_module(comfy_host, "nodes.lowvram")
    check_partial_load(partial_load_on_meta(tiny_svd(comfy_host), lowvram))


def test_plain_torch_layers_fail_the_same_check(comfy_host):
    """Why make_castable is needed: ComfyUI 0.3.x leaves plain layers that do not fit on the CPU, uncast."""
    lowvram = pack_module(comfy_host, "nodes.lowvram")
    report = partial_load_on_meta(tiny_svd(comfy_host), lowvram, castable=False)
    assert any(name.endswith("to_q.weight") for name in report["off_device_before"])
    assert "mixes devices" in report["run"]


def run_probe_2024(*flags):
    comfy_2024 = need_env("MARIONETTE_COMFY_2024")
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    run = subprocess.run([sys.executable, "lowvram_probe.py", comfy_2024, *flags], cwd=tests_dir,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_a_partial_load_on_the_2024_host():
    """The 2024 host's patch_model_lowvram casts comfy.ops layers too; our leftovers are placed the same way."""
    check_partial_load(run_probe_2024())


@contextmanager
def forced_low_vram(budget_bytes):
    """load_models_gpu as on a GPU with `budget_bytes` free for weights: ComfyUI then loads partially."""
    import comfy.model_management as mm
    original = mm.load_models_gpu
    saved = mm.is_device_cpu, mm.vram_state, mm.get_free_memory

    def load_models_gpu(*args, **kwargs):
        mm.is_device_cpu = lambda device: False
        mm.vram_state = mm.VRAMState.NORMAL_VRAM
        mm.get_free_memory = lambda dev=None, torch_free_too=False: mm.minimum_inference_memory() + budget_bytes
        try:
            return original(*args, **kwargs)
        finally:
            mm.is_device_cpu, mm.vram_state, mm.get_free_memory = saved

    mm.load_models_gpu = load_models_gpu
    try:
        yield
    finally:
        mm.load_models_gpu = original


def svd_loaded_model():
    import comfy.model_management as mm
    for loaded in mm.current_loaded_models:
        if type(loaded.model.model).__name__ == "SVDAnimation":
            return loaded
    return None


@pytest.mark.parametrize("case", ["MimicMotion", "StableAnimator", "StableAnimator + HJB", "DisPose"])
def test_low_vram_sampling_gives_the_full_load_frames(comfy_host, synthetic_media, case):
    """HJB: gradients flow through the cast-on-use VAE decoder and R100 layers. DisPose: SD1.5 (DIFT) partially
    loaded too, and the ControlNet with the UNet."""
    import comfy.model_management as mm
    if case == "DisPose":
        prompt = dispose_prompt(synthetic_media)
    else:
        prompt = hjb_prompt(synthetic_media) if "HJB" in case else animate_prompt(synthetic_media, case)
    if "HJB" in case:  # the pose's face masks cut to the sampled frames (as in test_host_svd_hjb)
        prompt["20"] = {"class_type": "MaskToImage", "inputs": {"mask": ["13", 1]}}
        prompt["21"] = {"class_type": "ImageFromBatch", "inputs": {"image": ["20", 0], "batch_index": 0,
                                                                  "length": FRAMES_HJB}}
        prompt["22"] = {"class_type": "ImageToMask", "inputs": {"image": ["21", 0], "channel": "red"}}
        prompt["23"] = dict(prompt["13"], inputs=dict(prompt["13"]["inputs"], target_face_masks=["22", 0]))
        prompt["11"]["inputs"]["face_refine"] = ["23", 0]
    mm.unload_all_models()
    full = comfy_host.run(prompt)
    assert full.success, full.error
    assert not svd_loaded_model().model.model.model_lowvram
    mm.unload_all_models()
    with forced_low_vram(budget_bytes=3 * 1024 * 1024):  # the tiny model is ~8 MB in fp32
        low = comfy_host.run(prompt)
    assert low.success, low.error
    loaded = svd_loaded_model()
    net = loaded.model.model
    assert net.model_lowvram
    assert 0 < net.model_loaded_weight_memory < loaded.model.model_size()
    cast = [m for m in net.modules() if getattr(m, "comfy_cast_weights", False)]
    assert len(cast) > 50
    if "HJB" in case:
        assert low.ui["11"]["marionette_svd"][0]["face_refine"]["steps_refined"] == 2
    if case == "DisPose":
        assert torch.equal(full.output("15", 0).embeddings, low.output("15", 0).embeddings)
        partial = {type(entry.model.model).__name__ for entry in mm.current_loaded_models
                   if entry.model.model.model_lowvram}
        assert {"SD15Modules", "SVDAnimation"} <= partial  # the tiny ControlNet fits the budget whole
    assert torch.equal(full.output("11", 0), low.output("11", 0))
    assert torch.equal(full.output("11", 1)["samples"], low.output("11", 1)["samples"])
    mm.unload_all_models()


# ------------------------------------------------------------------------------------------- caches
def test_a_replaced_file_is_reloaded_and_unload_frees_the_cache(comfy_host, tmp_path):
    import comfy.model_management as mm
    cache = pack_module(comfy_host, "nodes.model_cache")
    path = tmp_path / "weights.pt"
    torch.save({"weight": torch.ones(3)}, path)

    def build():
        module = torch.nn.Linear(3, 1, bias=False)
        module.weight.data.copy_(torch.load(path, weights_only=True)["weight"])
        return module

    first = cache.cached("test", cache.file_key(path), build)
    assert cache.cached("test", cache.file_key(path), build) is first  # same file: held
    mm.load_models_gpu([first])
    assert any(loaded.model is first for loaded in mm.current_loaded_models)
    gone = weakref.ref(first.model)
    torch.save({"weight": torch.full((3,), 2.0)}, path)
    os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 10**9))
    second = cache.cached("test", cache.file_key(path), build)
    assert second is not first and float(second.model.weight.detach().sum()) == 6.0
    assert not any(loaded.model is first for loaded in mm.current_loaded_models)  # released first
    del first
    gc.collect()
    assert gone() is None
    kept = weakref.ref(second.model)
    del second
    mm.unload_all_models()  # what ComfyUI's "Unload models" / POST /free calls
    gc.collect()
    assert cache.held_key("test") is None and kept() is None


def test_node_models_are_released_by_unload(comfy_host):
    import comfy.model_management as mm
    cache = pack_module(comfy_host, "nodes.model_cache")
    face_refine = pack_module(comfy_host, "nodes.face_refine")
    patcher = face_refine._face_model(TINY_FACE)
    assert cache.held_key("r100") == (TINY_FACE,)
    assert face_refine._face_model(TINY_FACE) is patcher
    gone = weakref.ref(patcher.model)
    del patcher
    mm.unload_all_models()
    gc.collect()
    assert cache.held_key("r100") is None and gone() is None


def test_a_replaced_smplx_file_is_picked_up_and_unload_drops_it(comfy_host, tmp_path):
    import comfy.model_management as mm
    import folder_paths
    body = pack_module(comfy_host, "nodes.body")
    fit = comfy_host.node_class("SMPLXFit")
    folder = tmp_path / "smplx"
    path = write_fixture(folder, seed=0)
    folder_paths.add_model_folder_path("smplx", str(folder))
    folders = folder_paths.folder_names_and_paths["smplx"][0]
    folders.insert(0, folders.pop(folders.index(str(folder))))  # ours first, before any real files
    try:
        with small_vertex_ids():
            first = body.load_model("smplx", "neutral")
            before = fit.IS_CHANGED(body_model="smplx", gender="neutral")
            assert "SMPLX_NEUTRAL" in before and fit.IS_CHANGED(body_model="anny") == ""
            assert body.load_model("smplx", "neutral") is first
            write_fixture(folder, seed=1)  # a new file under the same name
            os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 10**9))
            fingerprint = fit.IS_CHANGED(body_model="smplx", gender="neutral")
            second = body.load_model("smplx", "neutral")
        assert second is not first and fingerprint != before
        assert not torch.equal(first.model.shapedirs, second.model.shapedirs)
        gone = weakref.ref(second)
        del first, second
        mm.unload_all_models()
        gc.collect()
        assert gone() is None
    finally:
        folders.remove(str(folder))


@pytest.mark.parametrize("node, folder, inputs", [
    ("SVDAnimationLoader", "animation", {"svd_folder": "some_svd", "checkpoint": "test_weights.pth"}),
    ("DisPoseControlNetLoader", "dispose", {"controlnet": "test_weights.pth"}),
    ("DenseMotionField", "dispose", {"cmp_model": "test_weights.pth"}),
    ("KeypointCorrespondence", "checkpoints", {"sd15": "test_weights.pth"}),
    ("HJBFaceRefine", "animation", {"face_model": "test_weights.pth"}),
    ("IDAdapterApply", "animation", {"face_encoder": "test_weights.pth"})])
def test_node_fingerprint_follows_the_files(comfy_host, tmp_path, node, folder, inputs):
    """ComfyUI caches node outputs by their inputs; IS_CHANGED makes a file replaced under the same name count."""
    import folder_paths
    loader = comfy_host.node_class(node)
    root = tmp_path / folder
    root.mkdir()
    folder_paths.add_model_folder_path(folder, str(root))
    try:
        weights = root / "test_weights.pth"
        weights.write_bytes(b"one")
        before = loader.IS_CHANGED(**inputs)
        assert "test_weights.pth" in before
        assert loader.IS_CHANGED(**inputs) == before
        weights.write_bytes(b"other")
        os.utime(weights, ns=(os.stat(weights).st_atime_ns, os.stat(weights).st_mtime_ns + 10**9))
        assert loader.IS_CHANGED(**inputs) != before
    finally:
        folder_paths.folder_names_and_paths[folder][0].remove(str(root))
