"""Text that comes from users' files (class names, paths, metadata) is data, never markup or terminal control."""

from __future__ import annotations

import re

from deploykit.errors import InputError

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # C0 (but tab/newline) and C1 controls, incl. ESC
_NEWLINES = re.compile(r"[\r\n\t]+")


def printable(value: object) -> str:
    """``value`` as one line of plain text: control characters (terminal escape sequences) removed."""
    return _CONTROL.sub("", _NEWLINES.sub(" ", str(value)))


def has_control(value: str) -> bool:
    return bool(_CONTROL.search(value) or _NEWLINES.search(value))


def markdown_cell(value: object) -> str:
    """``value`` as literal text inside a Markdown table cell: printable, HTML and Markdown syntax escaped."""
    text = printable(value)
    # "&" only where it would start an entity (&amp; &#60;): a raw `a && b` stays readable in report.md
    text = re.sub(r"&(?=#?\w+;)", "&amp;", text).replace("<", "&lt;").replace(">", "&gt;")
    return re.sub(r"([\\`*_{}\[\]()#+!|~])", r"\\\1", text)


def class_names_from(value: object, where: str) -> list[str] | None:
    """Class names from a file (manifest, ONNX metadata, checkpoint): a list of printable strings, or None."""
    if value is None:
        return None
    if not isinstance(value, list) or not 1 <= len(value) <= 1_000_000 or \
            not all(isinstance(v, str) and len(v) <= 256 for v in value):
        raise InputError(f"{where}: class names must be a list of strings of at most 256 characters")
    return list(value)
