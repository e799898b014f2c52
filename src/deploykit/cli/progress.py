"""Progress for long work, on a terminal and in a log.

A rich bar on a terminal; where stderr is a file or a pipe (``deploykit train ... > log 2>&1``, CI) rich draws
nothing at all, so :class:`PlainProgress` writes plain lines instead: one when a task starts, one whenever its
description changes (a bench case), at most one every ``DEPLOYKIT_PROGRESS_SECONDS`` (default 30) while it runs,
and one when it completes. :func:`progress_bar` picks one of the two; both take the same calls
(``add_task``, ``update``, ``advance``, ``remove_task``, ``refresh``, ``console.print``).

A step may also take long between two updates (one slow layer, a long verification): ``ConsoleReporter``'s
heartbeat then prints for it (:meth:`PlainProgress.heartbeat`, or a ``still ...`` line naming the last step), so a
log never goes ``DEPLOYKIT_PROGRESS_SECONDS`` without a line while deploykit works.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

DEFAULT_INTERVAL_S = 30.0
_last_line = [time.monotonic()]  # when deploykit last printed a line to the user (the heartbeat reads it)


def touch() -> None:
    """A line was just printed: the heartbeat (``deploykit.cli.messages``) waits a full interval from now."""
    _last_line[0] = time.monotonic()


def quiet_for() -> float:
    return time.monotonic() - _last_line[0]


def interval_s() -> float:
    try:
        return max(float(os.environ.get("DEPLOYKIT_PROGRESS_SECONDS", DEFAULT_INTERVAL_S)), 0.0)
    except ValueError:
        return DEFAULT_INTERVAL_S


@dataclass
class _Task:
    description: str
    total: float | None
    completed: float = 0.0
    fields: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    last_line: float = field(default_factory=time.monotonic)
    finished: bool = False


class _PlainConsole:
    def __init__(self, stream: TextIO) -> None:
        self.file = stream

    def print(self, *objects: Any, **_: Any) -> None:
        print(*objects, file=self.file, flush=True)


class PlainProgress:
    """The part of ``rich.progress.Progress`` deploykit uses, as plain timestamped lines."""

    def __init__(self, stream: TextIO | None = None, interval: float | None = None) -> None:
        self.file = stream or sys.stderr
        self.interval = interval_s() if interval is None else interval
        self.console = _PlainConsole(self.file)
        self._tasks: dict[int, _Task] = {}

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def _line(self, task: _Task) -> None:
        now = time.monotonic()
        task.last_line = now
        touch()
        done = f"{task.completed:g}" + (f"/{task.total:g}" if task.total else "")
        fields = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in task.fields.items()
                           if not (isinstance(v, float) and v != v))  # NaN: nothing measured yet
        print(f"{time.strftime('%H:%M:%S')} {task.description}: {done}" + (f"  {fields}" if fields else "")
              + f"  {now - task.started:.0f} s", file=self.file, flush=True)

    def add_task(self, description: str, total: float | None = None, **fields: Any) -> int:
        task_id = len(self._tasks)
        self._tasks[task_id] = task = _Task(description, total, fields=dict(fields))
        if total is not None:  # a task without a size yet (bench before its cases are known) starts silently
            self._line(task)
        return task_id

    def update(self, task_id: int, *, total: float | None = None, completed: float | None = None,
               advance: float | None = None, description: str | None = None, **fields: Any) -> None:
        task = self._tasks[task_id]
        changed = description is not None and description != task.description
        if description is not None:
            task.description = description
        if total is not None:
            task.total = total
        if completed is not None:
            task.completed = completed
        if advance is not None:
            task.completed += advance
        task.fields.update(fields)
        done = bool(task.total) and task.completed >= task.total
        if done and task.finished:
            return
        task.finished = done
        if changed or done or time.monotonic() - task.last_line >= self.interval:
            self._line(task)

    def advance(self, task_id: int, advance: float = 1) -> None:
        self.update(task_id, advance=advance)

    def heartbeat(self) -> bool:
        """A line for each running task silent for an interval (its step takes long: no update comes); False
        when no task is running."""
        running = [t for t in list(self._tasks.values()) if not t.finished]
        for task in running:
            if time.monotonic() - task.last_line >= self.interval:
                self._line(task)
        return bool(running)

    def remove_task(self, task_id: int) -> None:
        self._tasks.pop(task_id, None)

    def refresh(self) -> None:
        return None


def progress_bar(*columns: Any, console=None, **kwargs: Any):
    """``rich.progress.Progress(*columns, console=console, **kwargs)`` on a terminal; :class:`PlainProgress` on the
    console's stream where that is a file or a pipe."""
    if console is None:
        from rich.console import Console

        console = Console(stderr=True)
    if console.is_terminal:
        from rich.progress import Progress

        return Progress(*columns, console=console, **kwargs)
    return PlainProgress(console.file)
