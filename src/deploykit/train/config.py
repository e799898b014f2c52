"""What a training run is asked to do (:class:`TrainConfig`, checked before any work) and what it reports
(:class:`EpochRecord` per epoch, :class:`TrainResult` at the end)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any

from deploykit.errors import InputError
from deploykit.models.registry import get_spec
from deploykit.preprocess import MAX_INPUT_SIDE, Preprocess
from deploykit.runners.base import Device


@dataclass(frozen=True)
class TrainConfig:
    arch: str
    data: str  # a folder, or a bundled dataset name (deploykit.data.Bundled)
    epochs: int = 10
    batch_size: int | None = None  # None: the architecture's (ModelSpec.train_batch_size)
    lr: float | None = None  # None: the architecture's (ModelSpec.train_lr)
    img_size: int | None = None
    val_split: float | None = None
    from_ckpt: Path | None = None
    freeze_backbone: bool = False
    unfreeze_after: int | None = None
    balanced: bool = False
    amp: bool = False
    device: Device | None = None  # None: cuda when available
    seed: int = 0
    out: Path | None = None
    resume: bool = False
    data_root: Path | None = None
    allow_pickle: bool = False
    workers: int | None = None  # DataLoader workers for image folders [default: cores - 1, at most 8]

    def resolved(self) -> TrainConfig:
        """This run as it trains: the architecture's batch size and learning rate where none was given."""
        if self.batch_size is not None and self.lr is not None:
            return self
        spec = get_spec(self.arch)
        return replace(self, batch_size=spec.train_batch_size if self.batch_size is None else self.batch_size,
                       lr=spec.train_lr if self.lr is None else self.lr)

    def validate(self) -> None:
        spec = get_spec(self.arch)  # an unknown architecture is the first thing said
        if self.epochs < 1:
            raise InputError("--epochs must be >= 1")
        if self.batch_size is not None and self.batch_size < 1:
            raise InputError("--batch-size must be >= 1")
        if self.lr is not None and not self.lr > 0:
            raise InputError("--lr must be > 0")
        if self.img_size is not None:
            if self.img_size > MAX_INPUT_SIDE:
                raise InputError(f"--img-size {self.img_size} is above {MAX_INPUT_SIDE}, beyond any image classifier; "
                                 "use the size your images are (e.g. 224)")
            if self.img_size < spec.min_size:
                raise InputError(f"--img-size {self.img_size} is below the smallest input {spec.name} accepts "
                                 f"({spec.min_size}x{spec.min_size}); use --img-size {spec.min_size} or more")
        if self.val_split is not None and not 0.0 < self.val_split < 1.0:
            raise InputError(f"--val-split must be between 0 and 1 (exclusive), got {self.val_split}")
        if self.freeze_backbone and self.from_ckpt is None:
            raise InputError("--freeze-backbone needs pretrained weights: add --from CKPT")
        if self.unfreeze_after is not None:
            if not self.freeze_backbone:
                raise InputError("--unfreeze-after N needs --freeze-backbone (train the head first, then all layers)")
            if not 0 < self.unfreeze_after < self.epochs:
                raise InputError(f"--unfreeze-after must be between 1 and --epochs - 1 ({self.epochs - 1}), "
                                 f"got {self.unfreeze_after}")
        if self.amp and self.device is Device.cpu:
            raise InputError("--amp is for CUDA (FP16 autocast); drop it or use --device cuda")

    def out_dir(self) -> Path:
        return Path(self.out) if self.out is not None else Path("runs") / get_spec(self.arch).name

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for key, value in data.items():
            if isinstance(value, Path):
                data[key] = str(value)
            elif isinstance(value, Enum):
                data[key] = value.value
        return data


@dataclass
class EpochRecord:
    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    lr: float
    seconds: float
    trainable: str  # "head" or "all"

    def line(self, epochs: int, best: bool) -> str:
        return (f"epoch {self.epoch:>{len(str(epochs))}}/{epochs}  loss {self.train_loss:.4f}  "
                f"acc {self.train_acc:6.2f}%  val_loss {self.val_loss:.4f}  val_acc {self.val_acc:6.2f}%  "
                f"lr {self.lr:.2e}  {self.seconds:5.1f}s{'  [head only]' if self.trainable == 'head' else ''}"
                f"{'  *best' if best else ''}")


@dataclass
class TrainResult:
    out: Path
    best_path: Path
    metrics_path: Path
    best_val_acc: float
    best_epoch: int
    epochs: int
    seconds: float
    history: list[EpochRecord]
    class_names: list[str]
    preprocess: Preprocess
    notes: list[str] = field(default_factory=list)
    main: bool = True  # False on torchrun ranks other than 0 (they write and report nothing)
