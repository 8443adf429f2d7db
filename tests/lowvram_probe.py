"""A partial (low-VRAM) load of the tiny StableAnimator model with the 'meta' device standing in for the
GPU: weights ComfyUI leaves in RAM meet 'meta' inputs, and `SameDevice` refuses every torch function that
mixes devices, so anything neither loaded nor cast on use fails the run.

Imported by the host tests (ComfyUI 0.3.75 in their process), and run as a script for the 2024 host,
which cannot share a process with it:

    python tests/lowvram_probe.py COMFY_DIR [--plain]     # prints one JSON line
"""
from __future__ import annotations

import json
import os
import sys
import types

import torch
from torch.overrides import TorchFunctionMode

BUDGET = 0.4  # of the model's size


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


def run_on_meta(net) -> None:
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


def partial_load_on_meta(net, lowvram, castable: bool = True) -> dict:
    """Loads `net` for 'meta' with a budget of BUDGET x its size through the host's ModelPatcher (2024:
    patch_model_lowvram; 0.3.x: patch_model), places the leftovers, runs it; returns what happened."""
    import comfy.model_patcher
    swapped = lowvram.make_castable(net) if castable else 0
    meta = torch.device("meta")
    patcher = comfy.model_patcher.ModelPatcher(net, load_device=meta, offload_device=torch.device("cpu"))
    budget = int(patcher.model_size() * BUDGET)
    if hasattr(patcher, "patch_model_lowvram"):
        patcher.patch_model_lowvram(device_to=meta, lowvram_model_memory=budget)
    else:
        patcher.patch_model(device_to=meta, lowvram_model_memory=budget)
    parameters = list(net.parameters())
    report = {"swapped": swapped, "parameters": len(parameters),
              "left_in_ram": sum(p.device.type == "cpu" for p in parameters),
              "cast_on_use": sum(lowvram.is_cast_on_use(m) for m in net.modules()),
              "off_device_before": lowvram.off_device_tensors(net, meta),
              "moved_bytes": lowvram.place_leftovers(net, meta) if castable else 0,
              "size_bytes": patcher.model_size()}
    report["off_device_after"] = lowvram.off_device_tensors(net, meta)
    try:
        run_on_meta(net)
        report["run"] = "ok"
    except RuntimeError as error:
        report["run"] = str(error)
    return report


def main(comfy_dir: str, plain: bool) -> dict:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sys.path.insert(0, comfy_dir)
    import comfy.options  # noqa: F401  (argument parsing stays off)
    from comfy.cli_args import args
    args.cpu = True
    for name, path in (("marionette", root), ("marionette.nodes", os.path.join(root, "nodes"))):
        package = types.ModuleType(name)  # bare packages: no pack __init__ (it needs a running host)
        package.__path__ = [path]
        sys.modules[name] = package
    from marionette.models.pipelines.svd_animation import SVDAnimation
    from marionette.models.pipelines.svd_tiny import tiny_animation_model
    from marionette.nodes import lowvram
    net = SVDAnimation(tiny_animation_model("stableanimator"), "stableanimator", tiny=True)
    return partial_load_on_meta(net, lowvram, castable=not plain)


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], "--plain" in sys.argv[2:])))
