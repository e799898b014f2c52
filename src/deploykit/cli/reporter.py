"""The CLI's side of the reporting seam (``deploykit.reporter.Reporter``): rich on a terminal, plain lines in a log.

One live bar group at a time: a stage that opens a task while another is running (a calibration pass inside an
export) adds a row to the same group, so warnings printed meanwhile land above the bars, not through them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from rich.console import Console

from deploykit.cli.progress import progress_bar
from deploykit.cli.render import err_console, literal


class _BarTask:
    def __init__(self, bar, task_id, redraw: bool = False) -> None:
        self._bar, self._id, self._redraw = bar, task_id, redraw

    def advance(self, n: float = 1) -> None:
        self._bar.advance(self._id, n)
        if self._redraw:
            self._bar.refresh()

    def update(self, *, completed: float | None = None, total: float | None = None,
               description: str | None = None, **fields: Any) -> None:
        kwargs: dict[str, Any] = dict(fields)
        if completed is not None:
            kwargs["completed"] = completed
        if total is not None:
            kwargs["total"] = total
        if description is not None:
            kwargs["description"] = description
        self._bar.update(self._id, **kwargs)
        if self._redraw:
            self._bar.refresh()


class ConsoleReporter:
    """Status, warnings and notes on stderr; counted work as a transient bar (plain lines where stderr is not a
    terminal). ``columns`` are rich progress columns; the default shows description, bar, M/N and time left.
    ``auto_refresh=False``: no redraw thread (it would take CPU from work being timed); the bar is redrawn on each
    update instead."""

    def __init__(self, console: Console | None = None, *columns: Any, transient: bool = True,
                 auto_refresh: bool = True) -> None:
        self.console = console or err_console
        self.columns = columns
        self.transient = transient
        self.auto_refresh = auto_refresh
        self._bar = None

    def _print(self, text: str, **kwargs: Any) -> None:
        (self._bar.console if self._bar is not None else self.console).print(text, **kwargs)

    def status(self, message: str) -> None:
        self._print(f"[dim]-> {literal(message)}[/]", highlight=False)

    def warn(self, message: str) -> None:
        self._print(f"[yellow]warning:[/] {literal(message)}", highlight=False, soft_wrap=True)

    def note(self, message: str) -> None:
        self._print(f"[cyan]note:[/] {literal(message)}", highlight=False, soft_wrap=True)

    def log(self, line: str) -> None:
        self._print(literal(line), highlight=False)

    def _columns(self) -> tuple:
        if self.columns:
            return self.columns
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

        return (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())

    @contextlib.contextmanager
    def progress(self, description: str, total: float | None = None, **fields: Any) -> Iterator[_BarTask]:
        owner = self._bar is None
        if owner:
            extra = {} if self.auto_refresh else {"auto_refresh": False}
            self._bar = progress_bar(*self._columns(), console=self.console, transient=self.transient, **extra)
            self._bar.__enter__()
        bar = self._bar
        task_id = bar.add_task(literal(description), total=total, **fields)
        try:
            yield _BarTask(bar, task_id, redraw=not self.auto_refresh)
        finally:
            bar.remove_task(task_id)
            if owner:
                self._bar = None
                bar.__exit__(None, None, None)
