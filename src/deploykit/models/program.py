"""``torch.export`` programs (``.pt2`` archives): the check that refuses pickled content before
``torch.export.load`` runs, the load itself, and the one walk to a program's input (its shape and batch size,
read by the loader, the ONNX exporter and the PyTorch runner)."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

from deploykit.errors import CheckpointError, InputError
from deploykit.files import parse_json

_PT2_ALLOWED = ("archive_format", "archive_version", "byteorder", "version", ".data/", "models/", "data/weights/",
                "data/constants/", "data/sample_inputs/", "extra/", "serialized_exported_program.json",
                "serialized_state_dict.pt", "serialized_constants.pt", "serialized_example_inputs.pt",
                "serialized_state_dict.json", "serialized_constants.json", "extra_files/")
_PT2_MAX_MEMBER = 4 << 30


def check_program_archive(path: Path) -> None:
    """Refuse a ``torch.export`` archive that ``torch.export.load`` could only read by unpickling Python objects.

    torch reads pickled weights/constants (``use_pickle`` in the payload configs) and torchbind/opaque objects with
    ``weights_only=False``, and falls back to ``weights_only=False`` when sample inputs do not load safely. So: no
    pickled payload entries, no AOTInductor binaries, and every member torch unpickles must load with
    ``torch.load(weights_only=True)`` here first. Otherwise one line naming ``--allow-pickle``.
    """
    import io

    import torch

    refuse = (f"{path.name} is a torch.export program that carries pickled Python objects ({{}}); loading it runs "
              "code from the file -- if you trust it, re-run with --allow-pickle")
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            names = [i.filename for i in infos]
            root = names[0].split("/", 1)[0] + "/" if names and "/" in names[0] and \
                all(n.startswith(names[0].split("/", 1)[0] + "/") for n in names) else ""
            unpickled: list[str] = []
            for info in infos:
                rel = info.filename[len(root):]
                if info.is_dir() or not rel:
                    continue
                if not rel.startswith(_PT2_ALLOWED):
                    raise CheckpointError(refuse.format(f"unexpected member {rel[:80]!r}"))
                if info.file_size > _PT2_MAX_MEMBER:
                    raise CheckpointError(f"{path.name} has a member of {info.file_size} bytes; not a model we load")
                if rel.endswith(".pt") or rel.startswith("data/sample_inputs/"):
                    unpickled.append(info.filename)
                if rel.endswith("_config.json") and rel.startswith(("data/weights/", "data/constants/")):
                    config = parse_json(archive.read(info).decode("utf-8", "replace"), f"{path.name}:{rel}",
                                        "payload config")
                    entries = config.get("config") if isinstance(config, dict) else None
                    if not isinstance(entries, dict):
                        raise CheckpointError(f"{path.name} is not a loadable torch.export program "
                                              f"(malformed {rel})")
                    for fqn, meta in entries.items():
                        if not isinstance(meta, dict):
                            raise CheckpointError(f"{path.name} is not a loadable torch.export program "
                                                  f"(malformed {rel})")
                        name = str(meta.get("path_name", ""))
                        if meta.get("use_pickle") is not False or not name.startswith(("weight_", "tensor_")):
                            raise CheckpointError(refuse.format(f"{str(fqn)[:60]!r} is stored pickled"))
            for name in unpickled:
                try:
                    torch.load(io.BytesIO(archive.read(name)), map_location="cpu", weights_only=True)
                except Exception:  # noqa: BLE001 -- anything but plain tensors and containers
                    raise CheckpointError(refuse.format(f"in {name.split('/')[-1]}")) from None
    except zipfile.BadZipFile:
        raise CheckpointError(f"{path.name} is a corrupt torch.export archive; re-save it") from None
    except (OSError, EOFError, RuntimeError, ValueError) as exc:
        if isinstance(exc, InputError):
            raise
        raise CheckpointError(f"{path.name} is a corrupt torch.export archive ({type(exc).__name__}); "
                              "re-save it") from None


def read_program(path: Path, *, allow_pickle: bool):
    """``torch.export.load``, after :func:`check_program_archive` unless the user allowed unpickling."""
    import torch

    if not allow_pickle:
        check_program_archive(path)  # torch.export.load unpickles some parts with weights_only=False
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

