"""Runners share one interface (``Runner.infer``); heavy frameworks are imported lazily."""

from deploykit.runners.base import Runner

__all__ = ["Runner"]
