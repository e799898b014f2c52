"""`deploykit models`: the registry (every torchvision classifier, plus deploykit's own), by family."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from deploykit.cli.app import app
from deploykit.files import dumps_strict
from deploykit.cli.render import console
from deploykit.models import get_spec, list_models


def _millions(n: int) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e5 else f"{n / 1e3:.0f}k"


@app.command()
def models(as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False) -> None:
    """List the architectures deploykit builds, by family, with parameters, input size and normalisation."""
    specs = sorted((get_spec(n) for n in list_models()), key=lambda s: (s.family, s.params(), s.name))
    rows = [{"name": s.name, "family": s.family, "input": [s.channels, s.size, s.size], "resize": s.resize,
             "mean": list(s.mean), "std": list(s.std), "min_size": s.min_size, "params": s.params(),
             "origin": s.origin} for s in specs]
    if as_json:
        print(dumps_strict({"models": rows}))
        return
    families = len({r["family"] for r in rows})
    table = Table(title=f"{len(rows)} architectures in {families} families (parameters at 1000 classes)")
    for col in ("family", "name", "params", "input", "resize", "mean", "std"):
        table.add_column(col, justify="right" if col == "params" else "left")
    for i, r in enumerate(rows):
        last = i + 1 == len(rows) or rows[i + 1]["family"] != r["family"]
        first = i == 0 or rows[i - 1]["family"] != r["family"]
        table.add_row(r["family"] if first else "", r["name"], _millions(r["params"]), "x".join(map(str, r["input"])),
                      str(r["resize"] or "-"), ",".join(f"{v:g}" for v in r["mean"]),
                      ",".join(f"{v:g}" for v in r["std"]), end_section=last)
    console.print(table)
