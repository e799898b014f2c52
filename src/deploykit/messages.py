"""The one seam through which the library tells a person what it is doing.

Every long stage (export, calibration, sensitivity, engine build, bench, train, eval) takes a ``reporter`` and
calls four things on it: :meth:`Reporter.status` (a step starts), :meth:`Reporter.warn` (something the user should
fix or know), :meth:`Reporter.note` (context for a result), and :meth:`Reporter.progress` (a bar for counted work).
:meth:`Reporter.log` prints a plain line above any live bar (a training epoch).

The library never imports rich: the CLI passes ``deploykit.cli.messages.ConsoleReporter`` (rich bars on a
terminal, plain timestamped lines in a log). A library call from Python gets :data:`SILENT` and prints nothing;
:class:`Recorder` keeps the messages for a caller (and for tests) to inspect.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ContextManager, Protocol


class Task(Protocol):
    """A running piece of counted work."""

    def advance(self, n: float = 1) -> None: ...

    def update(self, *, completed: float | None = None, total: float | None = None,
               description: str | None = None, **fields: Any) -> None: ...


class Reporter(Protocol):
    def status(self, message: str) -> None: ...

    def warn(self, message: str) -> None: ...

    def note(self, message: str) -> None: ...

    def log(self, line: str) -> None: ...

    def progress(self, description: str, total: float | None = None, **fields: Any) -> ContextManager[Task]: ...


class _NoTask:
    def advance(self, n: float = 1) -> None:
        return None

    def update(self, **_: Any) -> None:
        return None


class Silent:
    """Says nothing: the default for every library call."""

    def status(self, message: str) -> None:
        return None

    warn = note = log = status

    def progress(self, description: str, total: float | None = None, **fields: Any) -> ContextManager[Task]:
        return contextlib.nullcontext(_NoTask())


SILENT: Reporter = Silent()


@dataclass
class _RecordedTask:
    description: str
    total: float | None
    completed: float = 0.0
    fields: dict[str, Any] = field(default_factory=dict)

    def advance(self, n: float = 1) -> None:
        self.completed += n

    def update(self, *, completed: float | None = None, total: float | None = None,
               description: str | None = None, **fields: Any) -> None:
        if completed is not None:
            self.completed = completed
        if total is not None:
            self.total = total
        if description is not None:
            self.description = description
        self.fields.update(fields)


@dataclass
class Recorder:
    """Keeps every message, in order, as ``(kind, text)``; tasks as they ended."""

    messages: list[tuple[str, str]] = field(default_factory=list)
    tasks: list[_RecordedTask] = field(default_factory=list)

    def status(self, message: str) -> None:
        self.messages.append(("status", message))

    def warn(self, message: str) -> None:
        self.messages.append(("warn", message))

    def note(self, message: str) -> None:
        self.messages.append(("note", message))

    def log(self, line: str) -> None:
        self.messages.append(("log", line))

    @contextlib.contextmanager
    def progress(self, description: str, total: float | None = None, **fields: Any) -> Iterator[Task]:
        task = _RecordedTask(description, total, fields=dict(fields))
        try:
            yield task
        finally:
            self.tasks.append(task)

    def of(self, kind: str) -> list[str]:
        return [text for k, text in self.messages if k == kind]


def reporter_or_silent(reporter: Reporter | None) -> Reporter:
    return SILENT if reporter is None else reporter
