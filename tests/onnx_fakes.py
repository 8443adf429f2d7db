"""Tiny ONNX graphs with the real input/output signatures of DWPose's two models.

- yolox: images[1,3,640,640] (0..255, pad 114) -> output[1,8400,85] = per anchor (dx, dy, log w,
  log h, obj, 80 class scores), obj/classes already sigmoided, strides 8/16/32. Objectness fires
  on bright cells and the person class on green, so bright green/white blobs on a dark frame
  become overlapping person candidates, while red blobs are class 2.
- dwpose: input[1,3,384,288] (normalised) -> simcc_x[1,133,576], simcc_y[1,133,768]. A random
  1x1 conv over a pooled crop, averaged along one axis and projected to the SimCC bins, so the
  peaks move with the crop content.
`batch=None` gives a dynamic batch dimension.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper
from onnx import numpy_helper as nh

STRIDES = (8, 16, 32)


def _save(graph, path) -> str:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)


def make_yolox(path, batch: int | None = 1, size: int = 640, box_cells=(16.0, 8.0, 4.0), seed: int = 0) -> str:
    """Fake yolox_l.onnx. Box size ~ box_cells x stride (jittered by the cell colour)."""
    rng = np.random.default_rng(seed)
    n = batch if batch else "N"
    nodes, inits, parts = [], [], []
    for s, cells in zip(STRIDES, box_cells):
        nodes.append(helper.make_node("AveragePool", ["images"], [f"p{s}"], kernel_shape=[s, s], strides=[s, s]))
        w_reg = (rng.normal(0, 0.0005, (4, 3, 1, 1))).astype(np.float32)
        b_reg = np.array([0.2, 0.3, np.log(cells) - 0.2, np.log(cells * 1.3) - 0.2], np.float32)
        # objectness sigmoid(0.03 (R+G+B) - 12): bright cells, not the 114 padding;
        # person (class 0) on green; class 2 on red
        w_cls = np.zeros((81, 3, 1, 1), np.float32)
        b_cls = np.full(81, -7.0, np.float32)
        w_cls[0], b_cls[0] = 0.03, -12.0
        w_cls[1, 1], b_cls[1] = 0.03, -3.0
        w_cls[3, 0], w_cls[3, 1], b_cls[3] = 0.05, -0.05, -4.0
        inits += [nh.from_array(w_reg, f"wr{s}"), nh.from_array(b_reg, f"br{s}"), nh.from_array(w_cls, f"wc{s}"),
                  nh.from_array(b_cls, f"bc{s}"), nh.from_array(np.array([0, 85, -1], np.int64), f"sh{s}")]
        nodes += [helper.make_node("Conv", [f"p{s}", f"wr{s}", f"br{s}"], [f"r{s}"]),
                  helper.make_node("Conv", [f"p{s}", f"wc{s}", f"bc{s}"], [f"cl{s}"]),
                  helper.make_node("Sigmoid", [f"cl{s}"], [f"c{s}"]),
                  helper.make_node("Concat", [f"r{s}", f"c{s}"], [f"o{s}"], axis=1),
                  helper.make_node("Reshape", [f"o{s}", f"sh{s}"], [f"f{s}"])]
        parts.append(f"f{s}")
    anchors = sum((size // s) ** 2 for s in STRIDES)
    nodes += [helper.make_node("Concat", parts, ["cat"], axis=2),
              helper.make_node("Transpose", ["cat"], ["output"], perm=[0, 2, 1])]
    inp = helper.make_tensor_value_info("images", TensorProto.FLOAT, [n, 3, size, size])
    out = helper.make_tensor_value_info("output", TensorProto.FLOAT, [n, anchors, 85])
    return _save(helper.make_graph(nodes, "yolox_fake", [inp], [out], inits), path)


def make_dwpose(path, batch: int | None = 1, keypoints: int = 133, height: int = 384, width: int = 288,
                seed: int = 0) -> str:
    """Fake dw-ll_ucoco_384.onnx whose SimCC peaks depend on the crop."""
    rng = np.random.default_rng(seed)
    n = batch if batch else "N"
    pool = 4
    ph, pw = height // pool, width // pool
    conv_w = rng.normal(0, 0.6, (keypoints, 3, 1, 1)).astype(np.float32)
    conv_b = rng.normal(0, 0.3, keypoints).astype(np.float32)
    inits = [nh.from_array(conv_w, "cw"), nh.from_array(conv_b, "cb")]
    nodes = [helper.make_node("AveragePool", ["input"], ["pooled"], kernel_shape=[pool, pool], strides=[pool, pool]),
             helper.make_node("Conv", ["pooled", "cw", "cb"], ["conv"]),
             helper.make_node("Tanh", ["conv"], ["feat"])]  # [n, K, ph, pw]
    outs = []
    # per-keypoint offsets spread the peak heights around the 0.3 visibility threshold
    level = rng.uniform(-0.2, 0.3, (keypoints, 1)).astype(np.float32)
    rank = 16
    for name, axis, cells in (("simcc_x", 2, pw), ("simcc_y", 3, ph)):
        bins = 2 * (width if name == "simcc_x" else height)
        # low-rank projection of the profile, with per-keypoint gains so keypoints peak apart
        into = rng.normal(0, 1 / np.sqrt(cells), (cells, rank)).astype(np.float32)
        gain = rng.normal(0, 1, (keypoints, rank)).astype(np.float32)
        out_of = rng.normal(0, 0.4 / np.sqrt(rank), (rank, bins)).astype(np.float32)
        bias = (level + rng.normal(0, 0.02, (keypoints, bins))).astype(np.float32)
        inits += [nh.from_array(a, f"{k}_{name}") for k, a in
                  (("into", into), ("gain", gain), ("out", out_of), ("bias", bias))]
        nodes += [helper.make_node("ReduceMean", ["feat"], [f"prof_{name}"], axes=[axis], keepdims=0),
                  helper.make_node("MatMul", [f"prof_{name}", f"into_{name}"], [f"low_{name}"]),
                  helper.make_node("Mul", [f"low_{name}", f"gain_{name}"], [f"mix_{name}"]),
                  helper.make_node("MatMul", [f"mix_{name}", f"out_{name}"], [f"mm_{name}"]),
                  helper.make_node("Add", [f"mm_{name}", f"bias_{name}"], [name])]
        outs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, [n, keypoints, bins]))
    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, [n, 3, height, width])
    return _save(helper.make_graph(nodes, "dwpose_fake", [inp], outs, inits), path)


def make_classifier(path) -> str:
    """A valid ONNX model with the wrong signature: image [1,3,224,224] -> logits [1,10]."""
    w = np.zeros((10, 3, 1, 1), np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]),
             helper.make_node("GlobalAveragePool", ["c"], ["g"]),
             helper.make_node("Flatten", ["g"], ["logits"])]
    inp = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 224, 224])
    out = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])
    return _save(helper.make_graph(nodes, "classifier", [inp], [out], [nh.from_array(w, "w")]), path)
