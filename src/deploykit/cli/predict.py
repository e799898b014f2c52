"""`deploykit predict`: top-k classes for images."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from deploykit.cli.app import app
from deploykit.files import dumps_strict
from deploykit.cli.export import AllowPickleOpt, ArchOpt, InputShapeOpt, ModelDefOpt, ModelKwargsOpt, load_options
from deploykit.cli.render import console


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
) -> None:
    """Classify images with a checkpoint or an exported artifact (preprocessing from the manifest)."""
    from deploykit.predict import load_predictor

    options = load_options(arch, None, model_def, model_kwargs, allow_pickle, input_shape, None, None, None, None)
    results = load_predictor(artifact, options=options).topk(list(images), k=topk)
    if as_json:
        print(dumps_strict({"predictions": results}))
        return
    for result in results:
        table = Table(title=Path(result["image"]).name, title_justify="left")
        table.add_column("#", justify="right")
        table.add_column("class")
        table.add_column("probability", justify="right")
        for rank, item in enumerate(result["top"], 1):
            table.add_row(str(rank), item["label"], f"{item['probability']:.4f}")
        console.print(table)
