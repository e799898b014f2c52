"""Checkpoint files -> Python objects, read as data: which kind a file is, its state_dict, and the checks that run
before anything in it is used. ``deploykit.models.loading`` turns what this module reads into a model.

Kinds, detected from the file, never from its name:

* ``deploykit``     -- a self-describing dict written by ``deploykit train`` (arch, classes, preprocessing);
* ``safetensors``   -- a ``.safetensors`` state_dict (Hugging Face / timm style), read without pickle;
* ``state_dict``    -- bare weights (also wrapped as ``{"state_dict"|"model"|"model_state_dict"|...: ...}``,
                      with ``module.`` / ``_orig_mod.`` prefixes); the architecture is inferred from the keys and
                      shapes, or given with ``--arch`` / ``--model-def``;
* ``pickled-module``-- ``torch.save(model)``: unpickling runs code, so only with ``allow_pickle``;
* ``torchscript``   -- ``torch.jit.save`` archives: a program (its code runs in ``torch.jit.load`` and ``forward``),
                      so only with ``allow_pickle``;
* ``exported-program`` -- ``torch.export.save`` ``.pt2`` archives (``deploykit.models.program``): torch ``exec``s
                      their guard code and ``sympify``s their symbolic expressions, so only with ``allow_pickle``.

``allow_pickle`` is the command line's ``--trust-code`` (alias ``--allow-pickle``); a manifest never grants it.
Everything is read with ``torch.load(weights_only=True)`` unless the user passed it.
"""

from __future__ import annotations

import pickle
import re
import struct
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from deploykit.errors import CheckpointError, InputError
from deploykit.files import atomic_path
from deploykit.preprocess import Preprocess
from deploykit.text import class_names_from

CHECKPOINT_FORMAT = "deploykit-checkpoint/1"
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "network", "weights", "params", "ema")
_PREFIXES = ("module.", "_orig_mod.", "model.", "net.")


# -- detection ------------------------------------------------------------------------------------------
def _zip_names(path: Path) -> list[str] | None:
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.namelist()
    except zipfile.BadZipFile:
        return None
    except OSError as exc:
        raise CheckpointError(f"cannot read {path}: {exc.strerror}") from None


def _is_safetensors(path: Path) -> bool:
    """safetensors: an 8-byte little-endian header length, then a JSON header starting with '{'."""
    with open(path, "rb") as handle:
        head = handle.read(9)
    if len(head) < 9 or head[8:9] != b"{":
        return False
    return 2 <= int.from_bytes(head[:8], "little") <= min(_SAFETENSORS_MAX_HEADER, path.stat().st_size - 8)


_SAFETENSORS_MAX_HEADER = 100 << 20  # the safetensors library's own limit


def _not_safetensors(path: Path) -> str:
    """Why a file named ``.safetensors`` is not one, in words (its first bytes decide)."""
    with open(path, "rb") as handle:
        head = handle.read(9)
    if head[:2] == b"PK" or head[:1] == b"\x80":
        return "it is a PyTorch (pickle/zip) file with a .safetensors name -- rename it to .pth"
    if len(head) < 9:
        return f"it is {len(head)} bytes long, shorter than a safetensors header"
    n = int.from_bytes(head[:8], "little")
    if n > min(_SAFETENSORS_MAX_HEADER, path.stat().st_size - 8):
        return f"its header length {n} runs past the end of the {path.stat().st_size}-byte file"
    return f"its {n}-byte header is not a JSON object"


def detect_kind(path: Path) -> str:
    """``safetensors``, ``exported-program``, ``torchscript`` or ``pickle`` (a ``torch.save`` file of any content).
    A file named ``.safetensors`` that is not one is refused here (torch.load would hand it to the safetensors
    reader, whose errors are not a user's message)."""
    if _is_safetensors(path):
        return "safetensors"
    if path.suffix.lower() == ".safetensors":
        raise CheckpointError(f"{path.name} is not a valid safetensors file: {_not_safetensors(path)}; re-save or "
                              "re-download it")
    names = _zip_names(path)
    if names is not None:
        stripped = {n.split("/", 1)[1] if "/" in n else n for n in names}
        if "archive_format" in stripped or any(n.startswith("models/") for n in stripped):
            return "exported-program"
        if "constants.pkl" in stripped or any(n.startswith("code/") for n in stripped):
            return "torchscript"
    return "pickle"


TRUST_FLAG = "--trust-code (or --allow-pickle)"


def needs_trust(path: Path, what: str, why: str) -> CheckpointError:
    """The one refusal for a file whose loading runs code, naming the flag that grants it."""
    return CheckpointError(f"{path.name} is {what}; loading it runs code from the file ({why}) -- if you trust it, "
                           f"re-run with {TRUST_FLAG}")


# -- reading --------------------------------------------------------------------------------------------
def read_pickle(path: Path, weights_only: bool):
    """``torch.load`` on the CPU; a file that needs unpickling without ``weights_only`` is refused naming
    ``--allow-pickle``, a corrupt one with a line saying so."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except pickle.UnpicklingError as exc:
        text = str(exc)
        if weights_only and "Weights only load failed" in text:
            found = re.search(r"GLOBAL ([\w.]+)|global: GLOBAL ([\w.]+)|global: ([\w.]+)", text)
            if not found:
                raise CheckpointError(f"{path.name} is corrupt, or holds pickled data that only a code-running unpickler "
                                      "reads; re-save it (model.state_dict()), or if you trust it re-run with "
                                      f"{TRUST_FLAG}") from None
            name = next(g for g in found.groups() if g)
            raise CheckpointError(
                f"{path.name} holds pickled Python objects ({name}; likely a whole model saved with torch.save(model)); "
                f"unpickling runs code from the file -- if you trust it, re-run with {TRUST_FLAG}, or save "
                "model.state_dict() instead") from None
        raise CheckpointError(f"{path.name} is corrupt or not a PyTorch checkpoint; re-save or re-download it") from None
    except Exception as exc:
        if type(exc).__name__ != "SafetensorError" and not isinstance(exc, (
                RuntimeError, EOFError, ValueError, OSError, AttributeError, ModuleNotFoundError, ImportError,
                IndexError, KeyError, TypeError, struct.error, UnicodeDecodeError, MemoryError)):
            raise
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if isinstance(exc, (ModuleNotFoundError, AttributeError, ImportError)):
            raise CheckpointError(f"{path.name} needs Python code that is not importable here ({msg}); "
                                  "save model.state_dict() and pass --arch or --model-def") from None
        raise CheckpointError(f"{path.name} is corrupt or truncated ({msg}); re-save or re-download it") from None


def read_safetensors(path: Path) -> dict:
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise CheckpointError("reading .safetensors needs the safetensors package: pip install safetensors") from None
    try:
        state = load_file(str(path), device="cpu")
    except (KeyboardInterrupt, SystemExit, MemoryError):
        raise
    except BaseException as exc:  # SafetensorError, and the Rust panics of a malformed header (a BaseException)
        first = str(exc).splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path.name} is a corrupt safetensors file ({first}); re-save or re-download "
                              "it") from None
    return state


def check_dense(state: Mapping, path: Path) -> Mapping:
    """Refuse tensors that are not plain dense ones (sparse, quantized, nested...): no classifier's weights are
    stored so, and the checks and copies after this would fail on them in their own words."""
    import torch

    for key, value in state.items():
        if isinstance(value, torch.Tensor) and (value.layout != torch.strided or value.is_quantized):
            kind = str(value.layout).replace("torch.", "") if value.layout != torch.strided else "quantized"
            raise CheckpointError(f"{path.name}: tensor {str(key)[:80]!r} is stored {kind}, not as plain dense "
                                  "weights; save model.state_dict() of the model as it runs (e.g. "
                                  "tensor.to_dense())")
    return state


def read_torchscript(path: Path, *, trusted: bool):
    """``torch.jit.load``: a TorchScript archive is a program (a scripted ``__setstate__`` runs while loading), so
    only when the user trusts it."""
    if not trusted:
        raise needs_trust(path, "a TorchScript archive", "its scripted methods run inside torch.jit.load and forward")
    import torch

    try:
        return torch.jit.load(str(path), map_location="cpu")
    except RuntimeError as exc:
        raise CheckpointError(f"{path.name} is a corrupt TorchScript archive: {str(exc).splitlines()[0]}") from None


# -- state dicts ----------------------------------------------------------------------------------------
def is_tensor_dict(obj: Any) -> bool:
    import torch

    return isinstance(obj, Mapping) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def find_state_dict(obj: Any) -> Mapping | None:
    """The state_dict inside ``obj``, as it was saved: an ``OrderedDict`` keeps its ``_metadata`` (module
    versions that MNASNet's and BatchNorm's ``_load_from_state_dict`` read)."""
    if is_tensor_dict(obj):
        return obj
    if isinstance(obj, Mapping):
        for key in _WRAPPER_KEYS:
            if key in obj and is_tensor_dict(obj[key]):
                return obj[key]
    return None


def rekeyed(state: Mapping, items, metadata_key=lambda k: k) -> dict:
    """A new ordered state_dict of ``items`` that carries ``state``'s ``_metadata``, its keys passed through
    ``metadata_key`` (entries for which it returns None are dropped)."""
    from collections import OrderedDict

    out = OrderedDict(items)
    meta = getattr(state, "_metadata", None)
    if meta is not None:
        out._metadata = OrderedDict((new, v) for k, v in meta.items() if (new := metadata_key(k)) is not None)
    return out


def _strip_module_prefix(key: str, prefix: str) -> str | None:
    """A ``_metadata`` key (a module path, "" for the root) with a wrapper prefix removed."""
    bare = prefix[:-1]
    if key == bare:
        return ""
    return key[len(prefix):] if key.startswith(prefix) else None


def strip_prefixes(state: Mapping) -> Mapping:
    """Remove wrapper prefixes shared by every key: DataParallel ``module.``, torch.compile ``_orig_mod.``...
    The ``_metadata`` of the state_dict follows the keys."""
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if state and all(k.startswith(prefix) for k in state):
                state = rekeyed(state, ((k[len(prefix):], v) for k, v in state.items()),
                                lambda key, p=prefix: _strip_module_prefix(key, p))
                changed = True
    return state


# -- deploykit checkpoints: the one format this package writes ---------------------------------------------------
def is_deploykit_checkpoint(obj: Any) -> bool:
    return isinstance(obj, Mapping) and obj.get("format") == CHECKPOINT_FORMAT


def check_deploykit_checkpoint(obj: Mapping, path: Path) -> None:
    """The fields of a deploykit checkpoint are data from a file: check their types before using them."""
    arch = obj.get("arch")
    if arch is not None and (not isinstance(arch, str) or not 0 < len(arch) <= 128):
        raise CheckpointError(f"{path.name}: field arch must be an architecture name; re-save the checkpoint")
    n = obj.get("num_classes")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 1_000_000):
        raise CheckpointError(f"{path.name}: field num_classes must be a whole number >= 1; re-save the checkpoint")
    try:
        names = class_names_from(obj.get("class_names"), f"{path.name}: field class_names")
        if obj.get("preprocess") is not None:
            Preprocess.from_dict(obj["preprocess"])
    except InputError as exc:
        raise CheckpointError(str(exc) if str(exc).startswith(path.name) else
                              f"{path.name}: field preprocess: {exc}") from None
    if names is not None and n is not None and len(names) != n:
        raise CheckpointError(f"{path.name}: {len(names)} class names for {n} classes; re-save the checkpoint")
    acc = obj.get("best_val_acc")
    if acc is not None and (isinstance(acc, bool) or not isinstance(acc, (int, float)) or not 0 <= acc <= 100):
        raise CheckpointError(f"{path.name}: field best_val_acc must be a percentage (0..100); re-save the "
                              "checkpoint")
    if not is_tensor_dict(obj.get("state_dict")):
        raise CheckpointError(f"{path.name}: field state_dict must map names to tensors; re-save the checkpoint")


def save_checkpoint(path: Path, model, *, arch: str, num_classes: int, preprocess: Preprocess,
                    class_names: list[str] | None = None, **extra: Any) -> None:
    """Write a self-describing checkpoint that ``torch.load(weights_only=True)`` can read."""
    import torch

    payload = {"format": CHECKPOINT_FORMAT, "arch": arch, "num_classes": int(num_classes),
               "class_names": list(class_names) if class_names else None, "preprocess": preprocess.to_dict(),
               "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}, **extra}
    with atomic_path(Path(path)) as tmp:
        torch.save(payload, tmp)
