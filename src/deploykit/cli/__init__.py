"""Command line: thin Typer commands that parse options, call the library, and render with rich."""

from typing import Annotated

import typer

from deploykit.cli import export, models, predict, verify  # noqa: F401  (register commands)
from deploykit.cli import bench  # noqa: F401,E402  (deploykit bench)
from deploykit.cli import data, eval, train  # noqa: F401  (deploykit train / eval / data)
from deploykit.cli import build  # noqa: F401,E402  (deploykit build)
from deploykit.cli import report  # noqa: F401,E402  (deploykit report)
from deploykit.cli.app import app
from deploykit.cli.command import use_everywhere


def _print_version(value: bool) -> None:
    if value:
        from deploykit import __version__

        print(f"deploykit {__version__}")
        raise typer.Exit()


@app.callback()
def _options(version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True, metavar="",
                                                   help="Print deploykit's version and exit.")] = False) -> None:
    """PyTorch image classifiers to ONNX, FP16/INT8 and TensorRT -- every step proven with numbers."""


use_everywhere(app)


def main() -> None:
    app()


__all__ = ["app", "main"]
