"""What the precision tests share (tests/precision/): the repository's calibration photos and graph readers.

test_zoo_families.py reads graphs the same way.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto

REPO_CALIB = Path(__file__).resolve().parents[1] / "calib"  # the starter calibration photos shipped in the repo


def _types(model) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    out = {v.name: v.type.tensor_type.elem_type
           for v in list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)}
    out.update({i.name: i.data_type for i in model.graph.initializer})
    return out


def _io_float32(model) -> None:
    assert [i.type.tensor_type.elem_type for i in model.graph.input] == [TensorProto.FLOAT]
    assert [o.type.tensor_type.elem_type for o in model.graph.output] == [TensorProto.FLOAT]
