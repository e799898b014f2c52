"""Rich rendering shared by the commands."""

from __future__ import annotations

import os
import sys

from rich.console import Console
from rich.markup import escape
from rich.segment import Segment
from rich.table import Table

from deploykit.evidence import held_out_text
from deploykit.text import printable, reveal
from deploykit.parity import SMALL_SAMPLE


class SafeConsole(Console):
    """A Console whose text reaches the terminal with every hidden character (ESC, other controls, bidi, zero-width)
    as a visible escape: the last net under :func:`literal`, for a string that reached a print without it. Rich's
    own control segments (cursor moves of a live progress bar) pass unchanged."""

    def _render_buffer(self, buffer):
        return super()._render_buffer(
            seg if seg.control else Segment(reveal(seg.text), seg.style, seg.control) for seg in buffer)


def _width(stream) -> int | None:
    """Logs and pipes get wide tables rather than rich's 80-column default, unless COLUMNS says otherwise (rich
    reads it when the width is left to it; a terminal's own width wins on a terminal)."""
    return None if stream.isatty() or os.environ.get("COLUMNS", "").isdigit() else 160


console = SafeConsole(width=_width(sys.stdout), emoji=False)
err_console = SafeConsole(stderr=True, width=_width(sys.stderr), emoji=False)


def literal(value: object) -> str:
    """Text from a user's file, folder or command line (class names, paths, messages quoting them) as rich prints
    it literally: hidden characters as visible escapes (``text.printable``), rich markup escaped."""
    return escape(printable(value))


def warn(message: str) -> None:
    err_console.print(f"[yellow]warning:[/] {literal(message)}", highlight=False, soft_wrap=True)


def note(message: str) -> None:
    err_console.print(f"[cyan]note:[/] {literal(message)}", highlight=False, soft_wrap=True)


def status(message: str) -> None:
    err_console.print(f"[dim]-> {literal(message)}[/]", highlight=False)


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _top1(m: dict) -> str:
    ci = m.get("top1_agreement_ci95")
    text = _fmt(m["top1_agreement"], ".3f")
    return f"{text} [{ci[0]:.2f}, {ci[1]:.2f}]" if ci and text != "-" else text


def parity_table(report, title: str | None = None) -> Table:
    has_acc = any("accuracy" in a.metrics for a in report.artifacts)
    notes = [f"note: {literal(report.reference_note)}"] if getattr(report, "reference_note", None) else []
    if report.n_images < SMALL_SAMPLE:
        notes.append(f"note: a verdict on {report.n_images} images: one image moves top-1 by "
                     f"{100 / max(report.n_images, 1):.1f} points (95% interval in brackets); pass --data with "
                     f"{SMALL_SAMPLE}+ of your own images for a firmer one")
    info = getattr(report, "data_info", None)
    if info:
        what = f"of {literal(report.data)}, {held_out_text(info)}"
    else:
        what = f"({literal(report.data)})"
    table = Table(title=title or f"parity vs {literal(report.reference)} on {report.n_images} images {what}",
                  caption="\n".join(notes) or None, caption_justify="left")
    for col in ("artifact", "precision", "max |diff|", "mean |diff|", "cos min", "top-1 [95% CI]", "top-5"):
        table.add_column(col, justify="left" if col in ("artifact", "precision") else "right")
    if has_acc:
        for col in ("acc %", "ref acc %", "drop pts"):
            table.add_column(col, justify="right")
    table.add_column("result")
    for a in report.artifacts:
        m = a.metrics
        row = [literal(a.path), literal(a.precision), _fmt(m["max_abs_diff"], ".2e"), _fmt(m["mean_abs_diff"], ".2e"),
               _fmt(m["cosine_min"], ".6f"), _top1(m), _fmt(m["top5_agreement"], ".3f")]
        if has_acc:
            row += [_fmt(m.get("accuracy"), ".2f"), _fmt(m.get("reference_accuracy"), ".2f"),
                    _fmt(m.get("accuracy_drop"), "+.2f")]
        row.append("[green]pass[/]" if a.passed else f"[red]FAIL[/] {literal('; '.join(a.failures))}")
        table.add_row(*row)
    return table
