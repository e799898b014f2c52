"""The Typer command class every `deploykit` command uses: help that reads like the README.

Typer shows a ``<bool>`` type beside every flag (yet ``--fp16 true`` is a usage error) and writes required
arguments as ``{model}`` in the usage line. Here flags show no type, and usage names arguments as the README
does: ``deploykit export [OPTIONS] MODEL``, ``deploykit predict [OPTIONS] ARTIFACT IMAGES...``.
"""

from __future__ import annotations

from typer.core import TyperCommand


class FlagsWithoutType:
    """A flag takes no value, so its help row shows no type (Typer would show ``<bool>``)."""

    def get_params(self, ctx):
        params = super().get_params(ctx)
        for param in params:
            if param.param_type_name == "option" and getattr(param, "is_flag", False) and param.metavar is None:
                param.metavar = ""
        return params


class DeployKitCommand(FlagsWithoutType, TyperCommand):
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
