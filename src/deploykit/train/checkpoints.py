"""What a run writes into its folder after each epoch: ``best.pth`` (a self-describing deploykit checkpoint,
``deploykit.models.checkpoint.save_checkpoint``), ``last.pth`` (the state ``--resume`` continues from) and
``metrics.json``; and the checks a ``--resume`` makes before continuing."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from deploykit.errors import CheckpointError, InputError
from deploykit.files import atomic_path, write_json_atomic
from deploykit.models.checkpoint import save_checkpoint
from deploykit.models.registry import get_spec
from deploykit.preprocess import Preprocess
from deploykit.train.config import EpochRecord, TrainConfig
from deploykit.train.data import TrainData

STATE_FORMAT = "deploykit-train-state/1"


@dataclass
class RunRecord:
    """Where a run stands after an epoch: what best.pth, last.pth and metrics.json record."""

    arch: str
    head: str  # the classifier layer's name
    config: TrainConfig
    data: TrainData
    history: list[EpochRecord]
    best_acc: float
    best_epoch: int
    seconds: float


def write_epoch(out: Path, run: RunRecord, best_model, loop_state: dict) -> None:
    """After an epoch: ``best.pth`` when ``best_model`` is given (the epoch improved on the best validation
    accuracy), then ``last.pth`` (``loop_state``: model, optimizer, scaler, phase, epoch) and ``metrics.json``."""
    data, config = run.data, run.config
    if best_model is not None:
        save_checkpoint(out / "best.pth", best_model, arch=run.arch, num_classes=len(data.class_names),
                        preprocess=data.preprocess, class_names=data.class_names,
                        input_shape=list(data.preprocess.shape), best_val_acc=run.best_acc, epoch=run.best_epoch,
                        train_args=config.to_json(), data_source=data.source, head=run.head,
                        grayscale_to_rgb=data.grayscale_to_rgb)
    save_state(out / "last.pth", {
        "format": STATE_FORMAT, "arch": run.arch, **loop_state,
        "history": [asdict(h) for h in run.history], "best_val_acc": run.best_acc, "best_epoch": run.best_epoch,
        "seconds": run.seconds, "class_names": data.class_names, "preprocess": data.preprocess.to_dict(),
        "args": config.to_json()})
    write_json_atomic(out / "metrics.json", metrics(run.best_acc, run.best_epoch, run.history, run.seconds, config,
                                                    data, run.arch))


def save_state(path: Path, payload: dict) -> None:
    import torch

    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_state(path: Path, config: TrainConfig, data: TrainData) -> dict:
    import torch

    if not path.is_file():
        raise InputError(f"--resume: no {path} to resume from; train without --resume first")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or foreign file
        raise CheckpointError(f"--resume: {path} is not readable ({type(exc).__name__}); train without --resume") from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise CheckpointError(f"--resume: {path} is not a deploykit training state; train without --resume")
    if state["arch"] != get_spec(config.arch).name:
        raise InputError(f"--resume: {path} is a {state['arch']} run, not {config.arch}")
    if list(state["class_names"]) != data.class_names:
        raise InputError(f"--resume: {path} was trained on other classes ({len(state['class_names'])}); "
                         "use the same --data")
    if Preprocess.from_dict(state["preprocess"]) != data.preprocess:
        raise InputError(f"--resume: {path} was trained at another input size/normalisation; use the same --img-size")
    if state["epoch"] >= config.epochs:
        raise InputError(f"--resume: {path} already has {state['epoch']} epochs; pass --epochs > {state['epoch']}")
    return state


def metrics(best_acc: float, best_epoch: int, history: list[EpochRecord], seconds: float, config: TrainConfig,
             data: TrainData, arch: str) -> dict[str, Any]:
    return {"best_val_acc": best_acc, "epochs": len(history), "seconds": seconds,
            "history": [asdict(h) for h in history], "best_epoch": best_epoch, "arch": arch,
            "num_classes": len(data.class_names), "class_names": data.class_names, "data": data.source,
            "train_images": len(data.train), "val_images": len(data.val), "input_shape": list(data.preprocess.shape),
            "args": config.to_json()}
