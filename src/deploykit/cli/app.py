"""The Typer app and the one place that turns exceptions into a one-line message and an exit code.

* DeployKitError: the user's mistake or a missing prerequisite -- ``error: <message>``, the error's exit code.
* Ctrl-C: ``interrupted``, exit 130 (an export folder is a transaction: nothing half-written stays behind).
* anything else is a bug: ``internal error: <type>: <message>`` and exit 70 (EX_SOFTWARE); ``--debug`` or
  ``DEPLOYKIT_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
from typing import Annotated, Optional

import typer
from typer.core import TyperGroup

from deploykit.cli.command import check_numbers
from deploykit.cli.render import err_console, literal
from deploykit.errors import DeployKitError, interrupt_requested, missing_extra
from deploykit.preprocess import set_image_limits

INTERNAL_ERROR_EXIT = 70  # sysexits.h EX_SOFTWARE
INTERRUPTED_EXIT = 130


def debug_enabled() -> bool:
    return os.environ.get("DEPLOYKIT_DEBUG", "").strip().lower() not in ("", "0", "false", "no")


def _error(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {literal(message)}", highlight=False, soft_wrap=True)


class DeployKitGroup(TyperGroup):
    """Catches every exception once for every command: one line on stderr and a distinct exit code."""

    def invoke(self, ctx):
        try:
            check_numbers(ctx)  # the group's own options (--max-image-pixels); each command checks its own
            result = super().invoke(ctx)
        except (typer.Exit, typer.Abort, typer.TyperException):  # Typer's own control flow and usage errors
            raise
        except BaseException as exc:
            # after SIGINT/SIGTERM, whatever the interrupted library turned the KeyboardInterrupt into (torch's
            # exporter raises its own error) ends the command as an interrupt
            if interrupt_requested() and not isinstance(exc, SystemExit):
                self._interrupted(ctx)
            return self._failed(ctx, exc)
        if interrupt_requested():  # a library swallowed the KeyboardInterrupt and the command ran on to its end
            self._interrupted(ctx)
        return result

    @staticmethod
    def _interrupted(ctx) -> None:
        err_console.print("interrupted", highlight=False)
        ctx.exit(INTERRUPTED_EXIT)

    def _failed(self, ctx, exc: BaseException):
        """One line and the exit code for ``exc`` (re-raised here to match it against the handlers below)."""
        try:
            raise exc
        except DeployKitError as exc:
            if debug_enabled():
                raise
            lines = getattr(exc, "lines", None) or [str(exc)]
            _error(lines[0])
            for line in lines[1:]:  # a long message's commands, one per line under the error line
                err_console.print(f"  {literal(line)}", highlight=False, soft_wrap=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            self._interrupted(ctx)
        except SystemExit as exc:  # user code (a --model-def factory) called sys.exit(0): never a silent success
            if debug_enabled() or exc.code not in (0, None):
                raise
            _error(f"user code called sys.exit({exc.code!r}) while deploykit was running; nothing was completed")
            ctx.exit(1)
        except MemoryError:
            if debug_enabled():
                raise
            _error("out of memory; use smaller images, a smaller --batch or a smaller input size")
            ctx.exit(1)
        except OSError as exc:
            if debug_enabled():
                raise
            if exc.errno == errno.EPIPE:  # stdout closed early (`deploykit ... | head`): nothing more to say there
                with contextlib.suppress(OSError):
                    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
                ctx.exit(1)
            if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):  # read-only or immutable (chattr +i)
                _error(f"{exc.strerror}{': ' + str(exc.filename) if exc.filename else ''}; deploykit cannot change "
                       "it -- check its permissions (or attributes such as chattr +i), or choose another location")
                ctx.exit(1)
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                self._internal(ctx, exc)
            _error(f"{exc.strerror}{': ' + str(exc.filename) if exc.filename else ''}; free some space and retry")
            ctx.exit(1)
        except Exception as exc:  # a bug: say so in one line, keep the traceback for --debug
            if debug_enabled():
                raise
            self._internal(ctx, exc)

    @staticmethod
    def _internal(ctx, exc: BaseException) -> None:
        message = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        err_console.print(f"[bold red]internal error:[/] {literal(type(exc).__name__)}: {literal(message)} "
                          "(run with --debug for the traceback; please report it)", highlight=False, soft_wrap=True)
        ctx.exit(INTERNAL_ERROR_EXIT)


class MissingExtras(TyperGroup):
    """An ImportError of a module that an extra provides (torch, scikit-learn, matplotlib) becomes the
    MissingDependencyError naming that extra (``pip install "deploykit[torch]"``, exit 3)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except ImportError as exc:
            missing = missing_extra(exc, ctx.invoked_subcommand)
            if missing is None:
                raise
            raise missing from exc


class App(DeployKitGroup, MissingExtras):
    """DeployKitGroup's one-line errors around MissingExtras (method order: App, DeployKitGroup, MissingExtras)."""


app = typer.Typer(cls=App, no_args_is_help=True, add_completion=False,
                  pretty_exceptions_enable=False, rich_markup_mode="rich",
                  help="PyTorch image classifiers to ONNX, FP16/INT8 and TensorRT -- every step proven with numbers.")


@app.callback()
def _global_options(
    debug: Annotated[bool, typer.Option("--debug", help="Show the full traceback of an internal error "
                                                        "(also DEPLOYKIT_DEBUG=1).")] = False,
    max_image_pixels: Annotated[Optional[int], typer.Option(
        "--max-image-pixels", show_default=False,
        help="Refuse images larger than this many pixels before decoding them (also DEPLOYKIT_MAX_IMAGE_PIXELS) "
             "\\[default: 100000000].")] = None,
) -> None:
    """PyTorch image classifiers to ONNX, FP16/INT8 and TensorRT -- every step proven with numbers."""
    if debug:
        os.environ["DEPLOYKIT_DEBUG"] = "1"
    if max_image_pixels is not None:
        set_image_limits(max_pixels=max_image_pixels)
