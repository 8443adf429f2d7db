"""Lets PyPI's torchvision 0.28.0 (a CUDA build, the only one for torch 2.13) import next to a CPU torch.

Its C++ ops never load (they link libtorch_cuda), and two `register_fake` decorators in
`_meta_registrations.py` then fail at import. We put them behind the `_has_ops()` test that
torchvision already uses for its `register_meta` calls. Pure-Python torchvision keeps working;
ComfyUI core needs only that. Idempotent.
"""
import importlib.util
import pathlib

root = pathlib.Path(importlib.util.find_spec("torchvision").submodule_search_locations[0])
path = root / "_meta_registrations.py"
text = path.read_text()
marker = "# marionette: guarded for CPU torch"
if marker not in text:
    anchor = "import torchvision.extension  # noqa: F401\n"
    assert anchor in text, f"unexpected layout of {path}"
    guard = (f"\n{marker}\ndef _fake_if_ops(name):\n"
             "    return torch.library.register_fake(name) if torchvision.extension._has_ops() else (lambda fn: fn)\n\n")
    text = text.replace(anchor, anchor + guard, 1)
    text = text.replace('@torch.library.register_fake("torchvision::', '@_fake_if_ops("torchvision::')
    path.write_text(text)
