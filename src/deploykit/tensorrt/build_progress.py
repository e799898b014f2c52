"""TensorRT's build phases as reporter tasks (:class:`PhaseProgress`), fed by a ``trt.IProgressMonitor``
(:func:`progress_monitor`): what ``deploykit build`` shows while the builder runs."""

from __future__ import annotations

import contextlib
import threading

from deploykit.messages import Reporter, Task


class PhaseProgress:
    """TensorRT's build phases as reporter tasks: one ``reporter.progress`` per phase, a nested phase its own.

    TensorRT calls the monitor from its own threads; a reporter failure must not cancel the build, so every
    call is guarded (a False from ``step_complete`` would cancel it).
    """

    def __init__(self, reporter: Reporter) -> None:
        self.reporter = reporter
        self._open: dict[str, tuple[contextlib.ExitStack, Task, int]] = {}
        self._lock = threading.Lock()

    def started(self, phase: str, parent: str | None, steps: int) -> None:
        with self._lock, contextlib.suppress(Exception):
            self._close(phase)
            stack = contextlib.ExitStack()
            total = max(int(steps), 1)
            task = stack.enter_context(self.reporter.progress(str(phase), total=total))
            self._open[phase] = (stack, task, total)

    def stepped(self, phase: str, step: int) -> None:
        with self._lock, contextlib.suppress(Exception):
            if phase in self._open:
                _, task, total = self._open[phase]
                task.update(completed=min(int(step) + 1, total))

    def finished(self, phase: str) -> None:
        with self._lock, contextlib.suppress(Exception):
            if phase in self._open:
                _, task, total = self._open[phase]
                task.update(completed=total)
            self._close(phase)

    def close(self) -> None:
        """End every phase still open (a failed or cancelled build), innermost first."""
        with self._lock:
            for phase in reversed(list(self._open)):
                with contextlib.suppress(Exception):
                    self._close(phase)

    def _close(self, phase: str) -> None:
        entry = self._open.pop(phase, None)
        if entry is not None:
            entry[0].close()


def progress_monitor(trt, phases: PhaseProgress):
    """A ``trt.IProgressMonitor`` forwarding TensorRT's build phases to ``phases``."""

    class Monitor(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)

        def phase_start(self, phase_name, parent_phase, num_steps):
            phases.started(phase_name, parent_phase, num_steps)

        def step_complete(self, phase_name, step):
            phases.stepped(phase_name, step)
            return True  # False would cancel the build

        def phase_finish(self, phase_name):
            phases.finished(phase_name)

    return Monitor()
