"""Fit a zoo architecture on an ImageFolder or a bundled dataset -> a self-describing checkpoint.

``fit(config)`` writes ``<out>/best.pth`` (``deploykit.models.loading.save_checkpoint``: arch, classes, class names,
preprocessing, training args, best validation accuracy; readable with ``weights_only=True``, so ``deploykit export
runs/<arch>/best.pth`` needs no flags), ``<out>/last.pth`` (state for ``--resume``) and ``<out>/metrics.json``.

Validation images go through exactly the preprocessing stored in the checkpoint (``deploykit.preprocess``), so the
validation accuracy here is the accuracy ``deploykit eval`` / ``verify --data`` measure on the same images.

Determinism: each epoch's shuffle, augmentation and dropout are seeded from ``(seed, epoch)``, so a CPU run is
repeatable and a resumed run continues exactly as an uninterrupted one. Under ``torchrun`` (``WORLD_SIZE`` > 1)
the model is wrapped in torch's ``DistributedDataParallel`` and the training set in ``DistributedSampler``.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from enum import Enum
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from deploykit.data import (Bundled, ImageSet, LabelledImages, Split, bundled, bundled_split,
                            split_imagefolder)
from deploykit.errors import CheckpointError, InputError, MissingDependencyError
from deploykit.files import atomic_path, ensure_writable_dir, write_json_atomic
from deploykit.models.registry import ModelSpec, get_spec
from deploykit.preprocess import Preprocess
from deploykit.runners.base import Device

STATE_FORMAT = "deploykit-train-state/1"
UNFREEZE_LR_FACTOR = 0.1  # --unfreeze-after: every layer trains on at this fraction of --lr
WEIGHT_DECAY = 1e-4
IN_MEMORY_BYTES = 512 << 20  # bundled datasets are preprocessed once when they fit in this much memory


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

    def __post_init__(self) -> None:
        if self.batch_size is None or self.lr is None:
            spec = get_spec(self.arch)
            if self.batch_size is None:
                object.__setattr__(self, "batch_size", spec.train_batch_size)
            if self.lr is None:
                object.__setattr__(self, "lr", spec.train_lr)

    def validate(self) -> None:
        if self.epochs < 1:
            raise InputError("--epochs must be >= 1")
        if self.batch_size < 1:
            raise InputError("--batch-size must be >= 1")
        if not self.lr > 0:
            raise InputError("--lr must be > 0")
        if self.img_size is not None:
            spec = get_spec(self.arch)
            from deploykit.preprocess import MAX_INPUT_SIDE

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


# -- data -----------------------------------------------------------------------------------------------
@dataclass
class TrainData:
    train: Any  # torch Dataset of (float32 C x H x W tensor, int label)
    val: Any
    train_labels: list[int]
    class_names: list[str]
    preprocess: Preprocess
    source: str
    in_memory: bool
    grayscale_to_rgb: bool = False  # grayscale images converted to colour for a 3-channel model


GRAYSCALE_BUNDLED = ("digits", "mnist", "fashionmnist")


def _mostly_grayscale(paths, limit: int = 64) -> bool:
    from deploykit.preprocess import open_image

    sample = list(paths)[:limit]
    gray = sum(1 for p in sample if open_image(p).mode in {"1", "L", "LA", "I", "I;16", "F"})
    return bool(sample) and gray * 2 > len(sample)


def trained_on_grayscale(meta: dict[str, Any]) -> bool:
    """Whether a deploykit checkpoint's model (3-channel) was trained on grayscale images converted to colour: its
    ``grayscale_to_rgb`` record, or for checkpoints written before it, a bundled grayscale dataset as ``--data``."""
    if "grayscale_to_rgb" in meta:
        return bool(meta["grayscale_to_rgb"])
    data = (meta.get("train_args") or {}).get("data")
    return (meta.get("preprocess") or {}).get("channels") == 3 and str(data).lower() in GRAYSCALE_BUNDLED


def preprocess_for(spec: ModelSpec, img_size: int | None, *, base: Preprocess | None = None,
                   full_frame: bool) -> Preprocess:
    """The arch's preprocessing at ``img_size``; ``full_frame`` data (digits, MNIST, CIFAR) is scaled, not cropped."""
    pre = base or spec.preprocess()
    if img_size is not None and (img_size, img_size) != (pre.height, pre.width):
        resize = None if pre.resize is None else round(img_size * pre.resize / pre.height)
        pre = pre.replace(height=img_size, width=img_size, resize=resize)
    if full_frame and pre.resize is not None:
        pre = pre.replace(resize=None)
    return pre


class _Images:
    """torch Dataset over labelled in-memory images or image files, each through ``transform(PIL) -> CHW``."""

    def __init__(self, items: LabelledImages | ImageSet, transform: Callable) -> None:
        self.items = items
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        import torch

        from deploykit.preprocess import open_image

        image = self.items.image(i) if isinstance(self.items, LabelledImages) else open_image(self.items.paths[i])
        return torch.as_tensor(np.asarray(self.transform(image), dtype=np.float32)), int(self.items.labels[i])


def _materialize(items: LabelledImages, pre: Preprocess):
    """Preprocess every image once: bundled datasets have no augmentation, so epochs reuse the tensors."""
    import torch
    from torch.utils.data import TensorDataset

    x = torch.from_numpy(np.stack([pre.apply(items.image(i)) for i in range(len(items))]))
    return TensorDataset(x, torch.tensor(items.labels, dtype=torch.long))


class _Augmented:
    """Applies ``transform`` to the (preprocessed) tensors of another dataset: bundled data in memory."""

    def __init__(self, dataset, transform: Callable) -> None:
        self.dataset = dataset
        self.transform = transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        x, y = self.dataset[i]
        return self.transform(x), y


def _jitter(pre: Preprocess) -> Callable:
    """Bundled digits/MNIST/CIFAR: small random shifts, rotations and zooms (no flips: digits are not symmetric).

    Applied to normalised tensors, so the border is filled with the normalised value of a black pixel.
    """
    from torchvision.transforms import v2

    fill = [float(-m / s) for m, s in zip(pre.mean, pre.std)]
    return v2.RandomAffine(degrees=10, translate=(0.1, 0.1), scale=(0.9, 1.1), fill=fill)


def _augment(pre: Preprocess) -> Callable:
    """Photo folders: random-resized crop + horizontal flip (torchvision v2), then the checkpoint's normalisation."""
    import torch
    from torchvision.transforms import v2

    from deploykit.preprocess import to_mode

    pipeline = v2.Compose([
        v2.RandomResizedCrop((pre.height, pre.width), scale=(0.5, 1.0), antialias=True),
        v2.RandomHorizontalFlip(),
        v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(list(pre.mean), list(pre.std)),
    ])
    return _Then(partial(to_mode, mode="L" if pre.channels == 1 else "RGB"), pipeline)


class _Then:
    """``second(first(x))``; picklable, for DataLoader workers started with spawn."""

    def __init__(self, first: Callable, second: Callable) -> None:
        self.first, self.second = first, second

    def __call__(self, x):
        return self.second(self.first(x))


def load_data(config: TrainConfig, spec: ModelSpec, base: Preprocess | None = None, warn=None) -> TrainData:
    import torch

    name = bundled(config.data)
    if name is not None:
        if config.val_split is not None:
            raise InputError(f"--val-split does not apply to --data {name.value}: its held-out split is fixed "
                             "(`deploykit data` writes it), so every run validates on the same images")
        pre = preprocess_for(spec, config.img_size, base=base, full_frame=True)
        train_items = bundled_split(name, Split.train, data_root=config.data_root)
        val_items = bundled_split(name, Split.val, data_root=config.data_root)
        in_memory = (len(train_items) + len(val_items)) * 4 * math.prod(pre.shape) <= IN_MEMORY_BYTES
        if in_memory:
            train, val = _Augmented(_materialize(train_items, pre), _jitter(pre)), _materialize(val_items, pre)
        else:
            train = _Images(train_items, _Then(_Then(pre.apply, torch.as_tensor), _jitter(pre)))
            val = _Images(val_items, pre.apply)
        return TrainData(train, val, list(train_items.labels), list(train_items.class_names), pre,
                         train_items.source.replace(" (train split)", ""), in_memory,
                         grayscale_to_rgb=pre.channels == 3 and name.value in GRAYSCALE_BUNDLED)
    if config.data_root is not None:
        raise InputError(f"--data-root is for bundled datasets ({', '.join(b.value for b in Bundled if b is not Bundled.digits)}); "
                         f"--data {config.data} is a folder")
    train_set, val_set = split_imagefolder(Path(config.data), val_split=config.val_split, seed=config.seed, warn=warn)
    pre = preprocess_for(spec, config.img_size, base=base, full_frame=False)
    return TrainData(_Images(train_set, _augment(pre)), _Images(val_set, pre.apply), list(train_set.labels),
                     list(train_set.class_names), pre, str(config.data), False,
                     grayscale_to_rgb=pre.channels == 3 and _mostly_grayscale(train_set.paths))


# -- models: the generic head replacement -------------------------------------------------------------------
def find_head(module) -> tuple[str, Any]:
    """The classifier layer: the last ``nn.Linear`` / ``nn.Conv2d`` registered in the module.

    Every zoo architecture registers its classifier last (``fc``, ``classifier[-1]``, SqueezeNet's 1x1
    ``classifier[1]`` conv, ...); ``replace_head`` checks the model's output really comes from it.
    """
    from torch import nn

    head = None
    for name, layer in module.named_modules():
        if isinstance(layer, (nn.Linear, nn.Conv2d)):
            head = (name, layer)
    if head is None:
        raise CheckpointError("found no Linear or Conv2d classifier layer in the model to fine-tune")
    return head


def _out_features(layer) -> int:
    return int(layer.out_features if hasattr(layer, "out_features") else layer.out_channels)


def replace_head(module, num_classes: int) -> str:
    """Give ``module`` a freshly initialised classifier with ``num_classes`` outputs; return its name."""
    from torch import nn

    name, old = find_head(module)
    if _out_features(old) == num_classes:
        return name
    factory = {"device": old.weight.device, "dtype": old.weight.dtype}
    if isinstance(old, nn.Linear):
        new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None, **factory)
    else:
        if old.groups != 1:
            raise CheckpointError(f"the last conv layer {name} is grouped; cannot use it as the classifier head")
        new = nn.Conv2d(old.in_channels, num_classes, old.kernel_size, stride=old.stride, padding=old.padding,
                        dilation=old.dilation, bias=old.bias is not None, padding_mode=old.padding_mode, **factory)
    parent_name, _, attr = name.rpartition(".")
    setattr(module.get_submodule(parent_name) if parent_name else module, attr, new)
    return name


def _state_shapes(module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def load_pretrained(config: TrainConfig, spec: ModelSpec):
    """``--from CKPT`` through the loader (any kind it understands), read as ``spec``'s architecture."""
    from deploykit.models.loading import LoadOptions, load_model

    return load_model(Path(config.from_ckpt), LoadOptions(arch=spec.name, allow_pickle=config.allow_pickle))


def build_model(config: TrainConfig, spec: ModelSpec, num_classes: int, channels: int, loaded, notes: list[str]):
    """A fresh ``spec`` model, or the ``--from`` model (``loaded``) with its head replaced for ``num_classes``."""
    import torch

    torch.manual_seed(config.seed)
    if loaded is None:
        model = spec.build(num_classes=num_classes, in_channels=channels)
        return model, find_head(model)[0]
    module = loaded.module
    if not isinstance(module, torch.nn.Module) or isinstance(module, (torch.jit.ScriptModule, torch.fx.GraphModule)):
        raise InputError(f"--from {config.from_ckpt} is a {loaded.kind} archive, which cannot be fine-tuned; "
                         "give its weights as a state_dict or deploykit checkpoint")
    head = replace_head(module, num_classes)
    reference = spec.build_on_meta(num_classes, in_channels=loaded.preprocess.channels)
    if _state_shapes(module) != {k: tuple(v.shape) for k, v in reference.state_dict().items()}:
        raise CheckpointError(f"--from {config.from_ckpt} is not a {spec.name} (its layers differ), so the result "
                              f"could not be reloaded as {spec.name}; pass the matching ARCH")
    if loaded.num_classes != num_classes:
        notes.append(f"replaced the {loaded.num_classes}-class head {head} of {Path(config.from_ckpt).name} with a "
                     f"new {num_classes}-class one")
    return module, head


# -- the loop ------------------------------------------------------------------------------------------
@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def _dist_env() -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    return _Dist(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))


def _device(config: TrainConfig, dist: _Dist):
    import torch

    want = config.device or (Device.cuda if torch.cuda.is_available() else Device.cpu)
    if want is Device.cuda:
        if not torch.cuda.is_available():
            raise MissingDependencyError("--device cuda: no CUDA GPU is visible to PyTorch; use --device cpu")
        return torch.device("cuda", dist.local_rank if dist.world > 1 else torch.cuda.current_device())
    if config.amp:
        raise InputError("--amp is for CUDA (FP16 autocast); drop it or use --device cuda")
    return torch.device("cpu")


def _lr_at(step: int, total: int, base: float) -> float:
    """Linear warm-up over the first 5% of steps (at most 200), then cosine to zero."""
    warm = min(200, max(1, total // 20))
    if step < warm:
        return base * (step + 1) / warm
    return base * 0.5 * (1.0 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


def _epoch_sampler(data: TrainData, config: TrainConfig, dist: _Dist, epoch: int):
    import torch
    from torch.utils.data import DistributedSampler, WeightedRandomSampler

    if config.balanced:
        counts = np.bincount(data.train_labels, minlength=len(data.class_names)).astype(np.float64)
        weights = torch.as_tensor(1.0 / counts[np.asarray(data.train_labels)], dtype=torch.double)
        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch * 1009 + dist.rank)
        return WeightedRandomSampler(weights, math.ceil(len(weights) / dist.world), replacement=True,
                                     generator=generator)
    sampler = DistributedSampler(data.train, num_replicas=dist.world, rank=dist.rank, shuffle=True, seed=config.seed)
    sampler.set_epoch(epoch)
    return sampler


def _workers(config: TrainConfig, data: TrainData) -> int:
    if data.in_memory:
        return 0
    if config.workers is not None:
        return config.workers
    return max(1, min(8, (os.cpu_count() or 2) - 1))


def _set_trainable(model, head_name: str, head_only: bool) -> list:
    head = model.get_submodule(head_name)
    for p in model.parameters():
        p.requires_grad = not head_only
    for p in head.parameters():
        p.requires_grad = True
    return [p for p in model.parameters() if p.requires_grad]


def _train_mode(model, head_name: str, head_only: bool) -> None:
    """Head-only phases keep the frozen backbone in eval mode, so its BatchNorm statistics stay pretrained."""
    if head_only:
        model.eval()
        model.get_submodule(head_name).train()
    else:
        model.train()


def _make_optimizer(params, lr: float):
    import torch

    return torch.optim.AdamW(params, lr=lr, weight_decay=WEIGHT_DECAY)


def _reduce(values: list[float], dist: _Dist, device) -> list[float]:
    if dist.world == 1:
        return values
    import torch
    import torch.distributed as tdist

    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    tdist.all_reduce(tensor)
    return tensor.tolist()


def _run_val(model, loader, device, amp: bool, channels_last: bool, dist: _Dist) -> tuple[float, float]:
    import torch
    import torch.nn.functional as F

    model.eval()
    loss_sum, correct, seen = 0.0, 0.0, 0.0
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.float16, enabled=amp):
        for x, y in loader:
            x = x.to(device, non_blocking=True, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
            y = y.to(device, non_blocking=True)
            logits = model(x).float()
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += float((logits.argmax(1) == y).sum())
            seen += len(y)
    loss_sum, correct, seen = _reduce([loss_sum, correct, seen], dist, device)
    return loss_sum / max(seen, 1), 100.0 * correct / max(seen, 1)


def _save_state(path: Path, payload: dict) -> None:
    import torch

    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def _load_state(path: Path, config: TrainConfig, data: TrainData) -> dict:
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


class Trainable(str, Enum):
    head = "head"  # --freeze-backbone: only the classifier head learns
    all = "all"


@dataclass(frozen=True)
class Phase:
    trainable: Trainable
    start: int  # first epoch (0-based)
    end: int  # one past the last
    lr: float  # peak rate; warm-up then cosine within the phase


def phases(config: TrainConfig) -> list[Phase]:
    """Fine-tuning: head only for ``--unfreeze-after`` epochs, then every layer at a tenth of ``--lr``."""
    if not config.freeze_backbone:
        return [Phase(Trainable.all, 0, config.epochs, config.lr)]
    if config.unfreeze_after is None:
        return [Phase(Trainable.head, 0, config.epochs, config.lr)]
    return [Phase(Trainable.head, 0, config.unfreeze_after, config.lr),
            Phase(Trainable.all, config.unfreeze_after, config.epochs, config.lr * UNFREEZE_LR_FACTOR)]


class _Loop:
    """The model, its DDP wrapper, optimizer and loaders for one run; one method per step of an epoch."""

    def __init__(self, config: TrainConfig, data: TrainData, model, head_name: str, device, dist: _Dist) -> None:
        import torch
        from torch.utils.data import DataLoader, Subset

        self.config, self.data, self.head_name, self.device, self.dist = config, data, head_name, device, dist
        self.cuda = device.type == "cuda"
        self.memory_format = torch.channels_last if self.cuda else torch.contiguous_format
        self.model = model.to(device, memory_format=self.memory_format)
        self.net = self.model
        self.optimizer = None
        self.scaler = torch.amp.GradScaler(device.type, enabled=config.amp)
        self.generator = torch.Generator()
        val = data.val if dist.world == 1 else Subset(data.val, range(dist.rank, len(data.val), dist.world))
        self.val_loader = DataLoader(val, batch_size=max(config.batch_size, 128), shuffle=False,
                                     num_workers=_workers(config, data), pin_memory=self.cuda)
        per_rank = len(_epoch_sampler(data, config, dist, 0))
        self.drop_last = per_rank > 1 and per_rank % config.batch_size == 1  # BatchNorm cannot train on 1 image
        self.steps_per_epoch = per_rank // config.batch_size if self.drop_last else \
            math.ceil(per_rank / config.batch_size)

    def enter(self, phase: Phase, state: dict | None) -> None:
        """Set what trains, (re)wrap in DDP -- which only syncs parameters that need gradients -- new optimizer."""
        params = _set_trainable(self.model, self.head_name, phase.trainable is Trainable.head)
        if self.dist.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.net = None  # drop the previous wrapper's hooks first
            self.net = DistributedDataParallel(self.model, device_ids=[self.device.index] if self.cuda else None)
        self.optimizer = _make_optimizer(params, phase.lr)
        if state is not None and state.get("phase") == phase.trainable.value:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scaler.load_state_dict(state["scaler"])

    def train_epoch(self, epoch: int, phase: Phase, progress=None) -> tuple[float, float, float]:
        """One pass over the training set; returns (mean loss, accuracy %, last learning rate)."""
        import torch
        import torch.nn.functional as F
        from torch.utils.data import DataLoader

        config = self.config
        torch.manual_seed(config.seed * 1_000_003 + epoch)  # dropout and augmentation draws
        self.generator.manual_seed(config.seed * 1_000_003 + epoch)  # DataLoader worker seeds
        sampler = _epoch_sampler(self.data, config, self.dist, epoch)
        loader = DataLoader(self.data.train, batch_size=config.batch_size, sampler=sampler,
                            num_workers=_workers(config, self.data), pin_memory=self.cuda, generator=self.generator,
                            drop_last=self.drop_last)
        _train_mode(self.model, self.head_name, phase.trainable is Trainable.head)
        total = (phase.end - phase.start) * self.steps_per_epoch
        step = (epoch - phase.start) * self.steps_per_epoch
        task = None if progress is None else progress.add_task(
            f"epoch {epoch + 1}/{config.epochs}", total=len(loader), loss=float("nan"), acc=float("nan"))
        loss_sum, correct, seen, lr = 0.0, 0.0, 0.0, phase.lr
        for x, y in loader:
            lr = _lr_at(step, total, phase.lr)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            x = x.to(self.device, non_blocking=True, memory_format=self.memory_format)
            y = y.to(self.device, non_blocking=True)
            with torch.autocast(self.device.type, dtype=torch.float16, enabled=config.amp):
                logits = self.net(x)
                loss = F.cross_entropy(logits.float(), y)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            step += 1
            loss_sum += float(loss.detach()) * len(y)
            correct += float((logits.detach().argmax(1) == y).sum())
            seen += len(y)
            if task is not None:
                progress.update(task, advance=1, loss=loss_sum / seen, acc=100.0 * correct / seen)
        if task is not None:
            progress.remove_task(task)
        loss_sum, correct, seen = _reduce([loss_sum, correct, seen], self.dist, self.device)
        return loss_sum / max(seen, 1), 100.0 * correct / max(seen, 1), lr

    def validate(self) -> tuple[float, float]:
        return _run_val(self.net, self.val_loader, self.device, self.config.amp, self.cuda, self.dist)

    def state(self, phase: Phase, epoch: int) -> dict:
        return {"phase": phase.trainable.value, "epoch": epoch,
                "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
                "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict()}


def _init_distributed(config: TrainConfig, dist: _Dist) -> None:
    import torch
    import torch.distributed as tdist

    if not tdist.is_initialized():
        nccl = config.device is not Device.cpu and torch.cuda.is_available()
        if nccl:
            torch.cuda.set_device(dist.local_rank)
        tdist.init_process_group(backend="nccl" if nccl else "gloo")


def fit(config: TrainConfig, *, progress=None, log: Callable[[str], None] | None = None,
        warn: Callable[[str], None] | None = None, note: Callable[[str], None] | None = None) -> TrainResult:
    """Train ``config.arch`` and write best.pth / last.pth / metrics.json into ``config.out_dir()``.

    ``progress``: a ``rich.progress.Progress`` for per-batch bars (loss, accuracy); ``log``: one line per epoch;
    ``warn`` / ``note``: messages for the user. Only rank 0 reports and writes files under torchrun.
    """
    from deploykit.models.loading import save_checkpoint

    config.validate()
    spec = get_spec(config.arch)
    dist = _dist_env()
    if dist.world > 1:
        _init_distributed(config, dist)
    main = dist.main
    log, progress, warn, note = (log, progress, warn, note) if main else (None, None, None, None)
    try:
        device = _device(config, dist)
        out = config.out_dir()
        loaded = load_pretrained(config, spec) if config.from_ckpt is not None else None
        # the pretrained model's normalisation is what its features expect
        data = load_data(config, spec, base=None if loaded is None else loaded.preprocess, warn=warn)
        num_classes = len(data.class_names)
        notes: list[str] = []
        model, head_name = build_model(config, spec, num_classes, data.preprocess.channels, loaded, notes)
        del loaded
        for line in notes if note is not None else ():
            note(line)
        if main:  # only now: a checkpoint or data set that fails to load leaves no empty --out folder behind
            ensure_writable_dir(out, flag="--out")
        state = _load_state(out / "last.pth", config, data) if config.resume else None
        if state is not None:
            model.load_state_dict(state["model"])
        history = [EpochRecord(**h) for h in state["history"]] if state else []
        best_acc = float(state["best_val_acc"]) if state else -1.0
        best_epoch = int(state["best_epoch"]) if state else 0
        elapsed = float(state["seconds"]) if state else 0.0

        loop = _Loop(config, data, model, head_name, device, dist)
        for phase in phases(config):
            first = max(phase.start, state["epoch"] if state else 0)
            if first >= phase.end:
                continue
            loop.enter(phase, state)
            for epoch in range(first, phase.end):
                t0 = time.perf_counter()
                train_loss, train_acc, lr = loop.train_epoch(epoch, phase, progress)
                val_loss, val_acc = loop.validate()
                seconds = time.perf_counter() - t0
                elapsed += seconds
                record = EpochRecord(epoch + 1, train_loss, train_acc, val_loss, val_acc, lr, seconds,
                                     phase.trainable.value)
                history.append(record)
                improved = val_acc > best_acc
                if improved:
                    best_acc, best_epoch = val_acc, epoch + 1
                if main:
                    if improved:
                        save_checkpoint(out / "best.pth", model, arch=spec.name, num_classes=num_classes,
                                        preprocess=data.preprocess, class_names=data.class_names,
                                        input_shape=list(data.preprocess.shape), best_val_acc=best_acc,
                                        epoch=best_epoch, train_args=config.to_json(), data_source=data.source,
                                        head=head_name, grayscale_to_rgb=data.grayscale_to_rgb)
                    _save_state(out / "last.pth", {
                        "format": STATE_FORMAT, "arch": spec.name, **loop.state(phase, epoch + 1),
                        "history": [asdict(h) for h in history], "best_val_acc": best_acc, "best_epoch": best_epoch,
                        "seconds": elapsed, "class_names": data.class_names, "preprocess": data.preprocess.to_dict(),
                        "args": config.to_json()})
                    write_json_atomic(out / "metrics.json", _metrics(best_acc, best_epoch, history, elapsed, config,
                                                                     data, spec.name))
                    if log is not None:
                        log(record.line(config.epochs, improved))
            state = None
        return TrainResult(out, out / "best.pth", out / "metrics.json", best_acc, best_epoch, len(history), elapsed,
                           history, data.class_names, data.preprocess, notes, main)
    finally:
        if dist.world > 1:
            import torch.distributed as tdist

            if tdist.is_initialized():
                tdist.destroy_process_group()


def _metrics(best_acc: float, best_epoch: int, history: list[EpochRecord], seconds: float, config: TrainConfig,
             data: TrainData, arch: str) -> dict[str, Any]:
    return {"best_val_acc": best_acc, "epochs": len(history), "seconds": seconds,
            "history": [asdict(h) for h in history], "best_epoch": best_epoch, "arch": arch,
            "num_classes": len(data.class_names), "class_names": data.class_names, "data": data.source,
            "train_images": len(data.train), "val_images": len(data.val), "input_shape": list(data.preprocess.shape),
            "args": config.to_json()}
