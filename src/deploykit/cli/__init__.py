"""Command line: thin Typer commands that parse options, call the library, and render with rich."""

from deploykit.cli import export, models, predict, verify  # noqa: F401  (register commands)
from deploykit.cli import bench  # noqa: F401,E402  (deploykit bench)
from deploykit.cli import data, eval, train  # noqa: F401  (deploykit train / eval / data)
from deploykit.cli import build  # noqa: F401,E402  (deploykit build)
from deploykit.cli import report  # noqa: F401,E402  (deploykit report)
from deploykit.cli import check  # noqa: F401,E402  (deploykit check)
from deploykit.cli.app import app
from deploykit.cli.command import add_version_option, use_everywhere


use_everywhere(app)
add_version_option(app)


def main() -> None:
    app()


__all__ = ["app", "main"]
