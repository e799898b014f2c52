"""Typed checks for the JSON records deploykit reads back (manifest, bench results): one small loader, no library.

Why not pydantic (which Typer already installs): its import and model building cost ~180 ms at start-up, 12% of a
whole ``deploykit predict`` on a ResNet-18 export here (more on a Jetson's cores), for five flat records. These
helpers check exactly what the code then uses -- type, range, pattern -- and name the field that is wrong:
``deploykit.json: field artifacts.0.path: must match ...``. Unknown keys are left alone (newer files still load).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Any


class SchemaError(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"field {field or '(top level)'}: {message}")
        self.field = field


def _join(where: str, key: str | int) -> str:
    return f"{where}.{key}" if where else str(key)


def obj(value: Any, where: str) -> dict:
    if not isinstance(value, dict):
        raise SchemaError(where, f"must be an object, got {_kind(value)}")
    return value


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def get(record: dict, key: str, where: str, check: Callable[[Any, str], Any], *, optional: bool = False) -> Any:
    """``check(record[key])``; a missing key (or null when ``optional``) is allowed only when ``optional``."""
    field = _join(where, key)
    if key not in record or record[key] is None:
        if optional:
            return None
        raise SchemaError(field, "is missing")
    return check(record[key], field)


def text(max_length: int = 256, pattern: str | None = None, printable: bool = True) -> Callable[[Any, str], str]:
    compiled = re.compile(pattern) if pattern else None

    def check(value: Any, field: str) -> str:
        if not isinstance(value, str):
            raise SchemaError(field, f"must be a string, got {_kind(value)}")
        if len(value) > max_length:
            raise SchemaError(field, f"is longer than {max_length} characters")
        if compiled is not None and not compiled.fullmatch(value):
            raise SchemaError(field, f"must match {pattern}")
        if printable and re.search(r"[\x00-\x1f\x7f-\x9f]", value):
            raise SchemaError(field, "holds control characters")
        return value

    return check


def one_of(choices: Sequence[str]) -> Callable[[Any, str], str]:
    def check(value: Any, field: str) -> str:
        if value not in choices:
            raise SchemaError(field, f"must be one of {', '.join(choices)}, got {str(value)[:40]!r}")
        return value

    return check


def whole(lo: int, hi: int) -> Callable[[Any, str], int]:
    def check(value: Any, field: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise SchemaError(field, f"must be a whole number in {lo}..{hi}, got {str(value)[:40]}")
        return value

    return check


def number(lo: float = -math.inf, hi: float = math.inf) -> Callable[[Any, str], float]:
    def check(value: Any, field: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or not lo <= value <= hi:
            raise SchemaError(field, f"must be a finite number in [{lo:g}, {hi:g}], got {str(value)[:40]}")
        return float(value)

    return check


def items(check_item: Callable[[Any, str], Any], lo: int = 0, hi: int = 1 << 20) -> Callable[[Any, str], list]:
    def check(value: Any, field: str) -> list:
        if not isinstance(value, list):
            raise SchemaError(field, f"must be a list, got {_kind(value)}")
        if not lo <= len(value) <= hi:
            raise SchemaError(field, f"must hold {lo}..{hi} items, got {len(value)}")
        return [check_item(v, _join(field, i)) for i, v in enumerate(value)]

    return check


def nullable(check_item: Callable[[Any, str], Any]) -> Callable[[Any, str], Any]:
    return lambda value, field: None if value is None else check_item(value, field)


def record(check_fields: Callable[[dict, str], Any]) -> Callable[[Any, str], dict]:
    """An object whose fields ``check_fields(value, field)`` checks; returns the object."""
    def check(value: Any, field: str) -> dict:
        check_fields(obj(value, field), field)
        return value

    return check


def boolean(value: Any, field: str) -> bool:
    if not isinstance(value, bool):
        raise SchemaError(field, f"must be true or false, got {type(value).__name__}")
    return value


def any_object(value: Any, field: str) -> dict:
    return obj(value, field)
