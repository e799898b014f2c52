"""A classifier-shaped ONNX graph (1x28x28 -> 10 logits, deploykit metadata) whose output goes through a Loop of
10^15 iterations: a runtime would spin on it forever."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnx.helper as h
from onnx import TensorProto


def loop_model() -> onnx.ModelProto:
    body = h.make_graph([h.make_node("Identity", ["c_in"], ["c_out"]), h.make_node("Identity", ["v_in"], ["v_out"])],
        "body", [h.make_tensor_value_info("i", TensorProto.INT64, []), h.make_tensor_value_info("c_in", TensorProto.BOOL, []),
                 h.make_tensor_value_info("v_in", TensorProto.FLOAT, None)],
        [h.make_tensor_value_info("c_out", TensorProto.BOOL, []), h.make_tensor_value_info("v_out", TensorProto.FLOAT, None)])
    nodes = [h.make_node("Flatten", ["input"], ["flat"]),
             h.make_node("Constant", [], ["M"], value=h.make_tensor("M", TensorProto.INT64, [], [10**15])),
             h.make_node("Constant", [], ["cond"], value=h.make_tensor("cond", TensorProto.BOOL, [], [True])),
             h.make_node("Loop", ["M", "cond", "flat"], ["looped"], body=body),
             h.make_node("Slice", ["looped", "s", "e", "ax"], ["logits"])]
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("input", TensorProto.FLOAT, [1, 1, 28, 28])],
                     [h.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
                     initializer=[onnx.numpy_helper.from_array(np.array([0], np.int64), "s"),
                                  onnx.numpy_helper.from_array(np.array([10], np.int64), "e"),
                                  onnx.numpy_helper.from_array(np.array([1], np.int64), "ax")])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 18)])
    m.metadata_props.add(key="deploykit.preprocess", value=json.dumps({"channels": 1, "height": 28, "width": 28, "mean": [0.5], "std": [0.5]}))
    return m
