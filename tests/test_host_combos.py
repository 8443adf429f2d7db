"""Tier 2: stable combo keys, the values earlier versions saved still validate and run (ComfyUI 0.3.75
in-process and the 2024 host), our node list, names and categories, and the shipped workflows hold
only current keys."""
import copy
import glob
import importlib
import inspect
import re

import pytest
import torch
from conftest import need_env
from harness import ROOT
from harness.comfy_host import PromptRejected
from harness.media import REFERENCE_FILE, write_png
from harness.migrate_workflows import LEGACY_OPTION, migrate, migrate_file
from test_host import OUR_NODES
from test_host_2024 import run_on_2024

# combos whose values are file or folder names (they stay file names) or sizes ("576x1024")
FILE_INPUTS = {"image", "cmp_model", "controlnet", "sd15", "face_encoder", "face_model", "bbox_detector",
               "pose_estimator", "svd_folder", "checkpoint", "denoising_unet", "image_encoder", "vae"}
KEY = re.compile(r"[a-z0-9_]+|\d+x\d+")


def our_classes(comfy_host):
    return {name: comfy_host.node_class(name) for name in OUR_NODES}


def combos_module(comfy_host):
    package = comfy_host.node_class("DWPoseExtract").__module__.rsplit(".", 1)[0]
    return importlib.import_module(package + ".combos")


def combo_inputs(cls):
    for section in ("required", "optional"):
        for name, spec in cls.INPUT_TYPES().get(section, {}).items():
            if isinstance(spec[0], list):
                yield name, spec[0], (spec[1] if len(spec) > 1 else {})


def test_the_host_registers_exactly_our_node_list(comfy_host):
    ours = {name for name, cls in comfy_host.nodes.NODE_CLASS_MAPPINGS.items()
            if getattr(cls, "RELATIVE_PYTHON_MODULE", "") == "custom_nodes.marionette"}
    assert ours == set(OUR_NODES) and len(OUR_NODES) >= 15


def test_display_names_and_categories_are_unmistakably_ours(comfy_host):
    for name, cls in our_classes(comfy_host).items():
        assert cls.CATEGORY.startswith("Marionette/"), name
        assert comfy_host.nodes.NODE_DISPLAY_NAME_MAPPINGS[name].endswith("(Marionette)"), name


# ComfyUI's own types, and controlnet_aux's POSE_KEYPOINT (shared on purpose: same format)
SHARED_TYPES = {"IMAGE", "MASK", "LATENT", "INT", "FLOAT", "STRING", "BOOLEAN", "POSE_KEYPOINT"}


def test_our_own_socket_types_cannot_collide_with_other_packs(comfy_host):
    kinds = set()
    for cls in our_classes(comfy_host).values():
        kinds.update(cls.RETURN_TYPES)
        for section in ("required", "optional"):
            kinds.update(spec[0] for spec in cls.INPUT_TYPES().get(section, {}).values()
                         if isinstance(spec[0], str))
    own = kinds - SHARED_TYPES
    assert own and all(kind.startswith("MARIONETTE_") for kind in own), sorted(own)


def test_choice_combos_use_stable_keys_explained_in_the_tooltip(comfy_host):
    checked = 0
    for node, cls in our_classes(comfy_host).items():
        validate_args = inspect.getfullargspec(cls.VALIDATE_INPUTS).args if hasattr(cls, "VALIDATE_INPUTS") else []
        for name, values, options in combo_inputs(cls):
            if name in FILE_INPUTS:
                continue
            assert all(KEY.fullmatch(v) for v in values), (node, name, values)
            assert options.get("default", values[0]) in values, (node, name)
            legacy = options.get(LEGACY_OPTION)
            if legacy:
                checked += 1
                assert set(legacy.values()) <= set(values) and not set(legacy) & set(values), (node, name)
                assert all(f"{v}:" in options["tooltip"] for v in values), (node, name)
                # naming the input in VALIDATE_INPUTS is what lets the host accept the old values
                assert name in validate_args, (node, name)
    assert checked >= 10


def test_validate_inputs_names_inputs_only(comfy_host):
    """A **kwargs VALIDATE_INPUTS would switch off the host's min/max checks of every input (0.3.75)."""
    for node, cls in our_classes(comfy_host).items():
        if hasattr(cls, "VALIDATE_INPUTS"):
            assert inspect.getfullargspec(cls.VALIDATE_INPUTS).varkw is None, node


def test_combo_keys_values_and_errors(comfy_host):
    combos = combos_module(comfy_host)
    assert combos.LEGACY_OPTION == LEGACY_OPTION  # the name the workflow script and web extension read
    fit = combos.REFERENCE_FIT
    assert fit.key("crop person") == fit.key("crop_person") == "crop_person"
    assert fit.value("keep aspect") == fit.value("keep_aspect") == "keep aspect"  # the library's name
    assert combos.SHAPE_PLACEMENT.value("view transfer") == "view transfer"
    assert combos.POSE_BACKEND.check(None) is True  # a linked input is validated when it runs
    assert "blazepose, dwpose" in combos.POSE_BACKEND.check("BlazePose", "backend")
    with pytest.raises(ValueError, match="Choose one of: cmp, fallback"):
        combos.MOTION_METHOD.key("CMP")
    with pytest.raises(ValueError, match="not among the options"):
        combos.Combo({"a": "A"}, legacy={"old": "b"})


def pose_prompt(media, backend, draw_style, fit, untrusted_fit):
    return {
        "1": {"class_type": "LoadReference", "inputs": {"image": media["ref_file"], "size": "512x512", "fit": fit,
                                                        "width": 512, "height": 512}},
        "2": {"class_type": "DWPoseExtract", "inputs": {
            "images": ["1", 0], "backend": backend, "detect_body": True, "detect_hands": True, "detect_face": True,
            "draw_style": draw_style, "bbox_detector": "yolox_l.onnx", "pose_estimator": "dw-ll_ucoco_384.onnx"}},
        "3": {"class_type": "PoseAlign", "inputs": {"reference_pose": ["2", 0], "driving_pose": ["2", 0],
                                                   "draw_style": draw_style, "untrusted_fit": untrusted_fit,
                                                   "reference_image": ["1", 0]}},
        "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 1]}},
    }


def test_old_values_validate_and_give_the_same_result_as_the_keys(comfy_host, synthetic_media):
    old = comfy_host.run(pose_prompt(synthetic_media, "embedded (BlazePose)", "StableAnimator", "keep aspect",
                                     "warn only"))
    new = comfy_host.run(pose_prompt(synthetic_media, "blazepose", "stableanimator", "keep_aspect", "warn"))
    assert old.success and new.success, (old.error, new.error)
    for node, slot in (("1", 0), ("2", 1), ("3", 1)):
        assert torch.equal(old.output(node, slot), new.output(node, slot)), (node, slot)
    other = comfy_host.run(pose_prompt(synthetic_media, "blazepose", "openpose", "pad", "warn"))
    # the styles and fits really differ, so equality above is not a coincidence
    assert other.output("1", 0).shape != new.output("1", 0).shape
    mimic = comfy_host.run(pose_prompt(synthetic_media, "blazepose", "mimicmotion", "keep_aspect", "warn"))
    assert not torch.equal(mimic.output("3", 1), new.output("3", 1))


def test_unknown_values_are_refused_with_the_keys(comfy_host, synthetic_media):
    prompt = pose_prompt(synthetic_media, "BlazePose", "stableanimator", "crop", "stop")
    with pytest.raises(PromptRejected) as e:
        comfy_host.run(prompt)
    assert "'BlazePose' is not one of blazepose, dwpose" in str(e.value.node_errors)


def test_min_max_checks_stay_on_for_nodes_with_validate_inputs(comfy_host, synthetic_media):
    prompt = pose_prompt(synthetic_media, "blazepose", "mimicmotion", "crop", "stop")
    prompt["5"] = {"class_type": "SMPLXFit", "inputs": {"pose_keypoint": ["3", 0], "body_model": "Anny (embedded)",
                                                       "gender": "neutral", "iterations": 1, "temporal_smoothing": 1.0}}
    prompt["4"]["inputs"]["images"] = ["5", 1]  # the only output: a failing node fails the prompt
    with pytest.raises(PromptRejected) as e:
        comfy_host.run(prompt)
    assert "value_smaller_than_min" in str(e.value.node_errors)


# every combo with earlier values, at an old value: the host's validator must accept each one
OLD_VALUES = {
    "SMPLXFit": {"body_model": "SMPL-X"},
    "ShapeAlign": {"placement": "driving framing"},
    "RenderGuidance": {"skeleton_style": "OpenPose"},
    "DenseMotionField": {"method": "embedded fallback (keypoint interpolation in the person mask, no download)"},
    "IDAdapterApply": {"no_face": "zeros, as the official code"},
    "SVDAnimationLoader": {"animation": "StableAnimator"},
}


def test_every_old_value_passes_the_hosts_validation(comfy_host):
    import json

    from harness.workflow import to_api
    seen = set()
    for path in sorted(glob.glob(str(ROOT / "workflows" / "*.json"))):
        with open(path) as f:
            prompt = to_api(json.load(f), comfy_host.nodes.NODE_CLASS_MAPPINGS)
        for node in prompt.values():
            node["inputs"].update(OLD_VALUES.get(node["class_type"], {}))
        for node_id, node in prompt.items():
            if node["class_type"] not in OLD_VALUES:
                continue
            seen.add(node["class_type"])
            # (model files of the workflow may be missing here: only our combos' verdicts count)
            errors = comfy_host.loop.run_until_complete(
                comfy_host.execution.validate_inputs("combos", prompt, node_id, {}))[1]
            ours = [e for e in errors if "is not one of" in str(e.get("details"))
                    or e["extra_info"].get("input_name") in OLD_VALUES[node["class_type"]]]
            assert ours == [], (path, node_id, ours)
    assert seen == set(OLD_VALUES)


def test_shipped_workflows_hold_current_keys(comfy_host):
    classes = comfy_host.nodes.NODE_CLASS_MAPPINGS
    for path in sorted(glob.glob(str(ROOT / "workflows" / "*.json"))):
        assert migrate_file(path, classes, write=False) == [], path


def test_the_workflow_script_rewrites_old_values_to_keys(comfy_host):
    import json
    with open(ROOT / "workflows" / "pose_extraction.json") as f:
        current = json.load(f)
    classes = comfy_host.nodes.NODE_CLASS_MAPPINGS
    old = copy.deepcopy(current)
    inverse = {}
    for node in old["nodes"]:
        if node["type"] == "DWPoseExtract":
            # as an earlier version saved it: [backend, body, hands, face, draw_style, bbox, pose]
            node["widgets_values"][0], node["widgets_values"][4] = "DWPose (ONNX)", "OpenPose"
            inverse[node["id"]] = ("dwpose", "openpose")
    assert inverse
    changes = migrate(old, classes)
    assert {(c[0], c[2], c[4]) for c in changes} == {(i, name, key) for i, keys in inverse.items()
                                                    for name, key in zip(("backend", "draw_style"), keys)}
    assert migrate(old, classes) == []  # re-running changes nothing


def test_the_workflow_script_gives_old_socket_types_the_current_names(comfy_host):
    import json
    with open(ROOT / "workflows" / "champ_guidance.json") as f:
        current = json.load(f)
    old = json.loads(json.dumps(current).replace('"MARIONETTE_BODY_SEQUENCE"', '"BODY_SEQUENCE"')
                     .replace('"MARIONETTE_BBOX"', '"BBOX"'))
    assert old != current
    changes = migrate(old, comfy_host.nodes.NODE_CLASS_MAPPINGS)
    assert {c[3] for c in changes} == {"BODY_SEQUENCE", "BBOX"}
    assert old == current  # slots and links alike


def test_old_values_validate_and_run_on_the_2024_host(tmp_path, synthetic):
    comfy_2024 = need_env("MARIONETTE_COMFY_2024")
    reference = write_png(str(tmp_path / REFERENCE_FILE), synthetic["reference"].frames[0])
    media = {"ref_file": REFERENCE_FILE}
    old = pose_prompt(media, "embedded (BlazePose)", "StableAnimator", "keep aspect", "warn only")
    new = {f"1{k}": v for k, v in pose_prompt(media, "blazepose", "stableanimator", "keep_aspect", "warn").items()}
    for node in new.values():
        for name, value in node["inputs"].items():
            if isinstance(value, list):
                node["inputs"][name] = ["1" + value[0], value[1]]
    report = run_on_2024(comfy_2024, tmp_path, {**old, **new}, reference)
    assert report["ok"], report["error"]
    assert report["outputs"]["2"]["marionette_people"] == report["outputs"]["12"]["marionette_people"] == [1, 1]
    refused = run_on_2024(comfy_2024, tmp_path, pose_prompt(media, "BlazePose", "mimicmotion", "crop", "stop"),
                          reference)
    assert not refused["ok"] and "is not one of blazepose, dwpose" in str(refused["error"])
