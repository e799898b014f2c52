"""The CLI's side of the reporting seam (``deploykit.messages.Reporter``): rich on a terminal, plain lines in a log.

One live bar group at a time: a stage that opens a task while another is running (a calibration pass inside an
export) adds a row to the same group, so warnings printed meanwhile land above the bars, not through them.
"""

from __future__ import annotations

import contextlib
import threading
import time
import weakref
from collections.abc import Iterator
from typing import Any

from rich.console import Console

from deploykit.cli.progress import interval_s, progress_bar, quiet_for, touch
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
        self._step: str | None = None  # the last status: what the heartbeat says is still running
        self._step_started = time.monotonic()
        self._heart: threading.Thread | None = None

    def _print(self, text: str, **kwargs: Any) -> None:
        (self._bar.console if self._bar is not None else self.console).print(text, **kwargs)
        touch()

    def status(self, message: str) -> None:
        self._step, self._step_started = message, time.monotonic()
        self._print(f"[dim]-> {literal(message)}[/]", highlight=False)
        self._start_heartbeat()

    def _start_heartbeat(self) -> None:
        """A daemon thread that prints a plain line whenever nothing was printed for ``DEPLOYKIT_PROGRESS_SECONDS``
        (30 s) while a step or a bar is open: no step is silent for longer, in a log or on a terminal. It holds
        the reporter weakly and ends with it; it sleeps between checks, taking no CPU from work being timed."""
        if self._heart is not None:
            return
        me = weakref.ref(self)

        def beat() -> None:
            while True:
                time.sleep(min(max(interval_s() / 4, 0.05), 1.0))
                reporter = me()
                if reporter is None:
                    return
                reporter._beat()
                del reporter

        self._heart = threading.Thread(target=beat, name="deploykit-heartbeat", daemon=True)
        self._heart.start()

    def _beat(self) -> None:
        if quiet_for() < interval_s():
            return
        bar = self._bar
        if bar is not None and hasattr(bar, "heartbeat"):  # plain lines: a line per silent task
            if bar.heartbeat():
                return
        if bar is not None and getattr(bar, "tasks", None):  # a rich bar: name its newest task
            task = bar.tasks[-1]
            what, since = task.description, task.elapsed or 0.0
        elif self._step is not None:
            what, since = literal(self._step), time.monotonic() - self._step_started
        else:
            return
        self._print(f"{time.strftime('%H:%M:%S')} still {what}: {since:.0f} s since it started", highlight=False)

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
        self._start_heartbeat()
        task_id = bar.add_task(literal(description), total=total, **fields)
        try:
            yield _BarTask(bar, task_id, redraw=not self.auto_refresh)
        finally:
            bar.remove_task(task_id)
            if owner:
                self._bar = None
                bar.__exit__(None, None, None)
