"""`deploykit predict`: top-k classes for images."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from deploykit.cli.app import app
from deploykit.cli.export import AllowPickleOpt, ArchOpt, InputShapeOpt, ModelDefOpt, ModelKwargsOpt, load_options
from deploykit.cli.render import console, note
from deploykit.verify import Runtime, on_backend


@app.command()
def predict(
    artifact: Annotated[Path, typer.Argument(help="Export folder, .onnx or .engine file, or checkpoint.")],
    images: Annotated[list[Path], typer.Argument(help="Image files.")],
    topk: Annotated[int, typer.Option("--topk", help="Classes to show per image.")] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    arch: ArchOpt = None,
    model_def: ModelDefOpt = None,
    model_kwargs: ModelKwargsOpt = None,
    allow_pickle: AllowPickleOpt = False,
    input_shape: InputShapeOpt = None,
    backend: Annotated[Optional[Runtime], typer.Option(
        "--backend", help="Run the artifact on ort, ov (OpenVINO, CPU, f32) or trt \\[default: what it is for: "
        "ONNX on ort, engines on trt].")] = None,
) -> None:
    """Classify images with a checkpoint or an exported artifact (preprocessing from the manifest)."""
    from deploykit.predict import load_predictor

    options = load_options(arch, None, model_def, model_kwargs, allow_pickle, input_shape, None, None, None, None)
    predictor = load_predictor(artifact, options=options)
    if backend is not None:
        predictor.runner = on_backend(predictor.runner, backend, note=None if as_json else note)
    results = predictor.topk(list(images), k=topk)
    if as_json:
        print(json.dumps({"predictions": results}))
        return
    for result in results:
        table = Table(title=Path(result["image"]).name, title_justify="left")
        table.add_column("#", justify="right")
        table.add_column("class")
        table.add_column("probability", justify="right")
        for rank, item in enumerate(result["top"], 1):
            table.add_row(str(rank), item["label"], f"{item['probability']:.4f}")
        console.print(table)
