"""Tier 2: the pack inside a real ComfyUI 0.3.75 (custom_nodes discovery, validator, executor)."""
import os

import pytest
import torch
from harness.node_list import pack_node_ids

OUR_NODES = pack_node_ids()  # the keys of our NODE_CLASS_MAPPINGS
EMBEDDED = "embedded (BlazePose)"


def pose_node(images, backend=EMBEDDED, **kw):
    inputs = {"images": images, "backend": backend, "detect_body": True, "detect_hands": True,
              "detect_face": True, "draw_style": "MimicMotion", "bbox_detector": "yolox_l.onnx",
              "pose_estimator": "dw-ll_ucoco_384.onnx"}
    inputs.update(kw)
    return {"class_type": "DWPoseExtract", "inputs": inputs}


def reference_node(image="", **kw):
    inputs = {"image": image, "size": "512x768", "fit": "crop", "width": 512, "height": 768}
    inputs.update(kw)
    return {"class_type": "LoadReference", "inputs": inputs}


def pipeline_prompt(media):
    return {
        "1": reference_node(media["ref_file"]),
        "2": {"class_type": "LoadVideo", "inputs": {"file": media["video_file"]}},
        "3": {"class_type": "GetVideoComponents", "inputs": {"video": ["2", 0]}},
        "4": pose_node(["1", 0]),
        "5": pose_node(["3", 0]),
        "6": {"class_type": "PoseAlign", "inputs": {"reference_pose": ["4", 0], "driving_pose": ["5", 0],
                                                   "draw_style": "MimicMotion", "reference_image": ["1", 0]}},
        "7": {"class_type": "SavePoseKeypoint", "inputs": {"pose_keypoint": ["6", 0],
                                                          "filename_prefix": "test/aligned"}},
        "8": {"class_type": "PreviewImage", "inputs": {"images": ["6", 2]}},
    }


def test_every_node_registers_without_import_failure(comfy_host):
    import nodes
    for name in OUR_NODES:
        cls = nodes.NODE_CLASS_MAPPINGS[name]
        assert cls.RELATIVE_PYTHON_MODULE == "custom_nodes.marionette"
        assert "Marionette" in nodes.NODE_DISPLAY_NAME_MAPPINGS[name]
    assert "marionette" in nodes.LOADED_MODULE_DIRS
    assert nodes.EXTENSION_WEB_DIRS["marionette"].endswith("web")


def test_every_float_input_has_a_step(comfy_host):
    import nodes
    for name in OUR_NODES:
        spec = nodes.NODE_CLASS_MAPPINGS[name].INPUT_TYPES()
        for section in spec.values():
            for inp, (kind, *opts) in section.items():
                if kind == "FLOAT":
                    assert "step" in opts[0], f"{name}.{inp} has no step"


def test_pose_pipeline_runs_through_the_real_executor(comfy_host, synthetic_media):
    result = comfy_host.run(pipeline_prompt(synthetic_media))
    assert result.success, result.error
    image, person, face_mask, face_box = (result.output("1", i) for i in range(4))
    assert tuple(image.shape) == (1, 768, 512, 3) and image.dtype == torch.float32
    assert tuple(person.shape) == (1, 768, 512) and 0.03 < float((person > 0.5).float().mean()) < 0.8
    assert tuple(face_mask.shape) == (1, 768, 512)
    driving = result.output("5", 0)
    assert len(driving) == 8 and all(len(f["people"]) == 1 for f in driving)
    assert driving[0]["canvas_width"] == 384
    aligned, skeleton, overlay = (result.output("6", i) for i in range(3))
    assert len(aligned) == 8 and aligned[0]["canvas_width"] == 512 and aligned[0]["canvas_height"] == 768
    assert tuple(skeleton.shape) == (8, 768, 512, 3) and float(skeleton.max()) > 0.5
    assert tuple(overlay.shape) == (8, 768, 512, 3)
    ui = result.ui
    assert ui["5"]["marionette_people"] == [8, 8]
    assert ui["5"]["images"][0]["filename"].endswith(".webp")
    assert "marionette_fit" in ui["6"]


def test_no_person_gives_empty_people_and_odd_sizes_work(comfy_host):
    prompt = {"1": {"class_type": "EmptyImage", "inputs": {"width": 333, "height": 517, "batch_size": 2,
                                                           "color": 0x808080}},
              "2": pose_node(["1", 0]),
              "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 1]}}}
    result = comfy_host.run(prompt)
    assert result.success, result.error
    poses = result.output("2", 0)
    assert [f["people"] for f in poses] == [[], []]
    assert (poses[0]["canvas_width"], poses[0]["canvas_height"]) == (333, 517)
    assert tuple(result.output("2", 1).shape) == (2, 517, 333, 3)


def test_align_without_a_reference_person_fails_clearly(comfy_host, synthetic_media):
    prompt = pipeline_prompt(synthetic_media)
    prompt["9"] = {"class_type": "EmptyImage", "inputs": {"width": 256, "height": 256, "batch_size": 1, "color": 0}}
    prompt["4"] = pose_node(["9", 0])
    result = comfy_host.run(prompt)
    assert not result.success
    message = result.error["exception_message"]
    assert "reference" in message.lower() and "Fix:" in message


def test_missing_onnx_names_the_file_and_folder(comfy_host):
    prompt = {"1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
              "2": pose_node(["1", 0], backend="DWPose (ONNX)"),
              "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 1]}}}
    result = comfy_host.run(prompt)
    assert not result.success
    message = result.error["exception_message"]
    assert "yolox_l.onnx" in message and "models/dwpose" in message.replace("\\", "/")
    # the host keeps working after the failure
    assert comfy_host.run({"1": prompt["1"], "3": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}}).success


@pytest.mark.parametrize("channels", [1, 4])
def test_grayscale_and_rgba_frames(comfy_host, synthetic_media, channels):
    node = comfy_host.node_class("DWPoseExtract")()
    rgb = torch.from_numpy(synthetic_media["driving"].frames[:2]).float() / 255
    frames = rgb.mean(-1, keepdim=True) if channels == 1 else torch.cat([rgb, torch.ones_like(rgb[..., :1])], -1)
    out = node.extract(frames, EMBEDDED, True, True, True, "OpenPose", "yolox_l.onnx", "dw-ll_ucoco_384.onnx")
    keypoints, skeleton = out["result"]
    assert len(keypoints) == 2 and all(len(f["people"]) == 1 for f in keypoints)
    assert tuple(skeleton.shape) == (2, 384, 384, 3)


def test_empty_batch_is_a_clear_error(comfy_host):
    node = comfy_host.node_class("DWPoseExtract")()
    with pytest.raises(ValueError, match="empty"):
        node.extract(torch.zeros(0, 64, 64, 3), EMBEDDED, True, True, True, "OpenPose",
                     "yolox_l.onnx", "dw-ll_ucoco_384.onnx")


def test_reference_from_image_input_and_missing_image(comfy_host, synthetic_media):
    node = comfy_host.node_class("LoadReference")()
    picture = torch.from_numpy(synthetic_media["reference"].frames[:1]).float() / 255
    image, person, face_mask, box = node.load("", "auto", "pad", 64, 64, reference_image=picture)["result"]
    assert tuple(image.shape) == (1, 1024, 576, 3)
    with pytest.raises(ValueError, match="no image"):
        node.load("", "auto", "crop", 64, 64)


def test_cancel_stops_pose_extraction_mid_clip(comfy_host, synthetic_media):
    """An interrupt (the UI's cancel) raised while frames are processed stops the node cleanly."""
    import comfy.model_management as mm
    seen = []

    def hook(value, total, preview, node_id=None):
        seen.append(value)
        if value == 3:
            mm.interrupt_current_processing(True)

    prompt = {"1": {"class_type": "LoadVideo", "inputs": {"file": synthetic_media["video_file"]}},
              "2": {"class_type": "GetVideoComponents", "inputs": {"video": ["1", 0]}},
              "3": pose_node(["2", 0]),
              "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 1]}}}
    result = comfy_host.run_with_progress_hook(prompt, hook)
    assert not result.success
    assert "execution_interrupted" in [kind for kind, _ in result.messages]
    assert max(seen) == 3 < synthetic_media["driving"].num_frames
    assert comfy_host.run(prompt).success  # the next run is unaffected


def test_dwpose_models_found_where_controlnet_aux_keeps_them(comfy_host, tmp_path):
    """yolox_l.onnx / dw-ll_ucoco_384.onnx in comfyui_controlnet_aux's ckpts folder are used as they are."""
    import shutil

    import folder_paths
    from onnx_fakes import make_dwpose, make_yolox
    aux = os.path.join(folder_paths.get_folder_paths("custom_nodes")[0], "comfyui_controlnet_aux")
    ckpts = os.path.join(aux, "ckpts", "yzd-v", "DWPose")
    os.makedirs(ckpts)
    try:
        make_yolox(os.path.join(ckpts, "yolox_l.onnx"))
        make_dwpose(os.path.join(ckpts, "dw-ll_ucoco_384.onnx"))
        prompt = {"1": {"class_type": "EmptyImage", "inputs": {"width": 320, "height": 240, "batch_size": 2,
                                                               "color": 0x20E020}},
                  "2": pose_node(["1", 0], backend="DWPose (ONNX)"),
                  "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 1]}}}
        result = comfy_host.run(prompt)
        assert result.success, result.error
        poses = result.output("2", 0)
        assert len(poses) == 2 and poses[0]["canvas_width"] == 320
    finally:
        shutil.rmtree(aux)


def test_folder_registration_keeps_paths_from_extra_model_paths(comfy_host, tmp_path):
    """A user's extra_model_paths.yaml registers its folder before us: both must survive."""
    import sys

    import folder_paths
    package = comfy_host.node_class("DWPoseExtract").__module__.rsplit(".", 1)[0]
    model_paths = sys.modules[package + ".model_paths"]
    saved = folder_paths.folder_names_and_paths.pop("dwpose")
    try:
        folder_paths.add_model_folder_path("dwpose", str(tmp_path))  # what the yaml loader does first
        model_paths.register_folders()
        dirs, exts = folder_paths.folder_names_and_paths["dwpose"]
        assert dirs[0] == str(tmp_path) and os.path.join(folder_paths.models_dir, "dwpose") in dirs
        assert ".onnx" in exts
        (tmp_path / "my_pose_model.onnx").write_bytes(b"onnx")
        folder_paths.filename_list_cache.pop("dwpose", None)  # listed earlier in this process
        assert "my_pose_model.onnx" in model_paths.model_choices("dwpose", ("yolox_l.onnx",))
    finally:
        folder_paths.folder_names_and_paths["dwpose"] = saved
