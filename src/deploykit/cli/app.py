"""The Typer app and the one place that turns DeployKitError into a one-line message and an exit code."""

from __future__ import annotations

import typer
from rich.markup import escape
from typer.core import TyperGroup

from deploykit.cli.render import err_console
from deploykit.errors import DeployKitError, missing_extra


class DeployKitGroup(TyperGroup):
    """Catches DeployKitError once for every command: one line on stderr, the error's exit code. A missing
    optional package (torch, scikit-learn, matplotlib) becomes the MissingDependencyError naming its extra."""

    def invoke(self, ctx):
        try:
            try:
                return super().invoke(ctx)
            except ImportError as exc:
                missing = missing_extra(exc, ctx.invoked_subcommand)
                if missing is None:
                    raise
                raise missing from exc
        except DeployKitError as exc:
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            ctx.exit(exc.exit_code)


app = typer.Typer(cls=DeployKitGroup, no_args_is_help=True, add_completion=False,
                  pretty_exceptions_enable=False, rich_markup_mode="rich",
                  help="PyTorch image classifiers to ONNX, FP16/INT8 and TensorRT -- every step proven with numbers.")
