"""``torch.export`` programs (``.pt2`` archives): the load (only with the user's ``--trust-code``: a ``.pt2`` is
code), and the one walk to a program's input (its shape and batch size, read by the loader, the ONNX exporter and
the PyTorch runner)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from deploykit.errors import CheckpointError
from deploykit.models.checkpoint import needs_trust


def read_program(path: Path, *, allow_pickle: bool):
    """``torch.export.load``, only when the user trusts the file: a ``.pt2`` is code, not data. torch ``exec``s the
    guard code its ``models/*.json`` carries (``guards_code``) when the program is unlifted (``program.module()``),
    ``sympify``s (``eval``s) its symbolic shape expressions, and unpickles some members with ``weights_only=False``."""
    if not allow_pickle:
        raise needs_trust(path, "a torch.export program",
                          "torch executes the guard code and shape expressions it carries")
    import torch

    try:
        return torch.export.load(str(path))
    except Exception as exc:  # torch raises many types for bad archives
        raise CheckpointError(f"{path.name} is not a loadable torch.export program: "
                              f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None


def program_input(program) -> Any | None:
    """The example value (a fake tensor) of a program's first user input, as traced; None when the graph does not
    record one. Its dims are ints, or symbols where the program was exported with a dynamic dimension."""
    try:
        user_inputs = set(program.graph_signature.user_inputs)
        for node in program.graph.nodes:
            if node.op == "placeholder" and node.name in user_inputs:
                val = node.meta.get("val")
                return val if val is not None and hasattr(val, "shape") else None
    except (AttributeError, KeyError, TypeError):
        return None
    return None


def program_batch(program) -> int | None:
    """The batch size the program was traced with, or None when its batch dimension is dynamic (or unknown)."""
    val = program_input(program)
    dim = val.shape[0] if val is not None and len(val.shape) > 0 else None
    return dim if isinstance(dim, int) else None


def program_input_shape(program) -> tuple[int, int, int] | None:
    """C, H, W of an image program's input (N x C x H x W), or None."""
    val = program_input(program)
    if val is None:
        return None
    try:
        shape = tuple(int(d) for d in val.shape)
    except (TypeError, ValueError):
        return None
    return shape[1:] if len(shape) == 4 else None  # type: ignore[return-value]

