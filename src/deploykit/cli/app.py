"""The Typer app and the one place that turns DeployKitError into a one-line message and an exit code."""

from __future__ import annotations

import typer
from rich.markup import escape
from typer.core import TyperGroup

from deploykit.cli.render import err_console
from deploykit.errors import DeployKitError


class DeployKitGroup(TyperGroup):
    """Catches DeployKitError once for every command: one line on stderr, the error's exit code."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except DeployKitError as exc:
            err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
            ctx.exit(exc.exit_code)


class MissingExtras(TyperGroup):
    """An ImportError of a module that an extra provides (torch, scikit-learn, matplotlib) becomes the
    MissingDependencyError naming that extra (``pip install "deploykit[torch]"``, exit 3)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except ImportError as exc:
            from deploykit.errors import missing_extra

            missing = missing_extra(exc, ctx.invoked_subcommand)
            if missing is None:
                raise
            raise missing from exc


class App(DeployKitGroup, MissingExtras):
    """DeployKitGroup's one-line errors around MissingExtras (method order: App, DeployKitGroup, MissingExtras)."""


app = typer.Typer(cls=App, no_args_is_help=True, add_completion=False,
                  pretty_exceptions_enable=False, rich_markup_mode="rich",
                  help="PyTorch image classifiers to ONNX, FP16/INT8 and TensorRT -- every step proven with numbers.")
