"""Checkpoint -> :class:`LoadedModel`: an ``nn.Module`` (or torch.export program / TorchScript archive) with its
class count, class names and preprocessing.

``deploykit.models.checkpoint`` reads the file as data (which kind it is, its state_dict, the checks before
anything in it is used; ``deploykit.models.program`` for ``.pt2`` archives); this module builds the model: the
architecture from ``--arch``, ``--model-def`` or the deploykit checkpoint's record, else inferred from the
state_dict's keys and shapes (``deploykit.models.identify``); the preprocessing from the checkpoint or the
registry entry, changed by ``--input-shape`` / ``--mean`` / ``--std`` / ``--resize``.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploykit import schema as S
from deploykit.errors import CheckpointError, InputError
from deploykit.models.checkpoint import (check_deploykit_checkpoint, check_dense, detect_kind, find_state_dict,
                                         is_deploykit_checkpoint, read_pickle, read_safetensors, read_torchscript,
                                         rekeyed, strip_prefixes)
from deploykit.models.checkpoint import save_checkpoint  # noqa: F401 -- bench.py imports it from here
from deploykit.models.identify import (NBT, closest_architectures, describe_mismatch, drop_aux, explain_misfit,
                                       infer_architecture, infer_num_classes, state_shapes)
from deploykit.models.program import program_input_shape, read_program
from deploykit.models.registry import get_spec
from deploykit.preprocess import IMAGENET_MEAN, IMAGENET_STD, Preprocess, parse_input_shape
from deploykit.text import unique_names


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

    def validate(self) -> None:
        """Each option within its range (the flags' own checks; a model may still refuse them when loaded)."""
        if self.num_classes is not None and not 1 <= self.num_classes <= 1_000_000:
            raise InputError("--num-classes must be between 1 and 1000000")
        if self.resize is not None and not 0 <= self.resize <= 4096:
            raise InputError(f"--resize is the shorter side in pixels before the center crop: 1..4096, or 0 for "
                             f"none; got {self.resize}")
        if self.class_names is not None:
            bad = next((n for n in self.class_names if len(n) > 256), None)
            if bad is not None:
                raise InputError(f"--labels: class name {bad[:40]!r}... is over 256 characters")
            if not self.class_names:
                raise InputError("--labels holds no class names")
            unique_names(self.class_names, "--labels")

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


def load_model(path: Path, options: LoadOptions | None = None) -> LoadedModel:
    """Load ``path`` (any kind ``deploykit.models.checkpoint`` names); raise CheckpointError/InputError for people."""
    if options is not None:
        options.validate()
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
        module = read_torchscript(path, trusted=opts.allow_pickle)
        module.eval()
        return _from_module(module, kind, "a TorchScript archive", path, opts, notes)
    if kind == "exported-program":
        return _from_program(path, opts, notes)
    if kind == "safetensors":
        return _from_state_dict(read_safetensors(path), path, opts, notes, "safetensors")

    obj = read_pickle(path, weights_only=not opts.allow_pickle)
    if isinstance(obj, torch.nn.Module):
        obj.eval()
        return _from_module(obj, "pickled-module", "a pickled module", path, opts, notes)
    if is_deploykit_checkpoint(obj):
        check_deploykit_checkpoint(obj, path)
        arch = opts.arch or obj.get("arch")
        merged = LoadOptions(**{**opts.__dict__, "arch": None if opts.model_def else arch,
                                "num_classes": opts.num_classes or obj.get("num_classes")})
        if opts.model_def is None and arch is None:
            raise CheckpointError(f"{path.name} is a deploykit checkpoint without an arch; pass --arch")
        return _from_state_dict(dict(obj["state_dict"]), path, merged, notes, "deploykit", meta=obj)
    if isinstance(obj, Mapping) and isinstance(obj.get("model"), torch.nn.Module):
        return _from_module(obj["model"].float().eval(), "pickled-module", "a pickled module", path, opts, notes)
    state = find_state_dict(obj)
    if state is None:
        keys = ", ".join(map(str, list(obj)[:5])) if isinstance(obj, Mapping) else type(obj).__name__
        raise CheckpointError(f"{path.name} holds no state_dict of tensors (found: {keys}); save "
                              "model.state_dict() or a whole model with torch.save(model)")
    return _from_state_dict(state, path, opts, notes, "state_dict")


def _from_module(module, kind: str, what: str, source: Path, opts: LoadOptions, notes: list[str], *,
                 runs=None) -> LoadedModel:
    """A model that brings its own code (pickled module, TorchScript, torch.export program); ``runs`` is what
    to call when that is not ``module`` itself."""
    base = get_spec(opts.arch).preprocess() if opts.arch else None
    pre = _resolve_preprocess(base, opts, notes, what)
    return LoadedModel(module, kind, opts.arch, _num_outputs(runs or module, pre), opts.class_names, pre, source,
                       notes)


def _from_program(path: Path, opts: LoadOptions, notes: list[str]) -> LoadedModel:
    program = read_program(path, allow_pickle=opts.allow_pickle)
    shape = program_input_shape(program)
    if opts.input_shape is None and shape is not None:
        opts = LoadOptions(**{**opts.__dict__, "input_shape": shape})
    if opts.input_shape is not None and shape is not None and tuple(opts.input_shape) != tuple(shape):
        raise InputError(f"--input-shape {','.join(map(str, opts.input_shape))} differs from the shape "
                         f"{','.join(map(str, shape))} the program was exported with")
    return _from_module(program, "exported-program", "a torch.export program", path, opts, notes,
                        runs=program.module())


def _from_state_dict(state: dict, source: Path, opts: LoadOptions, notes: list[str], kind: str,
                     meta: Mapping | None = None) -> LoadedModel:
    state = strip_prefixes(check_dense(state, source))
    if opts.model_def:
        return _from_model_def(state, source, opts, notes)
    if opts.arch:
        spec = get_spec(opts.arch)
        state = drop_aux(spec, state)
        num_classes = opts.num_classes or infer_num_classes(spec.name, state_shapes(state))
        if num_classes is None:
            raise CheckpointError(f"{source.name} does not fit {spec.name}: {explain_misfit(spec.name, state)}")
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
        state = drop_aux(spec, state)
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


def _load_into(model, state: Mapping, source: Path, arch_label: str) -> None:
    """Load ``state`` strictly, with the ``_metadata`` it was saved with (the model's own where it has none,
    e.g. safetensors); a BatchNorm ``num_batches_tracked`` that old checkpoints lack is filled in (as 0)."""
    import torch

    own = model.state_dict()
    expected = state_shapes(own)
    got = state_shapes(state)
    missing_nbt = [k for k in expected if k not in got and k.endswith(NBT)]
    if missing_nbt:
        got.update((k, expected[k]) for k in missing_nbt)
    if expected != got:
        raise CheckpointError(f"{source.name} does not fit {arch_label}: {describe_mismatch(expected, got)}")
    full = rekeyed(state, [*state.items(), *((k, torch.zeros((), dtype=torch.long)) for k in missing_nbt)])
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


# -- preprocessing
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
