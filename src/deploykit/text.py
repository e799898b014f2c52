"""Text that comes from users' files (class names, paths, metadata) is data, never markup or terminal control."""

from __future__ import annotations

import functools
import re

from deploykit.errors import InputError

# What a terminal, an editor or a renderer acts on instead of showing: C0 controls but tab/newline (ESC, CR, BEL...),
# DEL and C1; bidi embeddings, overrides and isolates (they reorder what is shown: "Trojan Source"); zero-width and
# invisible characters (a name that looks like another); line/paragraph separators.
_HIDDEN = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2064"
                     "\u2066-\u2069\u206a-\u206f\ufeff\ufff9-\ufffb]")
_CONTROL = _HIDDEN
_NEWLINES = re.compile(r"[\n\t]+")


def visible(char: str) -> str:
    """One hidden character as a visible escape: ``\x1b``, ``\u202e``."""
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def reveal(text: str) -> str:
    """``text`` with every hidden character (see ``_HIDDEN``) as a visible escape; newlines and tabs kept."""
    return _HIDDEN.sub(lambda m: visible(m.group()), text)


def printable(value: object) -> str:
    """``value`` as one line of text that shows what it holds: newlines and tabs as spaces, every character a
    terminal or renderer would act on (controls, ESC, bidi, zero-width) as a visible escape such as ``\x1b``.
    The one escaping function for text from files, folders and the command line: the terminal (``cli.render``),
    report.md (:func:`markdown_cell`) and plot labels (``evaluate.plot_confusion``) all pass it through."""
    return reveal(_NEWLINES.sub(" ", str(value)))


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
    unique_names(value, where)
    return list(value)


def unique_names(names: list[str], where: str) -> None:
    """Refuse a class name given twice: two outputs with one name make every prediction of either ambiguous."""
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise InputError(f"{where}: class name {printable(dup)!r} is given twice; class names must be unique")


def plain_plot_text(plot):
    """Run ``plot`` (a matplotlib figure writer) with its labels drawn as plain text: no mathtext, no TeX, so a class
    name such as ``$\\frac{$`` is shown as typed instead of parsed (and crashing). Pass labels through
    :func:`printable` too."""

    @functools.wraps(plot)
    def wrapper(*args, **kwargs):
        import matplotlib

        with matplotlib.rc_context({"text.parse_math": False, "text.usetex": False}):
            return plot(*args, **kwargs)

    return wrapper
