"""The Typer command class every `deploykit` command uses: help that reads like the README.

Typer shows a ``<bool>`` type beside every flag (yet ``--fp16 true`` is a usage error) and writes required
arguments as ``{model}`` in the usage line. Here flags show no type, and usage names arguments as the README
does: ``deploykit export [OPTIONS] MODEL``, ``deploykit predict [OPTIONS] ARTIFACT IMAGES...``.
"""

from __future__ import annotations

import inspect
from typing import Annotated

import typer
from typer.core import TyperCommand

from deploykit import __version__
from deploykit.errors import InputError


class FlagsWithoutType:
    """A flag takes no value, so its help row shows no type (Typer would show ``<bool>``)."""

    def get_params(self, ctx):
        params = super().get_params(ctx)
        for param in params:
            if param.param_type_name == "option" and getattr(param, "is_flag", False) and param.metavar is None:
                param.metavar = ""
        return params


# Every number a command takes has a finite range, checked once here before the command runs (its own checks
# then say more, e.g. a lower bound with its reason). Options not listed: finite, and within int32 for whole
# numbers -- nothing deploykit counts or sizes goes beyond that. (lowest, highest); None: no bound of that side
# beyond the default one.
MAX_INT = 2**31 - 1
NUMBER_RANGES: dict[str, tuple[float | None, float | None]] = {
    "--iters": (None, 1_000_000), "--seconds": (None, 86_400), "--warmup": (None, 100_000),
    "--threads": (None, 4096), "--batch": (None, 4096), "--batch-size": (None, 65_536), "--epochs": (None, 100_000),
    "--seed": (0, 2**32 - 1), "--lr": (None, 10.0), "--topk": (None, 1_000_000), "--calib-size": (None, 1_000_000),
    "--min-calib": (None, 1_000_000), "--workspace": (None, 1024.0), "--unfreeze-after": (None, 100_000),
}


def check_numbers(ctx) -> None:
    """Refuse, in one line, a number option outside its range (``NUMBER_RANGES``) or not finite (inf, 1e309)."""
    import math

    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or param.param_type_name != "option":
            continue
        flag = max(param.opts, key=len)
        if not math.isfinite(value):
            raise InputError(f"{flag} must be a finite number, got {value}")
        lo, hi = NUMBER_RANGES.get(flag, (None, None))
        hi = (MAX_INT if isinstance(value, int) else 1e12) if hi is None else hi
        if value > hi or value < (-MAX_INT if lo is None else lo):
            shown = f"at most {hi:,}" if lo is None else f"between {lo:,} and {hi:,}"
            raise InputError(f"{flag} must be {shown}, got {value:,}")


class DeployKitCommand(FlagsWithoutType, TyperCommand):
    def invoke(self, ctx):
        check_numbers(ctx)
        return super().invoke(ctx)

    def collect_usage_pieces(self, ctx) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name != "argument":
                continue
            name = (param.metavar or param.name or "").upper()
            name = name if param.required else f"[{name}]"
            pieces.append(name + ("..." if param.nargs != 1 else ""))
        return pieces


def use_everywhere(app) -> None:
    """Give every command registered on ``app`` without a class of its own :class:`DeployKitCommand`, and the
    group itself (``deploykit --help``) flags without a type."""
    for info in app.registered_commands:
        if info.cls is None or info.cls is TyperCommand:
            info.cls = DeployKitCommand
    group = app.info.cls
    if isinstance(group, type) and not issubclass(group, FlagsWithoutType):
        app.info.cls = type(group.__name__, (FlagsWithoutType, group), {"__doc__": group.__doc__})


def _print_version(value: bool) -> None:
    if value:
        print(f"deploykit {__version__}")
        raise typer.Exit()


VersionOpt = Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True, metavar="",
                                          help="Print deploykit's version and exit.")]


def add_version_option(app) -> None:
    """``deploykit --version``, beside whatever global options the app's own callback declares: Typer keeps one
    callback per app, so that callback (if any) is wrapped with one more parameter rather than replaced."""
    info = app.registered_callback
    base = info.callback if info is not None else None
    if base is not None and "version" in inspect.signature(base).parameters:
        return

    def callback(**kwargs):
        kwargs.pop("version", None)
        return base(**kwargs) if base is not None else None

    params = list(inspect.signature(base, eval_str=True).parameters.values()) if base is not None else []
    params.append(inspect.Parameter("version", inspect.Parameter.KEYWORD_ONLY, default=False, annotation=VersionOpt))
    callback.__signature__ = inspect.Signature(params)
    callback.__annotations__ = {p.name: p.annotation for p in params}
    callback.__doc__ = base.__doc__ if base is not None else None
    if info is None:
        app.callback()(callback)
    else:
        info.callback = callback
