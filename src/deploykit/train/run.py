"""``fit(config)``: data -> model -> epochs -> ``<out>/best.pth`` (self-describing), ``last.pth``, ``metrics.json``."""

from __future__ import annotations

import time

from deploykit.files import ensure_writable_dir
from deploykit.models.registry import get_spec
from deploykit.messages import SILENT, Reporter, reporter_or_silent
from deploykit.train.checkpoints import RunRecord, load_state, write_epoch
from deploykit.train.config import EpochRecord, TrainConfig, TrainResult
from deploykit.train.data import load_data
from deploykit.train.loop import Loop, device_for, dist_env, init_distributed, phases
from deploykit.train.model import load_pretrained, model_for_training


def fit(config: TrainConfig, *, reporter: Reporter | None = None) -> TrainResult:
    """Train ``config.arch`` and write best.pth / last.pth / metrics.json into ``config.out_dir()``.

    ``reporter`` gets a bar per epoch (fields ``loss``, ``acc``), a log line per epoch, and the run's warnings and
    notes. Only rank 0 reports and writes files under torchrun.
    """
    config.validate()
    config = config.resolved()
    spec = get_spec(config.arch)
    dist = dist_env()
    if dist.world > 1:
        init_distributed(config, dist)
    main = dist.main
    reporter = reporter_or_silent(reporter) if main else SILENT
    try:
        device = device_for(config, dist)
        out = config.out_dir()
        loaded = load_pretrained(config, spec) if config.from_ckpt is not None else None
        # the pretrained model's normalisation is what its features expect
        data = load_data(config, spec, base=None if loaded is None else loaded.preprocess, reporter=reporter)
        notes: list[str] = []
        model, head_name = model_for_training(config, spec, len(data.class_names), data.preprocess.channels, loaded,
                                              notes)
        del loaded
        for line in notes:
            reporter.note(line)
        if main:  # only now: a checkpoint or data set that fails to load leaves no empty --out folder behind
            ensure_writable_dir(out, flag="--out")
        state = load_state(out / "last.pth", config, data) if config.resume else None
        if state is not None:
            model.load_state_dict(state["model"])
        history = [EpochRecord(**h) for h in state["history"]] if state else []
        best_acc = float(state["best_val_acc"]) if state else -1.0
        best_epoch = int(state["best_epoch"]) if state else 0
        elapsed = float(state["seconds"]) if state else 0.0

        loop = Loop(config, data, model, head_name, device, dist)
        for phase in phases(config):
            first = max(phase.start, state["epoch"] if state else 0)
            if first >= phase.end:
                continue
            loop.enter(phase, state)
            for epoch in range(first, phase.end):
                t0 = time.perf_counter()
                train_loss, train_acc, lr = loop.train_epoch(epoch, phase, reporter)
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
                    run = RunRecord(spec.name, head_name, config, data, history, best_acc, best_epoch, elapsed)
                    write_epoch(out, run, model if improved else None, loop.state(phase, epoch + 1))
                    reporter.log(record.line(config.epochs, improved))
            state = None
        return TrainResult(out, out / "best.pth", out / "metrics.json", best_acc, best_epoch, len(history), elapsed,
                           history, data.class_names, data.preprocess, notes, main)
    finally:
        if dist.world > 1:
            import torch.distributed as tdist

            if tdist.is_initialized():
                tdist.destroy_process_group()
