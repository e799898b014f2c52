"""One epoch after another: the device and torchrun ranks, the learning-rate schedule, the phases of a
fine-tune (head only, then every layer), and :class:`Loop`, which trains and validates one epoch at a time.

Determinism: each epoch's shuffle, augmentation and dropout are seeded from ``(seed, epoch)``, so a CPU run is
repeatable and a resumed run continues exactly as an uninterrupted one. Under ``torchrun`` (``WORLD_SIZE`` > 1)
the model is wrapped in torch's ``DistributedDataParallel`` and the training set in ``DistributedSampler``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from enum import Enum

import numpy as np

from deploykit.errors import InputError, MissingDependencyError
from deploykit.messages import SILENT, Reporter
from deploykit.runners.base import Device
from deploykit.train.config import TrainConfig
from deploykit.train.data import TrainData

UNFREEZE_LR_FACTOR = 0.1  # --unfreeze-after: every layer trains on at this fraction of --lr
WEIGHT_DECAY = 1e-4


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def dist_env() -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    return Dist(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))


def device_for(config: TrainConfig, dist: Dist):
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


def epoch_sampler(data: TrainData, config: TrainConfig, dist: Dist, epoch: int):
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


def _reduce(values: list[float], dist: Dist, device) -> list[float]:
    if dist.world == 1:
        return values
    import torch
    import torch.distributed as tdist

    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    tdist.all_reduce(tensor)
    return tensor.tolist()


def _run_val(model, loader, device, amp: bool, channels_last: bool, dist: Dist) -> tuple[float, float]:
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


class Loop:
    """The model, its DDP wrapper, optimizer and loaders for one run; one method per step of an epoch."""

    def __init__(self, config: TrainConfig, data: TrainData, model, head_name: str, device, dist: Dist) -> None:
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
        per_rank = len(epoch_sampler(data, config, dist, 0))
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

    def train_epoch(self, epoch: int, phase: Phase, reporter: Reporter = SILENT) -> tuple[float, float, float]:
        """One pass over the training set, a bar on ``reporter``; returns (mean loss, accuracy %, last lr)."""
        import torch
        import torch.nn.functional as F
        from torch.utils.data import DataLoader

        config = self.config
        torch.manual_seed(config.seed * 1_000_003 + epoch)  # dropout and augmentation draws
        self.generator.manual_seed(config.seed * 1_000_003 + epoch)  # DataLoader worker seeds
        sampler = epoch_sampler(self.data, config, self.dist, epoch)
        loader = DataLoader(self.data.train, batch_size=config.batch_size, sampler=sampler,
                            num_workers=_workers(config, self.data), pin_memory=self.cuda, generator=self.generator,
                            drop_last=self.drop_last)
        _train_mode(self.model, self.head_name, phase.trainable is Trainable.head)
        total = (phase.end - phase.start) * self.steps_per_epoch
        step = (epoch - phase.start) * self.steps_per_epoch
        loss_sum, correct, seen, lr = 0.0, 0.0, 0.0, phase.lr
        with reporter.progress(f"epoch {epoch + 1}/{config.epochs}", total=len(loader), loss=float("nan"),
                               acc=float("nan")) as task:
            for batches, (x, y) in enumerate(loader, 1):
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
                task.update(completed=batches, loss=loss_sum / seen, acc=100.0 * correct / seen)
        loss_sum, correct, seen = _reduce([loss_sum, correct, seen], self.dist, self.device)
        if not math.isfinite(loss_sum):  # the same on every rank (reduced): all stop, nothing is saved
            raise InputError(f"training diverged in epoch {epoch + 1}: the loss is NaN or infinite, so no checkpoint "
                             f"is saved from it; lower --lr (it was {config.lr:g})")
        return loss_sum / max(seen, 1), 100.0 * correct / max(seen, 1), lr

    def validate(self) -> tuple[float, float]:
        return _run_val(self.net, self.val_loader, self.device, self.config.amp, self.cuda, self.dist)

    def state(self, phase: Phase, epoch: int) -> dict:
        return {"phase": phase.trainable.value, "epoch": epoch,
                "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
                "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict()}


def init_distributed(config: TrainConfig, dist: Dist) -> None:
    import torch
    import torch.distributed as tdist

    if not tdist.is_initialized():
        nccl = config.device is not Device.cpu and torch.cuda.is_available()
        if nccl:
            torch.cuda.set_device(dist.local_rank)
        tdist.init_process_group(backend="nccl" if nccl else "gloo")
