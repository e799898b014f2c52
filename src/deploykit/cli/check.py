"""`deploykit check`: will TensorRT parse and build these ONNX graphs? Offline, per TensorRT version."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from deploykit.cli.app import app
from deploykit.cli.render import console, literal
from deploykit.files import dumps_strict
from deploykit.tensorrt.check import check_path, parse_targets, require_ready

TrtOpt = Annotated[Optional[str], typer.Option(
    "--trt", help="TensorRT versions to check against, comma-separated \\[default: 10.3,11.5: JetPack 6 and the "
                  "newest 11.x].")]


@app.command()
def check(
    target: Annotated[Path, typer.Argument(help="Export folder (every ONNX artifact it lists) or one .onnx file.")],
    trt: TrtOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the verdicts as JSON.")] = False,
) -> None:
    """Check ONNX graphs against TensorRT's published ONNX operator support, per TensorRT version (exit 4: one
    will not build). Pure graph inspection: no TensorRT or GPU needed."""
    targets = parse_targets(trt)
    checks = check_path(target, targets)
    if as_json:
        print(dumps_strict({"targets": {t.version: {"table": t.table, "typing": t.typing, "platform": t.platform,
                                                    "gap": t.gap, "source": t.source()} for t in targets},
                            "ready": all(c.ready for c in checks),
                            "artifacts": [c.to_dict() for c in checks]}))
    else:
        for table in check_tables(checks, targets):
            console.print(table)
    require_ready(checks)


def check_tables(checks, targets):
    """One table: a row per artifact and target with its verdict, problems and notes; the tables used below."""
    from rich.table import Table

    gaps = [f"TensorRT {t.version}: {t.gap}" for t in targets if t.gap]
    table = Table(title="TensorRT readiness (ONNX-TensorRT operator tables; docs/tensorrt-check.md)",
                  caption="\n".join(literal(g) for g in gaps) or None, caption_justify="left")
    for col in ("artifact", "TensorRT", "table", "result", "problems / notes"):
        table.add_column(col)
    for item in checks:
        if item.skipped:
            table.add_row(literal(item.path), "-", "-", "[dim]skipped[/]", literal(item.skipped))
            continue
        for version, verdict in item.verdicts.items():
            lines = [f"[red]x[/] {literal(p)}" for p in verdict.problems]
            lines += [f"[dim]{literal(n)}[/]" for n in verdict.notes if not n.startswith("no operator matrix")]
            table.add_row(literal(item.path), version, verdict.target.table,
                          "[green]ready[/]" if verdict.ready else "[red]WILL FAIL[/]", "\n".join(lines))
    return [table]
