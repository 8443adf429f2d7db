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


# The shipped workflows name the real model files; tests and the demo swap in the untrained tiny models
# (combo choices only with MARIONETTE_TEST_MODELS=1, see nodes/tiny_models.py) and DisPose's download-free
# motion-field fallback.
TINY_MODELS = {
    "SVDAnimationLoader": {"svd_folder": "tiny random (no download, testing only)"},
    "IDAdapterApply": {"face_encoder": "tiny random (testing only)"},
    "HJBFaceRefine": {"face_model": "tiny random (testing only)"},
    "DisPoseControlNetLoader": {"controlnet": "tiny random (no download, testing only)"},
    "KeypointCorrespondence": {"sd15": "tiny random SD1.5 (no download, testing only)"},
    "DenseMotionField": {"method": "fallback"},
    "SD15AnimationLoader": {"denoising_unet": "tiny random (no download, testing only)"},
    "VividPoseLoader": {"checkpoint": "tiny random VividPose (no download, testing only)"},
}


def override(prompt: dict, *overrides: dict) -> dict:
    """Sets widget values by class type ({class_type: {input: value}}, later overrides win), in place."""
    for node in prompt.values():
        for table in overrides:
            node["inputs"].update(table.get(node["class_type"], {}))
    return prompt


def add_missing_widgets(ui: dict, node_classes: dict) -> list[str]:
    """Gives a UI workflow's nodes the widget inputs added since it was saved, at their defaults, in place
    (as the frontend does when it opens the workflow; without them our prompt and the frontend's differ).
    Returns what was added; harness.migrate_workflows updates the values of earlier versions."""
    added = []
    for node in ui["nodes"]:
        kind, values = node["type"], node.get("widgets_values")
        if kind not in node_classes or not isinstance(values, list):
            continue
        input_types, i = node_classes[kind].INPUT_TYPES(), 0
        for name, spec in _widget_inputs(input_types):
            opts = spec[1] if len(spec) > 1 else {}
            if i >= len(values):  # an input added after the workflow was saved
                default = opts.get("default", spec[0][0] if isinstance(spec[0], list) else None)
                values.append(default)
                input_type = "COMBO" if isinstance(spec[0], list) else spec[0]
                entry = {"localized_name": name, "name": name, "type": input_type, "widget": {"name": name},
                         "link": None}
                if name in input_types.get("optional", {}):
                    entry["shape"] = 7  # the frontend's mark of an optional input
                node.setdefault("inputs", []).append(entry)
                added.append(f"{kind}.{name} = {default!r}")
            i += 1
            if _has_control(name, spec) and i < len(values) and values[i] in CONTROL_VALUES:
                i += 1
            if _has_upload(spec) and i < len(values) and values[i] in ("image", "video", "audio"):
                i += 1
    return added
