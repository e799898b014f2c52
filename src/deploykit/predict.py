"""Top-k predictions from a checkpoint, an ONNX artifact or an export folder (torch only for checkpoints)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deploykit.errors import InputError
from deploykit.files import parse_json
from deploykit.manifest import MANIFEST_NAME, Manifest
from deploykit.preprocess import Preprocess
from deploykit.runners.base import Runner
from deploykit.text import class_names_from


@dataclass
class Predictor:
    runner: Runner
    preprocess: Preprocess
    class_names: list[str] | None

    def topk(self, paths: list[Path], k: int = 5) -> list[dict]:
        if k < 1:
            raise InputError("--topk must be >= 1")
        logits = self.runner.infer(self.preprocess.batch(paths))
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


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


MAX_METADATA_CHARS = 16 << 20


def _onnx_metadata(path: Path) -> tuple[Preprocess | None, list[str] | None]:
    import onnx

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


def _listed_in_manifest(onnx_file: Path) -> Manifest | None:
    """The manifest of the folder that really holds ``onnx_file`` (a symlink is followed to its folder), if it lists
    the file; its bytes must then be the recorded ones."""
    real = onnx_file.resolve()
    if not (real.parent / MANIFEST_NAME).is_file():
        return None
    manifest = Manifest.load(real.parent)
    if manifest.artifact(real.name) is None:
        return None
    manifest.file(real.name)
    return manifest


def load_predictor(artifact: Path, *, device: str = "cpu", options=None) -> Predictor:
    """``artifact``: an export folder, an ``.onnx`` file (manifest beside it, or metadata inside), a TensorRT
    ``.engine`` (manifest beside it), or a checkpoint."""
    artifact = Path(artifact)
    if not artifact.exists():
        raise InputError(f"not found: {artifact}")
    if artifact.is_dir():
        manifest = Manifest.load(artifact)
        fp32 = manifest.find(precision="fp32", kind="onnx") or manifest.find(kind="onnx")
        if fp32 is None:
            raise InputError(f"{artifact} has no ONNX artifact")
        from deploykit.runners.onnxrt import OnnxRuntimeRunner

        return Predictor(OnnxRuntimeRunner(manifest.file(fp32), device=device), manifest.preprocessing,
                         manifest.class_names)
    from deploykit.engine import is_engine

    if is_engine(artifact):  # a TensorRT engine carries no metadata: preprocessing comes from its manifest
        manifest = _listed_in_manifest(artifact)
        if manifest is None:
            raise InputError(f"{artifact.name} needs the {MANIFEST_NAME} of its export folder beside it, listing it; "
                             "copy the whole folder")
        from deploykit.runners.trt import TensorRTRunner

        return Predictor(TensorRTRunner(manifest.file(artifact.resolve().name)), manifest.preprocessing,
                         manifest.class_names)
    if artifact.suffix == ".onnx":
        from deploykit.runners.onnxrt import OnnxRuntimeRunner

        manifest = _listed_in_manifest(artifact)
        if manifest is not None:
            runner = OnnxRuntimeRunner(manifest.file(artifact.resolve().name), device=device)
            return Predictor(runner, manifest.preprocessing, manifest.class_names)
        pre, names = _onnx_metadata(artifact)
        if pre is None:
            raise InputError(f"{artifact.name} is not listed in a {MANIFEST_NAME} beside it and has no deploykit "
                             "metadata; predict on its export folder instead")
        return Predictor(OnnxRuntimeRunner(artifact, device=device), pre, names)
    from deploykit.models.loading import load_model
    from deploykit.runners.torch import TorchRunner

    loaded = load_model(artifact, options)
    return Predictor(TorchRunner(loaded.module, loaded.preprocess.shape), loaded.preprocess, loaded.class_names)
