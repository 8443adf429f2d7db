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
import os
import weakref
from contextlib import contextmanager

import pytest
import torch
from torch.overrides import TorchFunctionMode

from smplx_fixture import small_vertex_ids, write_fixture
from test_host_svd import animate_prompt
from test_host_svd_hjb import FRAMES as FRAMES_HJB, hjb_prompt

TINY_FACE = "tiny random (testing only)"


def pack_module(comfy_host, name):
    """A module of the pack as the host loaded it (one copy of its caches)."""
    package = comfy_host.node_class("SVDAnimationLoader").__module__.rsplit(".", 2)[0]
    return importlib.import_module(f"{package}.{name}")


class SameDevice(TorchFunctionMode):
    """Refuses any torch function whose (non-scalar) tensor arguments sit on different devices."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        devices = set()

        def visit(value):
            if isinstance(value, torch.Tensor) and value.dim() > 0:
                devices.add(value.device.type)
            elif isinstance(value, (list, tuple)):
                for item in value:
                    visit(item)

        for value in list(args) + list(kwargs.values()):
            visit(value)
        if len(devices) > 1 and getattr(func, "__name__", "") not in ("to", "copy_"):
            raise RuntimeError(f"{getattr(func, '__name__', func)} mixes devices {sorted(devices)}")
        return func(*args, **kwargs)


def tiny_svd(comfy_host, animation="stableanimator"):
    base = pack_module(comfy_host, "models.pipelines.svd_tiny").tiny_animation_model(animation)
    return pack_module(comfy_host, "models.pipelines.svd_animation").SVDAnimation(base, animation, tiny=True)


def run_on_meta(net):
    """The UNet, the VAE decoder, the CLIP image encoder and the PoseNet on 'meta' inputs."""
    config = net.unet.config
    frames = 4
    with SameDevice(), torch.no_grad():
        sample = torch.randn(1, frames, config.in_channels, 8, 8, device="meta")
        context = torch.randn(1, 5, config.cross_attention_dim, device="meta")
        net.unet(sample, torch.tensor(1.0, device="meta"), context,
                 added_time_ids=torch.randn(1, 3, device="meta"), return_dict=False)
        net.vae.decode(torch.randn(frames, 4, 8, 8, device="meta"), num_frames=frames)
        net.image_encoder(torch.randn(1, 3, 224, 224, device="meta"))
        net.pose_net(torch.randn(frames, 3, 64, 64, device="meta"))


def test_a_partial_load_leaves_nothing_on_the_wrong_device(comfy_host):
    import comfy.model_patcher
    lowvram = pack_module(comfy_host, "nodes.lowvram")
    net = tiny_svd(comfy_host)
    assert lowvram.make_castable(net) > 300
    meta = torch.device("meta")
    patcher = comfy.model_patcher.ModelPatcher(net, load_device=meta, offload_device=torch.device("cpu"))
    patcher.patch_model(device_to=meta, lowvram_model_memory=int(patcher.model_size() * 0.4))
    on_cpu = [p for p in net.parameters() if p.device.type == "cpu"]
    assert 0 < len(on_cpu) < len(list(net.parameters()))  # a real partial load
    left = lowvram.off_device_tensors(net, meta)
    assert "pose_net.scale" in left and any(name.endswith("mix_factor") for name in left)  # what ComfyUI skips
    moved = lowvram.place_leftovers(net, meta)
    assert lowvram.off_device_tensors(net, meta) == []
    assert moved < 0.05 * patcher.model_size()  # leftovers and anchors only, not the offloaded weights
    run_on_meta(net)


def test_plain_torch_layers_fail_the_same_check(comfy_host):
    """Why make_castable is needed: ComfyUI 0.3.x leaves plain layers that do not fit on the CPU, uncast."""
    import comfy.model_patcher
    lowvram = pack_module(comfy_host, "nodes.lowvram")
    net = tiny_svd(comfy_host)
    meta = torch.device("meta")
    patcher = comfy.model_patcher.ModelPatcher(net, load_device=meta, offload_device=torch.device("cpu"))
    patcher.patch_model(device_to=meta, lowvram_model_memory=int(patcher.model_size() * 0.4))
    left = lowvram.off_device_tensors(net, meta)  # plain layers left on the CPU, and nothing casts them
    assert any(name.endswith("to_q.weight") for name in left)
    with pytest.raises(RuntimeError, match="mixes devices"):
        run_on_meta(net)


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


@pytest.mark.parametrize("case", ["MimicMotion", "StableAnimator", "StableAnimator + HJB"])
def test_low_vram_sampling_gives_the_full_load_frames(comfy_host, synthetic_media, case):
    """HJB: gradients flow through the cast-on-use VAE decoder and R100 layers."""
    import comfy.model_management as mm
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
    folder = tmp_path / "smplx"
    path = write_fixture(folder, seed=0)
    folder_paths.add_model_folder_path("smplx", str(folder))
    folders = folder_paths.folder_names_and_paths["smplx"][0]
    folders.insert(0, folders.pop(folders.index(str(folder))))  # ours first, before any real files
    try:
        with small_vertex_ids():
            first = body.load_model("smplx", "neutral")
            assert body.load_model("smplx", "neutral") is first
            write_fixture(folder, seed=1)  # a new file under the same name
            os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 10**9))
            second = body.load_model("smplx", "neutral")
        assert second is not first
        assert not torch.equal(first.model.shapedirs, second.model.shapedirs)
        gone = weakref.ref(second)
        del first, second
        mm.unload_all_models()
        gc.collect()
        assert gone() is None
    finally:
        folders.remove(str(folder))


def test_loader_fingerprint_follows_the_files(comfy_host, tmp_path):
    import folder_paths
    loader = comfy_host.node_class("SVDAnimationLoader")
    folder = tmp_path / "animation"
    folder.mkdir()
    folder_paths.add_model_folder_path("animation", str(folder))
    try:
        checkpoint = folder / "unet_test.pth"
        checkpoint.write_bytes(b"one")
        before = loader.IS_CHANGED(svd_folder="some_svd", checkpoint="unet_test.pth")
        assert "unet_test.pth" in before
        assert loader.IS_CHANGED(svd_folder="some_svd", checkpoint="unet_test.pth") == before
        checkpoint.write_bytes(b"other")
        os.utime(checkpoint, ns=(os.stat(checkpoint).st_atime_ns, os.stat(checkpoint).st_mtime_ns + 10**9))
        assert loader.IS_CHANGED(svd_folder="some_svd", checkpoint="unet_test.pth") != before
    finally:
        folder_paths.folder_names_and_paths["animation"][0].remove(str(folder))
