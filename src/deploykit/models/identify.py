"""Which registry architecture a bare state_dict is, from its keys and shapes alone (no ``--arch``).

A bare state_dict is matched against every registry entry in two steps:

1. fingerprint: the hash of the entry's key set (BatchNorm's num_batches_tracked left out, as old checkpoints
   lack it); only entries whose key set is the checkpoint's (less their auxiliary-head keys) go on. The
   fingerprints come from every entry's state_dict shapes built on the meta device (no memory, no init),
   cached on disk per torch/torchvision/deploykit version (built once: a few seconds for ~80 entries);
2. exact shapes: of those few, the entries whose every shape is the checkpoint's for some class count.

Near-identical families share key sets and are told apart in step 2: RegNet and ShuffleNet widths,
EfficientNet B-sizes, ResNet-50 / ResNeXt / Wide ResNet (conv widths differ). Swin v1 and v2 differ in keys
(v2's cpb_mlp / logit_scale). Two entries matching exactly would be a tie: an error naming both and --arch.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import cache, lru_cache
from pathlib import Path

from deploykit import __version__
from deploykit.errors import CheckpointError
from deploykit.files import user_cache_dir
from deploykit.models.checkpoint import rekeyed
from deploykit.models.registry import ModelSpec, get_spec, list_models

_SIGNATURE_CACHE_VERSION = 1
NBT = "num_batches_tracked"


def _fingerprint(keys) -> str:
    import hashlib

    return hashlib.sha1("\n".join(sorted(k for k in keys if not k.endswith(NBT))).encode()).hexdigest()


def _build_signature(arch: str, num_classes: int) -> dict[str, tuple[int, ...]]:
    model = get_spec(arch).build_on_meta(num_classes)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@lru_cache(maxsize=1)
def _zoo_signatures() -> dict[str, dict[str, tuple[int, ...]]]:
    """Every registry entry's state_dict shapes at 1000 classes, from the on-disk cache where it is current."""
    import hashlib
    import os
    from importlib import metadata

    from deploykit.models import zoo  # torch at module level: lazy (registry loads it on first need too)

    names = list_models()
    versions = []
    for dist in ("torch", "torchvision"):
        try:
            versions.append(metadata.version(dist))
        except metadata.PackageNotFoundError:
            versions.append("-")
    tag = hashlib.sha1(json.dumps([_SIGNATURE_CACHE_VERSION, __version__, versions, names,
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


def drop_aux(spec: ModelSpec, state: Mapping) -> Mapping:
    """``state`` without the entry's auxiliary-head keys (GoogLeNet / Inception ``aux``), which inference drops."""
    if not spec.aux_prefixes:
        return state
    return rekeyed(state, ((k, v) for k, v in state.items() if not k.startswith(spec.aux_prefixes)),
                   lambda key: None if key.startswith(tuple(p.rstrip(".") for p in spec.aux_prefixes)) else key)


def state_shapes(state: Mapping) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


def _without_nbt(shapes: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    return {k: v for k, v in shapes.items() if not k.endswith(NBT)}


def infer_num_classes(arch: str, shapes: dict[str, tuple[int, ...]]) -> int | None:
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
        n = infer_num_classes(arch, state_shapes(drop_aux(get_spec(arch), state)))
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


def guess_head(arch: str, state: Mapping) -> int:
    """The class count ``state``'s classifier seems to have for ``arch`` (1000 when no layer tells)."""
    ref = _signature(arch)
    for k in reversed(list(ref)):
        if k in state and state[k].ndim >= 1 and tuple(state[k].shape[1:]) == ref[k][1:]:
            return int(state[k].shape[0])
    return 1000


def explain_misfit(arch: str, state: Mapping) -> str:
    """Why ``state`` is not ``arch`` (missing, unexpected and mis-shaped keys) and which entries it is closest to."""
    expected = _signature(arch, guess_head(arch, state))
    return (f"{describe_mismatch(expected, state_shapes(state))}"
            f"; closest architectures: {', '.join(closest_architectures(state))}")
