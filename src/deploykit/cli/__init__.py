"""Command line: thin Typer commands that parse options, call the library, and render with rich."""

from deploykit.cli import export, models, predict, verify  # noqa: F401  (register commands)
from deploykit.cli import bench  # noqa: F401,E402  (deploykit bench)
from deploykit.cli import data, eval, train  # noqa: F401  (deploykit train / eval / data)
from deploykit.cli import build  # noqa: F401,E402  (deploykit build)
from deploykit.cli import report  # noqa: F401,E402  (deploykit report)
from deploykit.cli import check  # noqa: F401,E402  (deploykit check)
from deploykit.cli.app import INTERRUPTED_EXIT, app
from deploykit.cli.command import add_version_option, use_everywhere
from deploykit.errors import interrupt, interrupt_requested


use_everywhere(app)
add_version_option(app)


def main() -> None:
    """The ``deploykit`` command. SIGINT and SIGTERM raise KeyboardInterrupt (once: cleanup is not interrupted
    again), which the app ends as ``interrupted``, exit 130. That exit skips the interpreter's teardown: torch,
    ONNX Runtime and OpenVINO objects still referenced by the interrupted frames would otherwise be destroyed
    during finalization, in no particular order, and that can crash (SIGSEGV) after the work was cleaned up."""
    import os
    import signal
    import sys

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, interrupt)
    try:
        app()
    except SystemExit as exc:
        if interrupt_requested():
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except (OSError, ValueError):
                    pass
            os._exit(INTERRUPTED_EXIT)
        raise


__all__ = ["app", "main"]
