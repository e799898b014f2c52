"""Where an export's time goes: wall seconds per stage, recorded in the manifest as ``timings``.

A stage that runs more than once (a graph quantized again after its accuracy budget) adds up under its name.
The stages are the whole export in the order they ran, so their sum is the export's wall time (the CLI prints
it as its last line).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager


class Timings:
    """``{stage: seconds}``, filled by :meth:`stage` around each step."""

    def __init__(self) -> None:
        self.stages: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - start)

    def add(self, name: str, seconds: float) -> None:
        self.stages[name] = self.stages.get(name, 0.0) + seconds

    @property
    def total(self) -> float:
        return sum(self.stages.values())

    def to_json(self) -> dict[str, float]:
        return {name: round(seconds, 3) for name, seconds in self.stages.items()}

    def summary(self) -> str:
        """One line: the total, then every stage of at least 0.05 s, slowest first."""
        parts = [f"{name} {seconds:.1f}" for name, seconds in sorted(self.stages.items(), key=lambda kv: -kv[1])
                 if seconds >= 0.05]
        return f"export took {self.total:.1f} s" + (f" ({', '.join(parts)})" if parts else "")

