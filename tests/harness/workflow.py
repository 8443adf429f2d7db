"""UI-format workflow (what ComfyUI saves) → API-format prompt (what /prompt executes).

Widget values are matched to inputs in INPUT_TYPES order, as the frontend does: linked inputs
take no value, seed-like INTs carry one extra "control after generate" value, and upload
widgets may carry one pseudo value.
"""
from __future__ import annotations

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
UI_ONLY = {"Note", "MarkdownNote", "PrimitiveNode"}
CONTROL_VALUES = {"fixed", "increment", "decrement", "randomize"}


def _is_widget(spec) -> bool:
    kind, opts = spec[0], (spec[1] if len(spec) > 1 else {})
    return (isinstance(kind, list) or kind in WIDGET_TYPES) and not opts.get("forceInput")


def _widget_inputs(input_types: dict):
    for section in ("required", "optional"):
        for name, spec in input_types.get(section, {}).items():
            if _is_widget(spec):
                yield name, spec


def _has_control(name: str, spec) -> bool:
    opts = spec[1] if len(spec) > 1 else {}
    return spec[0] in ("INT", "FLOAT") and (opts.get("control_after_generate") or name in ("seed", "noise_seed"))


def _has_upload(spec) -> bool:
    opts = spec[1] if len(spec) > 1 else {}
    return any(opts.get(k) for k in ("image_upload", "video_upload", "audio_upload"))


def to_api(ui: dict, node_classes: dict) -> dict:
    links = {link[0]: link for link in ui.get("links", [])}
    by_id = {n["id"]: n for n in ui["nodes"]}

    def source(link_id):
        _, src, slot, *_ = links[link_id]
        node = by_id[src]
        while node["type"] == "Reroute":  # follow reroutes to the real producer
            _, src, slot, *_ = links[node["inputs"][0]["link"]]
            node = by_id[src]
        return [str(src), slot]

    prompt = {}
    for node in ui["nodes"]:
        kind = node["type"]
        if kind in UI_ONLY or kind == "Reroute" or node.get("mode", 0) in (2, 4):
            continue
        if kind not in node_classes:
            raise KeyError(f"node type {kind!r} is not registered")
        inputs = {}
        linked = {i["name"] for i in node.get("inputs", []) if i.get("link") is not None}
        values = node.get("widgets_values", [])
        if isinstance(values, dict):
            inputs.update({k: v for k, v in values.items() if k not in linked})
        else:
            values = list(values)
            for name, spec in _widget_inputs(node_classes[kind].INPUT_TYPES()):
                if not values:
                    break
                value = values.pop(0)
                if name not in linked:
                    inputs[name] = value
                if _has_control(name, spec) and values and values[0] in CONTROL_VALUES:
                    values.pop(0)
                if _has_upload(spec) and values and values[0] in ("image", "video", "audio"):
                    values.pop(0)
        for i in node.get("inputs", []):
            if i.get("link") is not None:
                inputs[i["name"]] = source(i["link"])
        prompt[str(node["id"])] = {"class_type": kind, "inputs": inputs,
                                   "_meta": {"title": node.get("title", kind)}}
    return prompt
