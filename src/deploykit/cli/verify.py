"""`deploykit verify`: every ONNX artifact of an export folder against its reference."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from deploykit.cli.app import app
from deploykit.cli.render import console, parity_table, warn
from deploykit.errors import VerificationError


@app.command()
def verify(
    folder: Annotated[Path, typer.Argument(help="Export folder (holds deploykit.json).")],
    data: Annotated[Optional[Path], typer.Option("--data", help="Images: ImageFolder or flat folder "
                                                              "[default: bundled photos].")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Compare each artifact with the PyTorch reference: logits, cosine, top-1/top-5 (and accuracy with labels)."""
    from deploykit.verify import verify_folder

    report = verify_folder(folder, data=data, warn=warn)
    if as_json:
        print(json.dumps(report.to_json()))
    else:
        console.print(parity_table(report))
    if not report.passed:
        raise VerificationError(f"out of tolerance: {report.failure_summary()}")
