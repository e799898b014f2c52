"""TensorRT versions as targets of the operator-table check (:mod:`deploykit.tensorrt.check`): which published
table each version is checked against, the opset range it takes, and how it types a network -- read from the
generated tables (``capabilities_data.py``, ``tools/trt_capabilities.py``; provenance and gaps in
docs/tensorrt-check.md). Pure: no onnx, no TensorRT."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from deploykit.errors import InputError
from deploykit.tensorrt.capabilities_data import DATA

OLDEST = (10, 0)  # deploykit's TensorRT floor (tensorrt.host.MIN_TENSORRT); JetPack 6 ships 10.3
DEFAULT_TARGETS = ("10.3", "11.5")  # JetPack 6 and the newest 11.x with published release notes
STRONG_TYPING_SINCE = (10, 12)  # NVIDIA: strong typing fully available from 10.12 (deprecates weak typing)


def _key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))


@dataclass(frozen=True)
class Target:
    """A TensorRT version and what the check uses for it."""

    version: str  # major.minor, e.g. "10.3"
    table: str  # the operator table used (its own, or the nearest earlier published one)
    typing: str  # "weak", "strong" or "strong-only"
    platform: str
    gap: str | None  # why another version's table is used, or None
    changelog: tuple[str, ...] = ()

    @property
    def opset(self) -> tuple[int, int]:
        lo, hi = DATA["tables"][self.table]["opset"]
        return lo, hi

    def source(self) -> dict[str, Any]:
        return dict(DATA["tables"][self.table]["source"])

    def operator_table(self) -> dict[str, Any]:
        """The published table the check reads: ``operators`` (per op: supported, types, restriction),
        ``opset``, ``header_version``, ``source``."""
        return DATA["tables"][self.table]


def known_targets() -> list[str]:
    return sorted(DATA["targets"], key=_key)


def resolve_target(text: str | tuple[int, ...]) -> Target:
    """``"10.3"``, ``"10.3.0.26"`` or ``(10, 3, 0)`` -> the Target for TensorRT 10.3. A version without a table of
    its own takes the nearest earlier one (said in ``gap``); one older than 10.0 is an InputError."""
    if isinstance(text, tuple):
        parts = text
    else:
        match = re.fullmatch(r"\s*(\d+)\.(\d+)(?:\.\d+)*\s*", str(text))
        if match is None:
            raise InputError(f"TensorRT version {str(text)[:40]!r} is not MAJOR.MINOR (e.g. 10.3 or 11.5)")
        parts = (int(match.group(1)), int(match.group(2)))
    major_minor = tuple(parts[:2])
    version = f"{major_minor[0]}.{major_minor[1]}"
    if major_minor < OLDEST:
        raise InputError(f"TensorRT {version} is older than deploykit supports (10.0; JetPack 6 ships 10.3)")
    data = DATA
    known = data["targets"].get(version)
    if known is not None:
        return Target(version, known["table"], known["typing"], known["platform"], known["gap"],
                      tuple(known["changelog"]))
    tables = sorted(data["tables"], key=_key)
    earlier = [t for t in tables if _key(t) <= major_minor] or tables[:1]
    table = earlier[-1]
    typing = "strong-only" if major_minor >= (11, 0) else "strong" if major_minor >= STRONG_TYPING_SINCE else "weak"
    gap = None if table == version else (f"no operator matrix published for TensorRT {version} in the sources read; "
                                         f"the TensorRT {table} table is used")
    return Target(version, table, typing, "not a target deploykit lists", gap)


def parse_targets(text: str | None) -> list[Target]:
    """``"10.3,11.5"`` -> Targets (None: the defaults)."""
    items = [t.strip() for t in (text.split(",") if text else DEFAULT_TARGETS) if t.strip()]
    if not items:
        raise InputError("name at least one TensorRT version, e.g. --trt 10.3,11.5")
    targets = {}
    for item in items:
        target = resolve_target(item)
        targets[target.version] = target
    return list(targets.values())
