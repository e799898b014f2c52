"""Top-k predictions from a checkpoint, an ONNX artifact or an export folder (torch only for checkpoints)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deploykit import runners
from deploykit.data import scan_images
from deploykit.errors import InputError
from deploykit.files import parse_json
from deploykit.manifest import ENGINE_SUFFIXES, MANIFEST_NAME, Artifact, Manifest, artifact_kind, check_graph
from deploykit.models.loading import load_model
from deploykit.preprocess import Preprocess
from deploykit.runners.base import Runner
from deploykit.runners.torch import TorchRunner
from deploykit.text import class_names_from

CHUNK = 64  # images preprocessed and run at a time


@dataclass
class Predictor:
    runner: Runner
    preprocess: Preprocess
    class_names: list[str] | None
    artifact: str = ""  # what runs: "exports/x/model.onnx (fp32, ONNX Runtime)"
    arch: str | None = None  # the architecture, where the manifest or checkpoint names it

    def topk(self, paths: list[Path], k: int = 5) -> list[dict]:
        if k < 1:
            raise InputError("--topk must be >= 1")
        paths = expand_images(paths)
        logits = np.concatenate([self.logits(self.preprocess.batch(paths[i:i + CHUNK]), paths[i:i + CHUNK])
                                 for i in range(0, len(paths), CHUNK)])
        if self.class_names is not None and len(self.class_names) != logits.shape[1]:
            raise InputError(f"{len(self.class_names)} class names for a model with {logits.shape[1]} outputs; "
                             "re-export with matching --labels")
        probs = softmax(logits)
        results = []
        for path, p in zip(paths, probs):
            order = np.argsort(-p)[:k]
            results.append({"image": str(path), "top": [
                {"index": int(i), "label": self.class_names[i] if self.class_names and i < len(self.class_names)
                 else str(int(i)), "probability": float(p[i])} for i in order]})
        return results


    def logits(self, batch: np.ndarray, images) -> np.ndarray:
        """The runner's logits for ``batch`` (from ``images``: paths, or a description), refused when any is NaN or
        infinite: such a row names no class, and ranking it would print a confident-looking answer."""
        out = self.runner.infer(batch)
        bad = ~np.isfinite(out).all(axis=1)
        if bad.any():
            where = images if isinstance(images, str) else f"first: {Path(images[int(np.argmax(bad))]).name}"
            raise NonFiniteLogits(
                f"{self.artifact or 'the model'} produced NaN or infinite logits for {int(bad.sum())} of {len(out)} "
                f"image(s) ({where}); its weights or graph are broken (NaN/inf weights, a division by zero) -- "
                "nothing to rank")
        return out


class NonFiniteLogits(InputError):
    """A model's output holds NaN or inf: no prediction or accuracy can be read from it."""


def expand_images(paths: list[Path]) -> list[Path]:
    """Image files as given; a folder becomes its readable images (subfolders too), sorted by path."""
    out: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            out += sorted(scan_images(path, what="IMAGE").paths)
        elif not path.exists():
            raise InputError(f"image not found: {path}")
        else:
            out.append(path)
    if not out:
        raise InputError("no images given")
    return out


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


MAX_METADATA_CHARS = 16 << 20


def onnx_metadata(path: Path) -> tuple[Preprocess | None, list[str] | None]:
    """The preprocessing and class names deploykit stored in an ONNX file's metadata (after the graph check every
    reader of an ONNX makes: no control flow)."""
    import onnx

    check_graph(path)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf's DecodeError and friends
        raise InputError(f"{path.name} is not a readable ONNX file ({type(exc).__name__}); re-export it") from None
    props = {p.key: p.value for p in model.metadata_props}
    where = f"{path.name} metadata"
    pre = names = None
    if "deploykit.preprocess" in props:
        text = props["deploykit.preprocess"]
        if len(text) > MAX_METADATA_CHARS:
            raise InputError(f"{where}: deploykit.preprocess is too large")
        try:
            pre = Preprocess.from_dict(parse_json(text, where, "deploykit.preprocess record"))
        except InputError as exc:
            raise InputError(f"{where}: deploykit.preprocess: {exc}") from None
    if "deploykit.class_names" in props:
        text = props["deploykit.class_names"]
        if len(text) > MAX_METADATA_CHARS:
            raise InputError(f"{where}: deploykit.class_names is too large")
        names = class_names_from(parse_json(text, where, "deploykit.class_names list"), where)
    return pre, names


def check_against_onnx(manifest: Manifest, onnx_path: Path) -> None:
    """The class names and preprocessing a manifest gives must be the ones its ONNX file carries in its own metadata
    (written by the same export): a manifest edited to reorder the classes or change mean/std is refused, not
    believed. A graph without deploykit metadata has nothing to disagree with."""
    pre, names = onnx_metadata(onnx_path)
    if names is not None and names != manifest.class_names:
        raise InputError(f"{manifest.folder / MANIFEST_NAME} and {onnx_path.name} disagree on the class names; one "
                         "was edited after export -- re-export the folder")
    if pre is not None and pre.to_dict() != manifest.preprocessing.to_dict():
        raise InputError(f"{manifest.folder / MANIFEST_NAME} and {onnx_path.name} disagree on the preprocessing "
                         "(input size, resize, mean or std); one was edited after export -- re-export the folder")


def _checked(manifest: Manifest, entry: Artifact) -> Path:
    """``manifest.file(entry)`` (its sha256 checked), after its metadata -- or, for an engine, the FP32 ONNX's --
    agreed with the manifest."""
    path = manifest.file(entry)
    onnx_entry = entry if path.suffix == ".onnx" else manifest.find(precision="fp32", kind="onnx")
    if onnx_entry is not None:
        check_against_onnx(manifest, path if onnx_entry is entry else manifest.file(onnx_entry))
    return path


def _listed_in_manifest(onnx_file: Path) -> Manifest | None:
    """The manifest of the folder that really holds ``onnx_file`` (a symlink is followed to its folder), if it lists
    the file (the caller then opens it through ``manifest.file``, which checks its bytes)."""
    real = onnx_file.resolve()
    if not (real.parent / MANIFEST_NAME).is_file():
        return None
    manifest = Manifest.load(real.parent)
    return manifest if manifest.artifact(real.name) is not None else None


def load_predictor(artifact: Path, *, device: str = "cpu", options=None) -> Predictor:
    """``artifact``: an export folder, an ``.onnx`` file (manifest beside it, or metadata inside), a TensorRT
    ``.engine`` (manifest beside it), or a checkpoint."""
    predictor = _load(Path(artifact), device=device, options=options)
    names = getattr(options, "class_names", None)
    if names:  # --labels: names for an artifact that has none, or other names for its outputs
        predictor.class_names = list(names)
    return predictor


def _load(artifact: Path, *, device: str, options) -> Predictor:
    if not artifact.exists():
        raise InputError(f"not found: {artifact}")
    if (artifact.is_dir() or artifact.suffix == ".onnx" or artifact.suffix in ENGINE_SUFFIXES) and \
            options is not None and (options.mean is not None or options.std is not None):
        raise InputError("--mean/--std apply to a checkpoint; an export folder or artifact carries the "
                         "preprocessing it was exported with")
    if artifact.is_dir():
        manifest = Manifest.load(artifact)
        entry = manifest.find(precision="fp32", kind="onnx") or manifest.find(kind="onnx")
        if entry is None:
            raise InputError(f"{artifact} has no ONNX artifact")
        path = _checked(manifest, entry)
        return Predictor(runners.open(path, device=device), manifest.preprocessing, manifest.class_names,
                         f"{path} ({entry.precision}, ONNX Runtime {device.upper()})", manifest.model.get("arch"))
    if artifact_kind(artifact.name) == "engine":  # a TensorRT engine carries no metadata: preprocessing comes from its manifest
        manifest = _listed_in_manifest(artifact)
        if manifest is None:
            raise InputError(f"{artifact.name} needs the {MANIFEST_NAME} of its export folder beside it, listing it; "
                             "copy the whole folder")
        entry = manifest.artifact(artifact.resolve().name)
        return Predictor(runners.open(_checked(manifest, entry)), manifest.preprocessing, manifest.class_names,
                         f"{artifact} ({entry.precision}, TensorRT)", manifest.model.get("arch"))
    if artifact.suffix == ".onnx":
        manifest = _listed_in_manifest(artifact)
        if manifest is not None:
            entry = manifest.artifact(artifact.resolve().name)
            runner = runners.open(_checked(manifest, entry), device=device)
            return Predictor(runner, manifest.preprocessing, manifest.class_names,
                             f"{artifact} ({entry.precision}, ONNX Runtime {device.upper()})",
                             manifest.model.get("arch"))
        pre, names = onnx_metadata(artifact)
        if pre is None:
            raise InputError(f"{artifact.name} is not listed in a {MANIFEST_NAME} beside it and has no deploykit "
                             "metadata; predict on its export folder instead")
        return Predictor(runners.open(artifact, device=device), pre, names,
                         f"{artifact} (ONNX Runtime {device.upper()})")
    loaded = load_model(artifact, options)
    return Predictor(TorchRunner(loaded.module, loaded.preprocess.shape), loaded.preprocess, loaded.class_names,
                     f"{artifact} (PyTorch, {loaded.arch or loaded.kind})", loaded.arch)
