"""Rewrites combo values and socket type names that earlier versions saved to the current ones in
UI-format workflows.

    cd tests && python -m harness.migrate_workflows [--check] [WORKFLOW.json ...]   (default: workflows/*.json)

The map is the one the nodes and the web extension use: each combo input's LEGACY_OPTION
(nodes/combos.py), read from the node classes of a real in-process ComfyUI; our sockets' types
(MARIONETTE_*, nodes/socket_types.py) are taken from the node definitions, on the slots and their links,
as the web extension does. Only those values change; each file is re-read right before it is written and keeps its JSON layout, so the script can
be re-run at any time. --check changes nothing and exits 1 when a file still holds an old value.
"""
from __future__ import annotations

import glob
import json
import sys

from . import ROOT
from .workflow import CONTROL_VALUES, _has_control, _has_upload, _widget_inputs

LEGACY_OPTION = "marionette_legacy_values"  # nodes/combos.py LEGACY_OPTION
OWN_TYPE = "MARIONETTE_"  # prefix of our socket types (nodes/socket_types.py)


def legacy_maps(input_types: dict) -> dict[str, dict[str, str]]:
    """input name → {old value: key} for the combo inputs that have one."""
    maps = {}
    for name, spec in _widget_inputs(input_types):
        legacy = spec[1].get(LEGACY_OPTION) if len(spec) > 1 else None
        if legacy:
            maps[name] = legacy
    return maps


def widget_positions(values: list, input_types: dict) -> dict[str, int]:
    """input name → index in a node's widgets_values, walked as the frontend lays them out."""
    positions, i = {}, 0
    for name, spec in _widget_inputs(input_types):
        if i >= len(values):
            break
        positions[name] = i
        i += 1
        if _has_control(name, spec) and i < len(values) and values[i] in CONTROL_VALUES:
            i += 1
        if _has_upload(spec) and i < len(values) and values[i] in ("image", "video", "audio"):
            i += 1
    return positions


def _own_type(kind) -> bool:
    return isinstance(kind, str) and kind.startswith(OWN_TYPE)


def migrate_types(ui: dict, node_classes: dict) -> list[tuple]:
    """Gives our sockets (and their links) the type of the current definition; returns the changes."""
    changes, links = [], {link[0]: link for link in ui.get("links", [])}

    def retype(node, slot, kind, link_ids):
        if slot.get("type") != kind:
            changes.append((node["id"], node["type"], slot.get("name"), slot.get("type"), kind))
            slot["type"] = kind
        for link_id in link_ids:
            if link_id in links and links[link_id][5] != kind:
                links[link_id][5] = kind

    for node in ui.get("nodes", []):
        cls = node_classes.get(node.get("type"))
        if cls is None:
            continue
        specs = {**cls.INPUT_TYPES().get("required", {}), **cls.INPUT_TYPES().get("optional", {})}
        for slot in node.get("inputs", []):
            kind = specs.get(slot.get("name"), (None,))[0]
            if _own_type(kind):
                retype(node, slot, kind, [slot["link"]] if slot.get("link") is not None else [])
        for slot, kind in zip(node.get("outputs", []), cls.RETURN_TYPES):
            if _own_type(kind):
                retype(node, slot, kind, slot.get("links") or [])
    return changes


def migrate(ui: dict, node_classes: dict) -> list[tuple]:
    """Replaces old combo values and socket types in place; returns (node id, type, input, old, new) for
    each change."""
    changes = migrate_types(ui, node_classes)
    for node in ui.get("nodes", []):
        cls = node_classes.get(node.get("type"))
        values = node.get("widgets_values")
        if cls is None or not values:
            continue
        input_types = cls.INPUT_TYPES()
        maps = legacy_maps(input_types)
        if not maps:
            continue
        if isinstance(values, dict):
            slots = {name: name for name in values}
        else:
            slots = widget_positions(values, input_types)
        for name, slot in slots.items():
            old = values[slot]
            if name in maps and isinstance(old, str) and old in maps[name]:
                values[slot] = maps[name][old]
                changes.append((node["id"], node["type"], name, old, values[slot]))
    return changes


def _dump_like(data, original: str) -> str:
    """JSON in the original file's indentation and final newline."""
    parsed = json.loads(original)
    for indent in (1, 2, 4, None):
        text = json.dumps(parsed, indent=indent, ensure_ascii=False)
        if original.rstrip("\n") == text:
            break
    else:
        indent = 1
    return json.dumps(data, indent=indent, ensure_ascii=False) + ("\n" if original.endswith("\n") else "")


def migrate_file(path: str, node_classes: dict, write: bool = True) -> list[tuple]:
    with open(path, encoding="utf-8") as f:
        original = f.read()
    ui = json.loads(original)
    changes = migrate(ui, node_classes)
    if changes and write:
        with open(path, encoding="utf-8") as f:  # re-read: other edits may have landed meanwhile
            current = f.read()
        if current != original:
            ui = json.loads(current)
            changes = migrate(ui, node_classes)
            original = current
        with open(path, "w", encoding="utf-8") as f:
            f.write(_dump_like(ui, original))
    return changes


def main(argv: list[str]) -> int:
    check = "--check" in argv
    paths = [a for a in argv if a != "--check"] or sorted(glob.glob(str(ROOT / "workflows" / "*.json")))
    from .comfy_host import ComfyHost
    classes = ComfyHost.get().nodes.NODE_CLASS_MAPPINGS
    stale = False
    for path in paths:
        for node_id, kind, name, old, new in migrate_file(path, classes, write=not check):
            stale = True
            print(f"{path}: node {node_id} {kind}.{name}: {old!r} -> {new!r}")
    return 1 if check and stale else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
