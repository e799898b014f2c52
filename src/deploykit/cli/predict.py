"""`deploykit predict`: top-k classes for images."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from deploykit.cli.app import app
from deploykit.cli.options import (AllowPickleOpt, ArchOpt, ArtifactBackend, InputShapeOpt, LabelsOpt, MeanOpt,
                                   ModelDefOpt, ModelKwargsOpt, NumClassesOpt, StdOpt, load_options)
from deploykit.cli.render import console, literal
from deploykit.cli.messages import ConsoleReporter
from deploykit.predict import load_predictor
from deploykit.messages import SILENT
from deploykit.files import dumps_strict
from deploykit.runners.base import Backend
from deploykit.verify import on_backend

COMPACT_FROM = 4  # this many images or more: one table, a row per image


@app.command()
def predict(
    artifact: Annotated[Path, typer.Argument(help="Export folder, .onnx or .engine file, or checkpoint.")],
    images: Annotated[list[Path], typer.Argument(help="Image files, or folders (their images, sorted).")],
    topk: Annotated[int, typer.Option("--topk", help="Classes to show per image.")] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    arch: ArchOpt = None,
    num_classes: NumClassesOpt = None,
    model_def: ModelDefOpt = None,
    model_kwargs: ModelKwargsOpt = None,
    allow_pickle: AllowPickleOpt = False,
    input_shape: InputShapeOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    labels: LabelsOpt = None,
    backend: Annotated[Optional[ArtifactBackend], typer.Option(
        "--backend", help="Run the artifact on ort, ov (OpenVINO, CPU, f32) or trt \\[default: what it is for: "
        "ONNX on ort, engines on trt].")] = None,
) -> None:
    """Classify images with a checkpoint or an exported artifact (preprocessing from the manifest)."""
    options = load_options(arch, num_classes, model_def, model_kwargs, allow_pickle, input_shape, mean, std, None,
                           labels)
    predictor = load_predictor(artifact, options=options)
    if backend is not None:
        predictor.runner = on_backend(predictor.runner, Backend(backend.value),
                                      reporter=SILENT if as_json else ConsoleReporter())
        predictor.artifact = f"{predictor.artifact.rsplit(' (', 1)[0]} ({predictor.runner.name})"
    results = predictor.topk(list(images), k=topk)
    if as_json:
        print(dumps_strict({"predictions": results, "artifact": predictor.artifact}))
        return
    console.print(f"{len(results)} image(s) through {literal(predictor.artifact)}", highlight=False, soft_wrap=True)
    if len(results) >= COMPACT_FROM:
        table = Table()
        table.add_column("file")
        table.add_column("top-1")
        table.add_column("prob", justify="right")
        if topk > 1:
            table.add_column("next", style="dim")
        common = _common_parent([r["image"] for r in results])
        for result in results:
            top = result["top"]
            row = [literal(_short(result["image"], common)), literal(top[0]["label"]), f"{top[0]['probability']:.3f}"]
            if topk > 1:
                row.append(literal(", ".join(f"{t['label']} {t['probability']:.2f}" for t in top[1:3])))
            table.add_row(*row)
        console.print(table)
        return
    for result in results:
        table = Table(title=literal(Path(result["image"]).name), title_justify="left")
        table.add_column("#", justify="right")
        table.add_column("class")
        table.add_column("probability", justify="right")
        for rank, item in enumerate(result["top"], 1):
            table.add_row(str(rank), literal(item["label"]), f"{item['probability']:.4f}")
        console.print(table)


def _common_parent(paths: list[str]) -> Path | None:
    import os

    try:
        common = Path(os.path.commonpath([str(Path(p).parent) for p in paths]))
    except ValueError:
        return None
    return common if str(common) not in ("", ".") else None


def _short(image: str, common: Path | None) -> str:
    """The image's path under the folder all images share (the folder was named once on the line above)."""
    path = Path(image)
    if common is None:
        return str(path)
    try:
        return str(path.relative_to(common))
    except ValueError:
        return str(path)
