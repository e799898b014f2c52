"""Load the checkpoints users really have.

Kinds, detected from the file, never from its name:

* ``deploykit``     -- a self-describing dict written by ``deploykit train`` (arch, classes, preprocessing);
* ``safetensors``   -- a ``.safetensors`` state_dict (Hugging Face / timm style), read without pickle;
* ``state_dict``    -- bare weights (also wrapped as ``{"state_dict"|"model"|"model_state_dict"|...: ...}``,
                      with ``module.`` / ``_orig_mod.`` prefixes); the architecture is inferred from the keys and
                      shapes, or given with ``--arch`` / ``--model-def``;
* ``pickled-module``-- ``torch.save(model)``: unpickling runs code, so only with ``allow_pickle``;
* ``torchscript``   -- ``torch.jit.save`` archives;
* ``exported-program`` -- ``torch.export.save`` ``.pt2`` archives.

Everything is read with ``torch.load(weights_only=True)`` unless the user passed ``--allow-pickle``.
"""

from __future__ import annotations

import importlib.util
import json
import pickle
import re
import struct
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

from deploykit.errors import CheckpointError, InputError
from deploykit.files import parse_json, user_cache_dir
from deploykit.models.registry import ModelSpec, get_spec, list_models
from deploykit.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess

CHECKPOINT_FORMAT = "deploykit-checkpoint/1"
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "network", "weights", "params", "ema")
_PREFIXES = ("module.", "_orig_mod.", "model.", "net.")


@dataclass
class LoadOptions:
    """What the user told us about a checkpoint; stored in the manifest so ``verify`` can reload it."""

    arch: str | None = None
    num_classes: int | None = None
    model_def: str | None = None
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    allow_pickle: bool = False
    input_shape: tuple[int, int, int] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    resize: int | None = None
    class_names: list[str] | None = None

    def to_dict(self) -> dict:
        return {"arch": self.arch, "num_classes": self.num_classes, "model_def": self.model_def,
                "model_kwargs": self.model_kwargs, "allow_pickle": self.allow_pickle,
                "input_shape": None if self.input_shape is None else list(self.input_shape),
                "mean": None if self.mean is None else list(self.mean),
                "std": None if self.std is None else list(self.std), "resize": self.resize}

    @classmethod
    def from_dict(cls, data: Mapping) -> LoadOptions:
        """The options a manifest recorded (data from a file: checked, and ``allow_pickle``/``model_def`` dropped --
        only the command line grants those)."""
        from deploykit import schema as S

        where = "source.options"
        try:
            S.obj(data, where)
            arch = S.get(data, "arch", where, S.text(128), optional=True)
            num_classes = S.get(data, "num_classes", where, S.whole(1, 1_000_000), optional=True)
            kwargs = S.get(data, "model_kwargs", where, S.any_object, optional=True) or {}
            shape = S.get(data, "input_shape", where, S.items(S.whole(1, 1 << 20), 3, 3), optional=True)
            mean, std = (S.get(data, key, where, S.items(S.number(), 1, 4), optional=True) for key in ("mean", "std"))
            resize = S.get(data, "resize", where, S.whole(0, 4096), optional=True)
        except S.SchemaError as exc:
            raise InputError(f"the manifest's {exc}; re-run `deploykit export`") from None
        if shape is not None:
            from deploykit.preprocess import parse_input_shape

            shape = parse_input_shape(",".join(map(str, shape)))
        return cls(arch=arch, num_classes=num_classes, model_kwargs=dict(kwargs), input_shape=shape,
                   mean=None if mean is None else tuple(mean), std=None if std is None else tuple(std), resize=resize)


@dataclass
class LoadedModel:
    module: Any  # torch.nn.Module or torch.export.ExportedProgram / ScriptModule
    kind: str
    arch: str | None
    num_classes: int
    class_names: list[str] | None
    preprocess: Preprocess
    source: Path
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)


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
    return 2 <= int.from_bytes(head[:8], "little") <= path.stat().st_size - 8


def detect_kind(path: Path) -> str:
    if _is_safetensors(path):
        return "safetensors"
    names = _zip_names(path)
    if names is not None:
        stripped = {n.split("/", 1)[1] if "/" in n else n for n in names}
        if "archive_format" in stripped or any(n.startswith("models/") for n in stripped):
            return "exported-program"
        if "constants.pkl" in stripped or any(n.startswith("code/") for n in stripped):
            return "torchscript"
    return "pickle"


def _torch_load(path: Path, weights_only: bool):
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
                                      "--allow-pickle") from None
            name = next(g for g in found.groups() if g)
            raise CheckpointError(
                f"{path.name} holds pickled Python objects ({name}; likely a whole model saved with torch.save(model)); "
                "unpickling runs code from the file -- if you trust it, re-run with --allow-pickle, or save "
                "model.state_dict() instead") from None
        raise CheckpointError(f"{path.name} is corrupt or not a PyTorch checkpoint; re-save or re-download it") from None
    except (RuntimeError, EOFError, ValueError, OSError, AttributeError, ModuleNotFoundError, ImportError,
            IndexError, KeyError, TypeError, struct.error, UnicodeDecodeError, MemoryError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if isinstance(exc, (ModuleNotFoundError, AttributeError, ImportError)):
            raise CheckpointError(f"{path.name} needs Python code that is not importable here ({msg}); "
                                  "save model.state_dict() and pass --arch or --model-def") from None
        raise CheckpointError(f"{path.name} is corrupt or truncated ({msg}); re-save or re-download it") from None


def _is_tensor_dict(obj: Any) -> bool:
    import torch

    return isinstance(obj, Mapping) and bool(obj) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _find_state_dict(obj: Any) -> Mapping | None:
    """The state_dict inside ``obj``, as it was saved: an ``OrderedDict`` keeps its ``_metadata`` (module
    versions that MNASNet's and BatchNorm's ``_load_from_state_dict`` read)."""
    if _is_tensor_dict(obj):
        return obj
    if isinstance(obj, Mapping):
        for key in _WRAPPER_KEYS:
            if key in obj and _is_tensor_dict(obj[key]):
                return obj[key]
    return None


def _rekeyed(state: Mapping, items, metadata_key=lambda k: k) -> dict:
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
                state = _rekeyed(state, ((k[len(prefix):], v) for k, v in state.items()),
                                 lambda key, p=prefix: _strip_module_prefix(key, p))
                changed = True
    return state


# -- architecture inference -----------------------------------------------------------------------------
# A bare state_dict is matched against every registry entry in two steps:
#   1. fingerprint: the hash of the entry's key set (BatchNorm's num_batches_tracked left out, as old checkpoints
#      lack it); only entries whose key set is the checkpoint's (less their auxiliary-head keys) go on. The
#      fingerprints come from every entry's state_dict shapes built on the meta device (no memory, no init),
#      cached on disk per torch/torchvision/deploykit version (built once: a few seconds for ~80 entries);
#   2. exact shapes: of those few, the entries whose every shape is the checkpoint's for some class count.
# Near-identical families share key sets and are told apart in step 2: RegNet and ShuffleNet widths,
# EfficientNet B-sizes, ResNet-50 / ResNeXt / Wide ResNet (conv widths differ). Swin v1 and v2 differ in keys
# (v2's cpb_mlp / logit_scale). Two entries matching exactly would be a tie: an error naming both and --arch.
_SIGNATURE_CACHE_VERSION = 1
_NBT = "num_batches_tracked"


def _fingerprint(keys) -> str:
    import hashlib

    return hashlib.sha1("\n".join(sorted(k for k in keys if not k.endswith(_NBT))).encode()).hexdigest()


def _build_signature(arch: str, num_classes: int) -> dict[str, tuple[int, ...]]:
    model = get_spec(arch).build_on_meta(num_classes)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@lru_cache(maxsize=1)
def _zoo_signatures() -> dict[str, dict[str, tuple[int, ...]]]:
    """Every registry entry's state_dict shapes at 1000 classes, from the on-disk cache where it is current."""
    import hashlib
    import os
    from importlib import metadata

    import deploykit
    from deploykit.models import zoo

    names = list_models()
    versions = []
    for dist in ("torch", "torchvision"):
        try:
            versions.append(metadata.version(dist))
        except metadata.PackageNotFoundError:
            versions.append("-")
    tag = hashlib.sha1(json.dumps([_SIGNATURE_CACHE_VERSION, deploykit.__version__, versions, names,
                                   hashlib.sha1(Path(zoo.__file__).read_bytes()).hexdigest()]).encode()).hexdigest()
    path = user_cache_dir() / f"zoo-signatures-{tag[:16]}.json"
    try:
        cached = json.loads(path.read_text())
        table = {a: {k: tuple(v) for k, v in sig.items()} for a, sig in cached.items()}
    except (OSError, ValueError, AttributeError):
        table = {}
    missing = [a for a in names if a not in table]
    if not missing:
        return table
    for arch in missing:
        table[arch] = _build_signature(arch, 1000)
    try:  # a cache that cannot be written only costs time
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(table, separators=(",", ":")))
        os.replace(tmp, path)
    except OSError:
        pass
    return table


@cache
def _signature(arch: str, num_classes: int = 1000) -> dict[str, tuple[int, ...]]:
    table = _zoo_signatures() if num_classes == 1000 else {}
    return table[arch] if arch in table else _build_signature(arch, num_classes)


@lru_cache(maxsize=1)
def _fingerprints() -> dict[str, list[str]]:
    """key-set fingerprint -> the registry entries that have that key set."""
    groups: dict[str, list[str]] = {}
    for arch, sig in _zoo_signatures().items():
        groups.setdefault(_fingerprint(sig), []).append(arch)
    return groups


def _drop_aux(spec: ModelSpec, state: Mapping) -> Mapping:
    if not spec.aux_prefixes:
        return state
    return _rekeyed(state, ((k, v) for k, v in state.items() if not k.startswith(spec.aux_prefixes)),
                    lambda key: None if key.startswith(tuple(p.rstrip(".") for p in spec.aux_prefixes)) else key)


def _shapes(state: Mapping) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


def _without_nbt(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    return {k: v for k, v in shapes.items() if not k.endswith(_NBT)}


def _infer_num_classes(arch: str, shapes: dict[str, tuple[int, ...]]) -> int | None:
    """The class count for which ``arch`` matches ``shapes`` exactly, or None (num_batches_tracked may lack)."""
    ref, shapes = _without_nbt(_signature(arch)), _without_nbt(shapes)
    if set(ref) != set(shapes):
        return None
    diffs = {k for k in ref if ref[k] != shapes[k]}
    if not diffs:
        return 1000
    candidates = {shapes[k][0] for k in diffs if shapes[k]}
    if len(candidates) != 1:
        return None
    n = candidates.pop()
    return n if _without_nbt(_signature(arch, n)) == shapes else None


def infer_architecture(state: Mapping) -> tuple[str, int] | None:
    """The one registry entry (and class count) whose state_dict has exactly these keys and shapes; None when
    none has; an error naming the entries when several have."""
    groups = _fingerprints()
    variants = {spec.aux_prefixes for spec in map(get_spec, list_models())}
    candidates: list[str] = []
    for aux in sorted(variants):
        keys = [k for k in state if not (aux and k.startswith(aux))]
        candidates += [a for a in groups.get(_fingerprint(keys), []) if get_spec(a).aux_prefixes == aux]
    found = []
    for arch in candidates:
        n = _infer_num_classes(arch, _shapes(_drop_aux(get_spec(arch), state)))
        if n is not None:
            found.append((arch, n))
    if len(found) > 1:
        raise CheckpointError(f"the state_dict fits {len(found)} architectures exactly ("
                              f"{', '.join(f'{a} with {n} classes' for a, n in found)}); pass --arch NAME")
    return found[0] if found else None


def closest_architectures(state: Mapping, n: int = 3) -> list[str]:
    keys = set(state)
    scored = []
    for arch, ref in _zoo_signatures().items():
        overlap = len(keys & set(ref)) / max(1, len(keys | set(ref)))
        scored.append((overlap, arch))
    scored.sort(reverse=True)
    return [arch for score, arch in scored[:n] if score > 0]


def describe_mismatch(expected: Mapping[str, tuple], got: Mapping[str, tuple], limit: int = 3) -> str:
    missing = [k for k in expected if k not in got]
    unexpected = [k for k in got if k not in expected]
    shaped = [f"{k} {tuple(got[k])} vs {tuple(expected[k])}" for k in expected
              if k in got and tuple(got[k]) != tuple(expected[k])]
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", shaped)):
        if items:
            more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
            parts.append(f"{label} {len(items)}: {', '.join(items[:limit])}{more}")
    return "; ".join(parts)


# -- preprocessing resolution ---------------------------------------------------------------------------
def _resolve_preprocess(base: Preprocess | None, opts: LoadOptions, notes: list[str],
                        what: str) -> Preprocess:
    if base is None:
        if opts.input_shape is None:
            notes.append(f"{what} does not record its input: assuming 3x224x224 with ImageNet mean/std "
                         "(pass --input-shape/--mean/--std to change)")
        channels = opts.input_shape[0] if opts.input_shape else 3
        base = Preprocess(channels=channels, height=224, width=224,
                          mean=IMAGENET_MEAN if channels == 3 else (0.5,),
                          std=IMAGENET_STD if channels == 3 else (0.5,), resize=256)
    changes: dict[str, Any] = {}
    if opts.input_shape is not None:
        c, h, w = opts.input_shape
        changes.update(channels=c, height=h, width=w)
        if c != base.channels and opts.mean is None:
            changes.update(mean=[sum(base.mean) / len(base.mean)] * c, std=[sum(base.std) / len(base.std)] * c)
        if opts.resize is None and base.resize is not None:
            # keep the crop ratio of the default (e.g. 256/224) at the new size
            changes["resize"] = max(h, w) if base.resize is None else round(max(h, w) * base.resize / base.height)
    if opts.mean is not None:
        changes["mean"] = list(opts.mean)
    if opts.std is not None:
        changes["std"] = list(opts.std)
    if opts.resize is not None:
        changes["resize"] = opts.resize or None
    return base.replace(**changes) if changes else base


# -- loaders --------------------------------------------------------------------------------------------
def _load_into(model, state: Mapping, source: Path, arch_label: str) -> None:
    """Load ``state`` strictly, with the ``_metadata`` it was saved with (the model's own where it has none,
    e.g. safetensors); a BatchNorm ``num_batches_tracked`` that old checkpoints lack is filled in (as 0)."""
    import torch

    own = model.state_dict()
    expected = _shapes(own)
    got = _shapes(state)
    missing_nbt = [k for k in expected if k not in got and k.endswith(_NBT)]
    if missing_nbt:
        got.update((k, expected[k]) for k in missing_nbt)
    if expected != got:
        raise CheckpointError(f"{source.name} does not fit {arch_label}: {describe_mismatch(expected, got)}")
    full = _rekeyed(state, [*state.items(), *((k, torch.zeros((), dtype=torch.long)) for k in missing_nbt)])
    if getattr(full, "_metadata", None) is None:
        full._metadata = getattr(own, "_metadata", None)
    model.load_state_dict(full, strict=True)


def _import_factory(model_def: str):
    file_part, sep, attr = model_def.rpartition(":")
    if not sep or not file_part or not attr:
        raise InputError(f"--model-def must be path/to/model.py:factory, got {model_def!r}")
    file = Path(file_part)
    if not file.is_file():
        raise InputError(f"--model-def file not found: {file}")
    spec = importlib.util.spec_from_file_location(f"deploykit_user_model_{file.stem}", file)
    if spec is None or spec.loader is None:
        raise InputError(f"--model-def {file} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # the user's code: report, don't crash
        raise InputError(f"importing --model-def {file} failed: {type(exc).__name__}: {exc}") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise InputError(f"--model-def {file} has no callable {attr!r}")
    return factory


def _from_model_def(state: dict, source: Path, opts: LoadOptions, notes: list[str]) -> LoadedModel:
    factory = _import_factory(opts.model_def)  # type: ignore[arg-type]
    try:
        model = factory(**opts.model_kwargs)
    except Exception as exc:
        raise InputError(f"calling {opts.model_def}(**{json.dumps(opts.model_kwargs)}) failed: "
                         f"{type(exc).__name__}: {exc}; check --model-kwargs") from None
    import torch

    if not isinstance(model, torch.nn.Module):
        raise InputError(f"--model-def {opts.model_def} returned {type(model).__name__}, not a torch.nn.Module; "
                         "the factory must return the model")
    _load_into(model, strip_prefixes(state), source, opts.model_def)  # type: ignore[arg-type]
    base = None
    if opts.arch:
        base = get_spec(opts.arch).preprocess()
    pre = _resolve_preprocess(base, opts, notes, f"--model-def {opts.model_def}")
    return LoadedModel(model.eval(), "model-def", opts.arch, _num_outputs(model, pre), opts.class_names, pre,
                       source, notes)


def _num_outputs(model, pre: Preprocess) -> int:
    import torch

    shape = "x".join(map(str, pre.shape))
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, *pre.shape))
    except Exception as exc:  # the user's model code: a wrong input size surfaces as any error type
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        reason = f"{type(exc).__name__}: {reason[:160]}" if reason else type(exc).__name__
        raise CheckpointError(f"the model rejects a {shape} input ({reason}); pass the input it expects "
                              "with --input-shape C,H,W") from None
    if isinstance(out, (tuple, list)):
        out = out[0]
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        raise CheckpointError(f"the model must return logits of shape [batch, classes] for a "
                              f"{shape} input; got {getattr(out, 'shape', type(out))}")
    return int(out.shape[1])


def _from_state_dict(state: dict, source: Path, opts: LoadOptions, notes: list[str], kind: str,
                     meta: Mapping | None = None) -> LoadedModel:
    state = strip_prefixes(state)
    if opts.model_def:
        return _from_model_def(state, source, opts, notes)
    if opts.arch:
        spec = get_spec(opts.arch)
        state = _drop_aux(spec, state)
        num_classes = opts.num_classes or _infer_num_classes(spec.name, _shapes(state))
        if num_classes is None:
            guess = _guess_head(spec.name, state)
            raise CheckpointError(f"{source.name} does not fit {spec.name}: "
                                  f"{describe_mismatch(_signature(spec.name, guess), _shapes(state))}"
                                  f"; closest architectures: {', '.join(closest_architectures(state))}")
        arch = spec.name
    else:
        found = infer_architecture(state)
        if found is None:
            raise CheckpointError(
                f"{source.name} is a state_dict that matches no registry architecture (closest: "
                f"{', '.join(closest_architectures(state)) or 'none'}); pass --arch NAME or "
                "--model-def path/to/model.py:factory")
        arch, num_classes = found
        spec = get_spec(arch)
        state = _drop_aux(spec, state)
        notes.append(f"inferred architecture {arch} with {num_classes} classes from the state_dict")
    in_channels = opts.input_shape[0] if opts.input_shape else None
    if in_channels is None and meta and meta.get("preprocess"):
        in_channels = int(meta["preprocess"]["channels"])
    model = spec.build(num_classes=num_classes, in_channels=in_channels)
    _load_into(model, state, source, f"{arch} with {num_classes} classes")
    base = Preprocess.from_dict(meta["preprocess"]) if meta and meta.get("preprocess") else spec.preprocess()
    pre = _resolve_preprocess(base, opts, notes, arch)
    names = opts.class_names or (list(meta["class_names"]) if meta and meta.get("class_names") else None)
    return LoadedModel(model.eval(), kind, arch, num_classes, names, pre, source, notes,
                       extra={k: v for k, v in (meta or {}).items() if k not in ("state_dict",)})


def _guess_head(arch: str, state: dict) -> int:
    ref = _signature(arch)
    for k in reversed(list(ref)):
        if k in state and state[k].ndim >= 1 and tuple(state[k].shape[1:]) == ref[k][1:]:
            return int(state[k].shape[0])
    return 1000


def _input_shape_of_program(program) -> tuple[int, int, int] | None:
    try:
        user_inputs = set(program.graph_signature.user_inputs)
        for node in program.graph.nodes:
            if node.op == "placeholder" and node.name in user_inputs:
                shape = tuple(int(d) for d in node.meta["val"].shape)
                return shape[1:] if len(shape) == 4 else None  # type: ignore[return-value]
    except (AttributeError, KeyError, TypeError):
        return None
    return None


def load_model(path: Path, options: LoadOptions | None = None) -> LoadedModel:
    """Load ``path`` as described in the module docstring; raise CheckpointError/InputError for people."""
    loaded = _load_model(path, options)
    names = loaded.class_names
    if names is not None:
        if len(names) != loaded.num_classes:
            raise InputError(f"{len(names)} class names for a model with {loaded.num_classes} classes; give one "
                             "name per class with --labels")
        if len(set(names)) != len(names):
            dup = next(n for n in names if names.count(n) > 1)
            raise InputError(f"class name {dup!r} is given twice; class names must be unique (--labels)")
    return loaded


def _load_model(path: Path, options: LoadOptions | None = None) -> LoadedModel:
    import torch

    opts = options or LoadOptions()
    path = Path(path)
    if not path.exists():
        raise InputError(f"model file not found: {path}")
    if path.is_dir():
        raise InputError(f"{path} is a folder; pass the checkpoint file (.pth/.pt/.pt2)")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path.name} is empty (0 bytes); re-save or re-download it")
    notes: list[str] = []
    kind = detect_kind(path)

    if kind == "torchscript":
        try:
            module = torch.jit.load(str(path), map_location="cpu")
        except RuntimeError as exc:
            raise CheckpointError(f"{path.name} is a corrupt TorchScript archive: {str(exc).splitlines()[0]}") from None
        base = get_spec(opts.arch).preprocess() if opts.arch else None
        pre = _resolve_preprocess(base, opts, notes, "a TorchScript archive")
        module.eval()
        return LoadedModel(module, kind, opts.arch, _num_outputs(module, pre), opts.class_names, pre, path, notes)

    if kind == "exported-program":
        if not opts.allow_pickle:
            check_program_archive(path)  # torch.export.load unpickles some parts with weights_only=False
        try:
            program = torch.export.load(str(path))
        except Exception as exc:  # torch raises many types for bad archives
            raise CheckpointError(f"{path.name} is not a loadable torch.export program: "
                                  f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
        shape = _input_shape_of_program(program)
        if opts.input_shape is None and shape is not None:
            opts = LoadOptions(**{**opts.__dict__, "input_shape": shape})
        if opts.input_shape is not None and shape is not None and tuple(opts.input_shape) != tuple(shape):
            raise InputError(f"--input-shape {','.join(map(str, opts.input_shape))} differs from the shape "
                             f"{','.join(map(str, shape))} the program was exported with")
        base = get_spec(opts.arch).preprocess() if opts.arch else None
        pre = _resolve_preprocess(base, opts, notes, "a torch.export program")
        return LoadedModel(program, kind, opts.arch, _num_outputs(program.module(), pre), opts.class_names, pre,
                           path, notes)

    if kind == "safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise CheckpointError("reading .safetensors needs the safetensors package: pip install safetensors") from None
        try:
            state = load_file(str(path), device="cpu")
        except Exception as exc:  # safetensors raises its own SafetensorError
            raise CheckpointError(f"{path.name} is a corrupt safetensors file ({str(exc).splitlines()[0]})") from None
        return _from_state_dict(state, path, opts, notes, "safetensors")

    obj = _torch_load(path, weights_only=not opts.allow_pickle)
    if isinstance(obj, torch.nn.Module):
        base = get_spec(opts.arch).preprocess() if opts.arch else None
        pre = _resolve_preprocess(base, opts, notes, "a pickled module")
        obj.eval()
        return LoadedModel(obj, "pickled-module", opts.arch, _num_outputs(obj, pre), opts.class_names, pre, path,
                           notes)
    if isinstance(obj, Mapping) and obj.get("format") == CHECKPOINT_FORMAT:
        check_deploykit_checkpoint(obj, path)
        arch = opts.arch or obj.get("arch")
        merged = LoadOptions(**{**opts.__dict__, "arch": None if opts.model_def else arch,
                                "num_classes": opts.num_classes or obj.get("num_classes")})
        if opts.model_def is None and arch is None:
            raise CheckpointError(f"{path.name} is a deploykit checkpoint without an arch; pass --arch")
        return _from_state_dict(dict(obj["state_dict"]), path, merged, notes, "deploykit", meta=obj)
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), torch.nn.Module):
        module = obj["model"].float().eval()
        pre = _resolve_preprocess(get_spec(opts.arch).preprocess() if opts.arch else None, opts, notes,
                                  "a pickled module")
        return LoadedModel(module, "pickled-module", opts.arch, _num_outputs(module, pre), opts.class_names,
                           pre, path, notes)
    state = _find_state_dict(obj)
    if state is None:
        keys = ", ".join(map(str, list(obj)[:5])) if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointError(f"{path.name} holds no state_dict of tensors (found: {keys}); save "
                              "model.state_dict() or a whole model with torch.save(model)")
    return _from_state_dict(state, path, opts, notes, "state_dict")


# -- files as data: checks before anything in them is used ---------------------------------------------------------
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


def check_deploykit_checkpoint(obj: Mapping, path: Path) -> None:
    """The fields of a deploykit checkpoint are data from a file: check their types before using them."""
    from deploykit.text import class_names_from

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
    if not _is_tensor_dict(obj.get("state_dict")):
        raise CheckpointError(f"{path.name}: field state_dict must map names to tensors; re-save the checkpoint")


def save_checkpoint(path: Path, model, *, arch: str, num_classes: int, preprocess: Preprocess,
                    class_names: list[str] | None = None, **extra: Any) -> None:
    """Write a self-describing checkpoint that ``torch.load(weights_only=True)`` can read."""
    import torch

    from deploykit.files import atomic_path

    payload = {"format": CHECKPOINT_FORMAT, "arch": arch, "num_classes": int(num_classes),
               "class_names": list(class_names) if class_names else None, "preprocess": preprocess.to_dict(),
               "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}, **extra}
    with atomic_path(Path(path)) as tmp:
        torch.save(payload, tmp)
