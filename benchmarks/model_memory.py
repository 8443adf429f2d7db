"""What ComfyUI's low-VRAM mode keeps on the device for the real-size SVD-xt UNet, and what "Unload models"
gives back.

    python benchmarks/model_memory.py [--budgets 0.25 0.5 0.75] [--frames 16 --height 576 --width 1024]

Runs in ComfyUI's model code in this process (MARIONETTE_COMFY; CPU unless CUDA is present).
1. The MimicMotion/SVD-xt UNet at full size in fp16 (uninitialised weights), made castable
   (nodes/lowvram.py), loaded by ComfyUI's ModelPatcher for a weight budget of each fraction of its size.
   Without CUDA the 'meta' device stands in for the GPU: the table gives the MB ComfyUI put on the device,
   the MB left in RAM to be cast on use, and the MB `place_leftovers` added (anchors, uncastable
   parameters, buffers). With CUDA it also runs one UNet call (--frames at --height x --width) per budget
   and at full load, and gives the peak VRAM of each.
2. Process RSS with a full-size ArcFace R100 (random weights) held in the model cache, and after
   ComfyUI's unload_all_models.
"""
import argparse
import ctypes
import gc
import importlib
import os
import sys
import types
import weakref

from memory_runs import rss_mb  # noqa: E402  (benchmarks/ is the script's folder)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
import harness  # noqa: E402,F401  (the `marionette` library alias)

import torch  # noqa: E402

MB = 2 ** 20


def host_modules():
    """ComfyUI's model management and our nodes' memory modules, without running the pack's __init__."""
    from conftest import comfy_model_code
    comfy_model_code()
    if "marionette.nodes" not in sys.modules:
        package = types.ModuleType("marionette.nodes")
        package.__path__ = [os.path.join(ROOT, "nodes")]
        sys.modules["marionette.nodes"] = package
    return tuple(importlib.import_module(f"marionette.nodes.{name}") for name in ("lowvram", "model_cache"))


def full_size_unet():
    from marionette.models.pipelines.svd_models import build_animation_unet
    from marionette.models.svd.configs import svd_xt_unet_config
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float16)  # built in fp16 directly: no 6 GB fp32 copy on the way
    try:
        with torch.device("meta"):
            unet = build_animation_unet(svd_xt_unet_config(), "mimicmotion")
    finally:
        torch.set_default_dtype(default)
    holder = torch.nn.Module()  # ModelPatcher writes `.device`, which diffusers models refuse
    holder.unet = unet.to_empty(device="cpu").eval()
    return holder


def unet_call(unet, device, frames, height, width):
    h, w = height // 8, width // 8
    with torch.no_grad():
        sample = torch.randn(1, frames, 8, h, w, device=device, dtype=torch.float16)
        context = torch.randn(1, 1, 1024, device=device, dtype=torch.float16)
        time_ids = torch.tensor([[6.0, 127.0, 0.0]], device=device, dtype=torch.float16)
        unet(sample, torch.tensor(1.0, device=device), context, time_ids, return_dict=False)


def castable_patcher(lowvram, device):
    import comfy.model_patcher
    holder = full_size_unet()
    lowvram.make_castable(holder)
    return comfy.model_patcher.ModelPatcher(holder, load_device=device, offload_device=torch.device("cpu"))


def low_vram_table(lowvram, budgets, frames, height, width):
    cuda = torch.cuda.is_available()
    device = torch.device("cuda") if cuda else torch.device("meta")
    patcher = castable_patcher(lowvram, device)
    size = patcher.model_size()
    print(f"SVD-xt UNet fp16: {size / MB:.0f} MB; device: {'cuda' if cuda else 'meta (stand-in, no CUDA)'}")
    print(f"{'budget':>8}{'on device MB':>14}{'cast on use MB':>16}{'leftovers MB':>14}"
          + (f"{'peak VRAM MB':>14}" if cuda else ""))
    for fraction in list(budgets) + [None]:
        budget = 0 if fraction is None else int(size * fraction)
        patcher.patch_model(device_to=device, lowvram_model_memory=budget)  # 0 = full load
        holder = patcher.model
        moved = lowvram.place_leftovers(holder, device)
        in_ram = sum(p.numel() * p.element_size() for p in holder.parameters() if p.device.type == "cpu")
        row = f"{'full' if fraction is None else f'{fraction:.0%}':>8}{(size - in_ram) / MB:>14.0f}" \
              f"{in_ram / MB:>16.0f}{moved / MB:>14.1f}"
        if cuda:
            torch.cuda.reset_peak_memory_stats()
            unet_call(holder.unet, device, frames, height, width)
            row += f"{torch.cuda.max_memory_allocated() / MB:>14.0f}"
            patcher.unpatch_model(device_to=torch.device("cpu"))
        else:  # weights moved to 'meta' are gone: start the next budget from a fresh model
            del patcher, holder
            gc.collect()
            patcher = castable_patcher(lowvram, device)
        print(row, flush=True)
    del patcher
    gc.collect()


def unload_figures(cache):
    import comfy.model_management as mm
    gc.collect()
    before = rss_mb()
    patcher = cache.cached("benchmark_r100", ("full-size R100",), full_size_r100)
    mm.load_models_gpu([patcher])
    held = rss_mb()
    size = patcher.model_size() / MB
    model = weakref.ref(patcher.model)
    del patcher
    mm.unload_all_models()
    gc.collect()
    freed = model() is None
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap pages back to the OS, so RSS shows it
    print(f"ArcFace R100 fp32 ({size:.0f} MB): RSS {before:.0f} MB -> {held:.0f} MB held in the model cache "
          f"-> {rss_mb():.0f} MB after unload_all_models (model {'freed' if freed else 'STILL REFERENCED'})")


def full_size_r100():
    """R100 at full size with random weights (filled, so the pages are really in RAM)."""
    from marionette.models.stableanimator.iresnet import IResNet
    with torch.device("meta"):
        model = IResNet()
    model = model.to_empty(device="cpu").eval()
    with torch.no_grad():
        for tensor in list(model.parameters()) + list(model.buffers()):
            tensor.normal_() if tensor.is_floating_point() else tensor.zero_()
    return model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--budgets", type=float, nargs="+", default=[0.25, 0.5, 0.75])
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--height", type=int, default=576)
    ap.add_argument("--width", type=int, default=1024)
    args = ap.parse_args()
    lowvram, cache = host_modules()
    low_vram_table(lowvram, args.budgets, args.frames, args.height, args.width)
    unload_figures(cache)


if __name__ == "__main__":
    main()
