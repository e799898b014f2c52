"""torch -> ONNX, checked by onnx.checker, written atomically.

Modules and ``torch.export`` programs go through torch's dynamo-based exporter (``torch.onnx.export(...,
dynamo=True)``, onnxscript underneath); TorchScript archives, which torch.export cannot trace, through the
TorchScript-based exporter.
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from pathlib import Path

from deploykit.errors import DeployKitError, InputError, interrupt_requested
from deploykit.files import atomic_path
from deploykit.models.loading import LoadedModel
from deploykit.models.program import program_input

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
MIN_DYNAMO_OPSET = 18  # torch.onnx.export(dynamo=True) targets opset 18 and newer
DEFAULT_OPSET = 18  # TensorRT 10.3 (JetPack 6) parses opsets up to 20; torch's exporter starts at 18


class ExportError(DeployKitError):
    """torch could not turn the model into ONNX."""


def export_onnx(loaded: LoadedModel, dest: Path, *, opset: int = DEFAULT_OPSET, batch: int = 1,
                dynamic_batch: bool = False) -> Path:
    import onnx
    import torch

    if batch < 1:
        raise InputError(f"--batch must be >= 1, got {batch}")
    module = loaded.module
    is_script = isinstance(module, torch.jit.ScriptModule)
    lowest = 13 if is_script else MIN_DYNAMO_OPSET
    if not lowest <= opset <= 23:
        raise InputError(f"--opset must be between {lowest} and 23 for this model, got {opset} (torch's exporter "
                         f"writes opset {MIN_DYNAMO_OPSET} or newer; TensorRT 10.3 on JetPack 6 parses up to 20)")
    is_program = isinstance(module, torch.export.ExportedProgram)
    if is_program and dynamic_batch:
        raise InputError("a torch.export program fixes its batch size; re-export it with a dynamic batch Dim, "
                         "or drop --dynamic-batch")
    example_batch = max(2, batch) if dynamic_batch and not is_script else batch
    if is_program:
        traced = program_input(module)  # the batch it was traced with (a dynamic one: its example's)
        example_batch = int(traced.shape[0]) if traced is not None and len(traced.shape) else batch
    example = torch.zeros(example_batch, *loaded.preprocess.shape)
    dest = Path(dest)
    log = io.StringIO()
    with atomic_path(dest) as tmp, warnings.catch_warnings(), contextlib.redirect_stdout(log), \
            contextlib.redirect_stderr(log):
        warnings.simplefilter("ignore")
        try:
            if is_script:
                torch.onnx.export(module, (example,), str(tmp), dynamo=False, opset_version=opset,
                                  input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                  dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}
                                  if dynamic_batch else None)
            else:
                shapes = None
                if dynamic_batch:
                    shapes = ({0: torch.export.Dim("batch", min=1, max=4096)},)
                program = torch.onnx.export(module, (example,), dynamo=True, opset_version=opset,
                                            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                            dynamic_shapes=shapes, optimize=True, verbose=False)
                program.save(str(tmp))
        except Exception as exc:  # the exporter raises many types; the user needs the first line
            if interrupt_requested():  # torch's exporter wraps the KeyboardInterrupt raised inside it
                raise KeyboardInterrupt from None
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ExportError(f"torch could not export the model to ONNX: {first}") from exc
        if interrupt_requested():  # ... or swallows it and carries on
            raise KeyboardInterrupt
        model = onnx.load(str(tmp), load_external_data=False)
        written = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=None)
        if written != opset:
            raise ExportError(f"torch wrote opset {written}, not the --opset {opset} asked for; use --opset {written}")
        _name_io(model)
        meta = {"deploykit.preprocess": json.dumps(loaded.preprocess.to_dict()),
                "deploykit.class_names": json.dumps(loaded.class_names)}
        for key, value in meta.items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(model, str(tmp))
        try:
            onnx.checker.check_model(str(tmp), full_check=True)
        except onnx.checker.ValidationError as exc:
            raise ExportError(f"the exported ONNX fails onnx.checker: {str(exc).splitlines()[0]}") from exc
    return dest


def _name_io(model) -> None:
    """Make sure the graph's single input/output carry the names the manifest promises."""
    graph = model.graph
    renames = {}
    if len(graph.input) == 1 and graph.input[0].name != INPUT_NAME:
        renames[graph.input[0].name] = INPUT_NAME
    if len(graph.output) == 1 and graph.output[0].name != OUTPUT_NAME:
        renames[graph.output[0].name] = OUTPUT_NAME
    if not renames:
        return
    for value in list(graph.input) + list(graph.output):
        value.name = renames.get(value.name, value.name)
    for node in graph.node:
        for i, name in enumerate(node.input):
            node.input[i] = renames.get(name, name)
        for i, name in enumerate(node.output):
            node.output[i] = renames.get(name, name)


def onnx_io(path: Path) -> dict:
    """Name, shape (None for dynamic dims) and dtype of an ONNX file's first input and output."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)

    def describe(value):
        dims = [d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim]
        return {"name": value.name, "shape": dims,
                "dtype": onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type).name}

    return {"input": describe(model.graph.input[0]), "output": describe(model.graph.output[0]),
            "opset": max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=None)}
