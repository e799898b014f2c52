"""Options that several commands share, defined once: how to load a checkpoint (export, eval, predict, train's
``--allow-pickle``), the TensorRT build options (build, ``export --to trt``) and the INT8 gate (export, verify).

Each is an ``Annotated`` type a command names as a parameter's annotation; :func:`load_options` turns the loading
flags into a checked ``LoadOptions``.
"""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from deploykit.errors import InputError
from deploykit.models.loading import LoadOptions
from deploykit.preprocess import parse_floats, parse_input_shape
from deploykit.runners.base import Backend

# --backend of verify and predict: the backends of runners.Backend an exported artifact runs on (torch runs the
# checkpoint), as Typer's choices; the commands pass Backend(value) on
ArtifactBackend = Enum("ArtifactBackend", {b.name: b.value for b in Backend if b is not Backend.torch}, type=str)

# -- loading a checkpoint ---------------------------------------------------------------------------------
ArchOpt = Annotated[Optional[str], typer.Option("--arch", help="Registry architecture (see `deploykit models`).")]
NumClassesOpt = Annotated[Optional[int], typer.Option("--num-classes", help="Classes of the checkpoint's head.")]
ModelDefOpt = Annotated[Optional[str], typer.Option("--model-def", help="Your model code: path/to/model.py:factory.")]
ModelKwargsOpt = Annotated[Optional[str], typer.Option("--model-kwargs", help="JSON kwargs for the factory.")]
AllowPickleOpt = Annotated[bool, typer.Option(
    "--trust-code", "--allow-pickle",
    help="Load a checkpoint that is code: a pickled module, a TorchScript archive or a torch.export .pt2 (each runs "
         "code from the file). --allow-pickle is the same flag.")]
InputShapeOpt = Annotated[Optional[str], typer.Option("--input-shape", help="C,H,W, e.g. 1,28,28.")]
MeanOpt = Annotated[Optional[str], typer.Option("--mean", help="Per-channel mean, e.g. 0.5,0.5,0.5.")]
StdOpt = Annotated[Optional[str], typer.Option("--std", help="Per-channel std, e.g. 0.5,0.5,0.5.")]
ResizeOpt = Annotated[Optional[int], typer.Option("--resize", help="Shorter side before the center crop (0: none).")]
LabelsOpt = Annotated[Optional[str], typer.Option("--labels", help="Class names: a text file (one per line) or a,b,c.")]


def load_options(arch, num_classes, model_def, model_kwargs, allow_pickle, input_shape, mean, std, resize,
                 labels) -> LoadOptions:
    """The loading flags as one checked ``LoadOptions``: ``--model-kwargs`` parsed as JSON, ``--labels`` read from
    its file (or split on commas), ``--input-shape`` / ``--mean`` / ``--std`` parsed; ranges by
    ``LoadOptions.validate``."""
    kwargs = {}
    if model_kwargs:
        try:
            kwargs = json.loads(model_kwargs)
        except json.JSONDecodeError as exc:
            raise InputError(f"--model-kwargs must be a JSON object, e.g. '{{\"num_classes\": 5}}' ({exc.msg})") from None
        if not isinstance(kwargs, dict):
            raise InputError("--model-kwargs must be a JSON object, e.g. '{\"num_classes\": 5}'")
    options = LoadOptions(arch=arch, num_classes=num_classes, model_def=model_def, model_kwargs=kwargs,
                          allow_pickle=allow_pickle, resize=resize)
    options.validate()  # the numbers before --labels' file is read
    if labels is not None:
        options.class_names = _read_labels(labels)
        options.validate()
    options.input_shape = parse_input_shape(input_shape)
    options.mean, options.std = parse_floats(mean, "--mean"), parse_floats(std, "--std")
    return options


def _read_labels(labels: str) -> list[str]:
    """``--labels``: a UTF-8 text file with one class name per line, or ``a,b,c``."""
    path = Path(labels)
    if path.is_file():
        if path.stat().st_size > 64 << 20:
            raise InputError(f"--labels {path} is too large for a list of class names")
        try:
            text = path.read_bytes().decode("utf-8-sig")
        except UnicodeDecodeError:
            raise InputError(f"--labels {path} is not a UTF-8 text file (one class name per line)") from None
        return [line.strip() for line in text.splitlines() if line.strip()]
    return [n.strip() for n in labels.split(",") if n.strip()]


# -- building a TensorRT engine (build, export --to trt) ----------------------------------------------------
ProfileOpt = Annotated[Optional[str], typer.Option(
    "--profile", help="Batch optimization profile MIN:OPT:MAX for a dynamic-batch export \\[default: 1:8:32].")]
WorkspaceOpt = Annotated[Optional[float], typer.Option(
    "--workspace", help="TensorRT builder workspace in GiB \\[default: TensorRT's, all free GPU memory]; "
                        "lower it when a Jetson build runs out of memory.")]
TimingCacheOpt = Annotated[Optional[Path], typer.Option(
    "--timing-cache", help="Timing cache file, reused across builds \\[default: one per TensorRT version and "
                           "GPU under the user cache dir].")]

# -- the INT8 gate (export, verify) --------------------------------------------------------------------------
Int8AgreementOpt = Annotated[Optional[float], typer.Option(
    "--int8-agreement", help="INT8 gate: least top-1 agreement with the reference \\[default: 0.97].")]

MaxImagesOpt = Annotated[Optional[int], typer.Option(
    "--max-images", help="Most verification images (a larger set is sampled, seed 0; what was used and why is "
                         "printed) \\[default: 512, and at export what the folder's evidence cap holds].")]


def check_max_images(value: int | None) -> int | None:
    if value is not None and not 1 <= value <= 1 << 20:
        raise InputError(f"--max-images must be between 1 and {1 << 20}, got {value}")
    return value
