"""`deploykit report`: one markdown page per export folder from what export/verify/eval/bench wrote."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from deploykit.cli.app import app
from deploykit.cli.render import console, literal, warn
from deploykit.manifest import Manifest
from deploykit.report_page import BENCH_NAME, stale_bench, write_report


@app.command()
def report(
    folder: Annotated[Path, typer.Argument(help="Export folder (holds deploykit.json).")],
    bench: Annotated[Optional[Path], typer.Option("--bench", help="`deploykit bench --json` output "
                                                                  "\\[default: <folder>/bench.json if present].")
                     ] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Markdown file \\[default: <folder>/report.md].")
                   ] = None,
    show: Annotated[bool, typer.Option("--print", help="Also render the report on the terminal.")] = False,
) -> None:
    """Write report.md: source, training accuracy, each artifact's parity and accuracy, speed, and the PNGs."""
    dest = write_report(folder, out=out, bench_path=bench)
    bench_path = bench if bench is not None else folder / BENCH_NAME
    if bench_path.is_file():
        stale = stale_bench(folder, bench_path, Manifest.load(folder))
        if stale:
            warn(stale)
    if show:
        from rich.markdown import Markdown

        console.print(Markdown(terminal_text(dest.read_text())))
    console.print(f"wrote {literal(dest)}", highlight=False)


def terminal_text(markdown: str) -> str:
    """The report as a terminal shows it: an image cannot be drawn there (rich would print an emoji and the alt
    text), so each figure becomes a line naming its file."""
    import re

    # one list item per figure: consecutive lines of a paragraph would run together
    return re.sub(r"!\[([^\]]*)\]\(([^)]+)\)", r"- figure (\1): `\2`", markdown)
