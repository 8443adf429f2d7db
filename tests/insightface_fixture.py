"""A fake antelopev2 pack: five tiny ONNX models whose inputs and outputs make insightface route them like the
real ones (SCRFD detector with 5 keypoints, ArcFace recognition, 2d106 / 3d68 landmarks, gender-age).

The detector finds "faces" where the image is bright: every stride-32 cell scores
sigmoid(GAIN * mean(normalised pixels) + BIAS), the finer strides never fire, and boxes are BOX_CELLS
cells wide so NMS merges one bright patch into few boxes. The recognition model is a 1x1 convolution,
ReLU, spatial mean and a random linear map to 512: its raw output is not unit length and depends on the
colour order. Nothing here is trained; it only exercises the real insightface code paths."""
from __future__ import annotations

import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ANTELOPEV2 = {"detector": "scrfd_10g_bnkps.onnx", "recognition": "glintr100.onnx",
              "landmark_2d": "2d106det.onnx", "landmark_3d": "1k3d68.onnx", "genderage": "genderage.onnx"}
STRIDES = (8, 16, 32)
ANCHORS = 2
GAIN, BIAS = 5.0, -2.0
BOX_CELLS = 3.0  # box half-size in cells at the firing stride
KEYPOINTS = np.array([-0.6, -0.5, 0.6, -0.5, 0.0, 0.1, -0.5, 0.7, 0.5, 0.7], np.float32)  # eyes, nose, mouth


def _write(graph, path: str) -> None:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], producer_name="marionette-test")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)


def _detector_head(stride: int, kind: str, width: int, fires: bool):
    """Conv with kernel = stride straight on the image, then NCHW -> (cells * anchors, width)."""
    channels = width * ANCHORS
    weight = np.zeros((channels, 3, stride, stride), np.float32)
    if kind == "score":
        bias = np.full(channels, BIAS if fires else -20.0, np.float32)
        if fires:
            weight[:] = GAIN / (3 * stride * stride)  # GAIN x the cell's mean value
    elif kind == "bbox":
        bias = np.full(channels, BOX_CELLS if fires else 1.0, np.float32)
    else:
        bias = np.tile(KEYPOINTS, ANCHORS)
    name = f"{kind}_{stride}"
    inits = [numpy_helper.from_array(weight, f"{name}_w"), numpy_helper.from_array(bias, f"{name}_b"),
             numpy_helper.from_array(np.array([-1, width], np.int64), f"{name}_shape")]
    raw = f"{name}_raw" if kind == "score" else f"{name}_out"
    nodes = [helper.make_node("Conv", ["input.1", f"{name}_w", f"{name}_b"], [f"{name}_conv"],
                              kernel_shape=[stride, stride], strides=[stride, stride]),
             helper.make_node("Transpose", [f"{name}_conv"], [f"{name}_nhwc"], perm=[0, 2, 3, 1]),
             helper.make_node("Reshape", [f"{name}_nhwc", f"{name}_shape"], [raw])]
    if kind == "score":
        nodes.append(helper.make_node("Sigmoid", [raw], [f"{name}_out"]))
    output = helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, [None, width])
    return nodes, inits, output


def make_detector(path: str) -> None:
    nodes, inits, outputs = [], [], {"score": [], "bbox": [], "kps": []}
    for kind, width in (("score", 1), ("bbox", 4), ("kps", 10)):
        for stride in STRIDES:
            n, i, o = _detector_head(stride, kind, width, fires=stride == STRIDES[-1])
            nodes += n
            inits += i
            outputs[kind].append(o)
    image = helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "height", "width"])
    ordered = outputs["score"] + outputs["bbox"] + outputs["kps"]  # SCRFD order: scores, boxes, keypoints
    _write(helper.make_graph(nodes, "fake_scrfd", [image], ordered, inits), path)


def make_head(path: str, size: int, out_dim: int, seed: int, batch=None) -> None:
    """[B, 3, size, size] -> 1x1 conv (8) -> ReLU -> spatial mean -> linear -> [B, out_dim]."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 3, 1, 1)).astype(np.float32), "mix_w"),
             numpy_helper.from_array(rng.standard_normal(8).astype(np.float32) * 0.1, "mix_b"),
             numpy_helper.from_array(rng.standard_normal((8, out_dim)).astype(np.float32), "fc_w"),
             numpy_helper.from_array(rng.standard_normal(out_dim).astype(np.float32) * 0.1, "fc_b")]
    nodes = [helper.make_node("Conv", ["data", "mix_w", "mix_b"], ["mixed"], name="mix"),
             helper.make_node("Relu", ["mixed"], ["active"], name="active"),
             helper.make_node("ReduceMean", ["active"], ["pooled"], axes=[2, 3], keepdims=0, name="pool"),
             helper.make_node("MatMul", ["pooled", "fc_w"], ["projected"], name="fc"),
             helper.make_node("Add", ["projected", "fc_b"], ["fc1"], name="fc_bias")]
    image = helper.make_tensor_value_info("data", TensorProto.FLOAT, [batch, 3, size, size])
    output = helper.make_tensor_value_info("fc1", TensorProto.FLOAT, [batch, out_dim])
    _write(helper.make_graph(nodes, "fake_head", [image], [output], inits), path)


def write_antelopev2(root: str) -> str:
    """Write the pack into `<root>/models/antelopev2` (FaceAnalysis' layout); returns that folder."""
    folder = os.path.join(root, "models", "antelopev2")
    os.makedirs(folder, exist_ok=True)
    make_detector(os.path.join(folder, ANTELOPEV2["detector"]))
    make_head(os.path.join(folder, ANTELOPEV2["recognition"]), 112, 512, seed=1)
    make_head(os.path.join(folder, ANTELOPEV2["landmark_2d"]), 192, 212, seed=2, batch=1)
    make_head(os.path.join(folder, ANTELOPEV2["landmark_3d"]), 192, 3309, seed=3, batch=1)
    make_head(os.path.join(folder, ANTELOPEV2["genderage"]), 96, 3, seed=4, batch=1)
    return folder


def face_image(size: int = 64, face: bool = True) -> np.ndarray:
    """A dark RGB frame, with one bright warm-coloured square "face" when `face`."""
    image = np.full((size, size, 3), (30, 30, 40), np.uint8)
    if face:
        side = size * 3 // 16
        top, left = size // 4, size // 2 - side // 2
        image[top:top + side, left:left + side] = (255, 220, 180)
    return image
