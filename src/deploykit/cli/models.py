"""`deploykit models`: the registry."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from deploykit.cli.app import app
from deploykit.files import dumps_strict
from deploykit.cli.render import console


@app.command()
def models(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """List the architectures deploykit builds, with input size and normalisation."""
    from deploykit.models import get_spec, list_models

    specs = [get_spec(n) for n in list_models()]
    rows = [{"name": s.name, "family": s.family, "input": [s.channels, s.size, s.size], "resize": s.resize,
             "mean": list(s.mean), "std": list(s.std), "min_size": s.min_size} for s in specs]
    if as_json:
        print(dumps_strict({"models": rows}))
        return
    table = Table(title=f"{len(rows)} architectures")
    for col in ("name", "family", "input", "resize", "mean", "std"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["name"], r["family"], "x".join(map(str, r["input"])), str(r["resize"] or "-"),
                      ",".join(f"{v:g}" for v in r["mean"]), ",".join(f"{v:g}" for v in r["std"]))
    console.print(table)
