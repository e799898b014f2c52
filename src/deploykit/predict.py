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


@dataclass
class Predictor:
    runner: Runner
    preprocess: Preprocess
    class_names: list[str] | None

    def topk(self, paths: list[Path], k: int = 5) -> list[dict]:
        if k < 1:
            raise InputError("--topk must be >= 1")
        logits = self.runner.infer(self.preprocess.batch(paths))
        probs = softmax(logits)
        results = []
        for path, p in zip(paths, probs):
            order = np.argsort(-p)[:k]
            results.append({"image": str(path), "top": [
                {"index": int(i), "label": self.class_names[i] if self.class_names and i < len(self.class_names)
                 else str(int(i)), "probability": float(p[i])} for i in order]})
        return results


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
    artifact = Path(artifact)
    if not artifact.exists():
        raise InputError(f"not found: {artifact}")
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
        return Predictor(TensorRTRunner(artifact), manifest.preprocessing, manifest.class_names)
    if artifact.suffix == ".onnx":
        from deploykit.runners.onnxrt import OnnxRuntimeRunner

        runner = OnnxRuntimeRunner(artifact, device=device)
        manifest_path = artifact.parent / MANIFEST_NAME
        if manifest_path.is_file():
            manifest = Manifest.load(artifact.parent)
            return Predictor(runner, manifest.preprocessing, manifest.class_names)
        pre, names = _onnx_metadata(artifact)
        if pre is None:
            raise InputError(f"{artifact.name} has no {MANIFEST_NAME} beside it and no deploykit metadata; "
                             "predict on the export folder instead")
        return Predictor(runner, pre, names)
    from deploykit.models.loading import load_model
    from deploykit.runners.torch import TorchRunner

    loaded = load_model(artifact, options)
    return Predictor(TorchRunner(loaded.module, loaded.preprocess.shape), loaded.preprocess, loaded.class_names)
