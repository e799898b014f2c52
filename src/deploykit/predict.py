"""Top-k predictions from a checkpoint, an ONNX artifact or an export folder (torch only for checkpoints)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deploykit.errors import InputError
from deploykit.manifest import MANIFEST_NAME, Manifest
from deploykit.preprocess import Preprocess
from deploykit.runners.base import Runner


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
        logits = np.concatenate([self.runner.infer(self.preprocess.batch(paths[i:i + CHUNK]))
                                 for i in range(0, len(paths), CHUNK)])
        probs = softmax(logits)
        results = []
        for path, p in zip(paths, probs):
            order = np.argsort(-p)[:k]
            results.append({"image": str(path), "top": [
                {"index": int(i), "label": self.class_names[i] if self.class_names and i < len(self.class_names)
                 else str(int(i)), "probability": float(p[i])} for i in order]})
        return results


def expand_images(paths: list[Path]) -> list[Path]:
    """Image files as given; a folder becomes its readable images (subfolders too), sorted by path."""
    from deploykit.data import scan_images

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


def _onnx_metadata(path: Path) -> tuple[Preprocess | None, list[str] | None]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    pre = Preprocess.from_dict(json.loads(props["deploykit.preprocess"])) if "deploykit.preprocess" in props else None
    names = json.loads(props["deploykit.class_names"]) if "deploykit.class_names" in props else None
    return pre, names


def load_predictor(artifact: Path, *, device: str = "cpu", options=None) -> Predictor:
    """``artifact``: an export folder, an ``.onnx`` file (manifest beside it, or metadata inside), a TensorRT
    ``.engine`` (manifest beside it), or a checkpoint."""
    predictor = _load(Path(artifact), device=device, options=options)
    names = getattr(options, "class_names", None)
    if names:  # --labels: names for an artifact that has none, or other names for its outputs
        predictor.class_names = list(names)
    return predictor


def _precision_of(path: Path) -> str:
    folder = path.parent
    if (folder / MANIFEST_NAME).is_file():
        entry = Manifest.load(folder).artifact(path.name)
        if entry and entry.get("precision"):
            return entry["precision"]
    return "fp32"


def _load(artifact: Path, *, device: str, options) -> Predictor:
    if not artifact.exists():
        raise InputError(f"not found: {artifact}")
    if (artifact.is_dir() or artifact.suffix == ".onnx" or artifact.suffix in (".engine", ".plan", ".trt")) and \
            options is not None and (options.mean is not None or options.std is not None):
        raise InputError("--mean/--std apply to a checkpoint; an export folder or artifact carries the "
                         "preprocessing it was exported with")
    if artifact.is_dir():
        manifest = Manifest.load(artifact)
        fp32 = next((a for a in manifest.artifacts if a["path"].endswith(".onnx")), None)
        if fp32 is None:
            raise InputError(f"{artifact} has no ONNX artifact")
        artifact = artifact / fp32["path"]
    from deploykit.engine import is_engine

    if is_engine(artifact):  # a TensorRT engine carries no metadata: preprocessing comes from its manifest
        if not (artifact.parent / MANIFEST_NAME).is_file():
            raise InputError(f"{artifact.name} needs the {MANIFEST_NAME} of its export folder beside it; copy the "
                             "whole folder")
        from deploykit.runners.trt import TensorRTRunner

        manifest = Manifest.load(artifact.parent)
        return Predictor(TensorRTRunner(artifact), manifest.preprocessing, manifest.class_names,
                         f"{artifact} ({_precision_of(artifact)}, TensorRT)", manifest.model.get("arch"))
    if artifact.suffix == ".onnx":
        from deploykit.runners.onnxrt import OnnxRuntimeRunner

        runner = OnnxRuntimeRunner(artifact, device=device)
        manifest_path = artifact.parent / MANIFEST_NAME
        what = f"{artifact} ({_precision_of(artifact)}, ONNX Runtime {device.upper()})"
        if manifest_path.is_file():
            manifest = Manifest.load(artifact.parent)
            return Predictor(runner, manifest.preprocessing, manifest.class_names, what, manifest.model.get("arch"))
        pre, names = _onnx_metadata(artifact)
        if pre is None:
            raise InputError(f"{artifact.name} has no {MANIFEST_NAME} beside it and no deploykit metadata; "
                             "predict on the export folder instead")
        return Predictor(runner, pre, names, what)
    from deploykit.models.loading import load_model
    from deploykit.runners.torch import TorchRunner

    loaded = load_model(artifact, options)
    return Predictor(TorchRunner(loaded.module, loaded.preprocess.shape), loaded.preprocess, loaded.class_names,
                     f"{artifact} (PyTorch, {loaded.arch or loaded.kind})", loaded.arch)
