"""`deploykit train`: fit a zoo architecture -> runs/<arch>/best.pth (self-describing) + metrics.json."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from deploykit.cli.app import app
from deploykit.cli.options import AllowPickleOpt
from deploykit.cli.render import console, err_console, literal
from deploykit.cli.messages import ConsoleReporter
from deploykit.errors import InputError
from deploykit.runners.base import Device
from deploykit.train import TrainConfig, fit


@app.command()
def train(
    arch: Annotated[str, typer.Argument(help="Registry architecture (see `deploykit models`).")],
    data: Annotated[str, typer.Option("--data", help="ImageFolder (with train/ and val/, or split by --val-split), "
                                                     "or a bundled dataset: digits, mnist, fashionmnist, cifar10 "
                                                     "(a folder with such a name: ./digits).")],
    epochs: Annotated[int, typer.Option("--epochs", help="Passes over the training set.")] = 10,
    batch_size: Annotated[Optional[int], typer.Option("--batch-size", help="Images per step (per GPU under "
                                                                          "torchrun) \\[default: 64; lenet 32].")
                          ] = None,
    lr: Annotated[Optional[float], typer.Option("--lr", help="Peak learning rate (AdamW, warm-up then cosine) "
                                                             "\\[default: 1e-3; lenet 5e-3].")] = None,
    img_size: Annotated[Optional[int], typer.Option("--img-size", help="Square input size "
                                                                       "\\[default: the architecture's].")] = None,
    val_split: Annotated[Optional[float], typer.Option("--val-split", help="Share of a single ImageFolder held out "
                                                                           "for validation \\[default: 0.2].")] = None,
    from_ckpt: Annotated[Optional[Path], typer.Option("--from", help="Start from this checkpoint (any kind "
                                                                     "`export` reads); the classifier head is "
                                                                     "replaced for the new classes.")] = None,
    freeze_backbone: Annotated[bool, typer.Option("--freeze-backbone", help="Train only the new head "
                                                                            "(needs --from).")] = False,
    unfreeze_after: Annotated[Optional[int], typer.Option("--unfreeze-after", help="With --freeze-backbone: after N "
                                                                                   "epochs train every layer at "
                                                                                   "0.1 x --lr.")] = None,
    balanced: Annotated[bool, typer.Option("--balanced", help="Sample classes evenly (WeightedRandomSampler).")
                        ] = False,
    amp: Annotated[bool, typer.Option("--amp", help="FP16 autocast with loss scaling (CUDA).")] = False,
    device: Annotated[Optional[Device], typer.Option("--device", help="\\[default: cuda when available].")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed for the split, shuffling, augmentation and init.")] = 0,
    out: Annotated[Optional[Path], typer.Option("--out", help="Run folder \\[default: runs/<arch>/].")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --out from its last.pth.")] = False,
    data_root: Annotated[Optional[Path], typer.Option("--data-root", help="Where MNIST / FashionMNIST / CIFAR10 "
                                                                          "files already are (never downloaded).")
                         ] = None,
    threads: Annotated[Optional[int], typer.Option("--threads", help="PyTorch CPU threads \\[default: all cores].")
                       ] = None,
    allow_pickle: AllowPickleOpt = False,
) -> None:
    """Train or fine-tune a classifier; the checkpoint goes straight to `deploykit export`."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

    if threads is not None:
        if threads < 1:
            raise InputError("--threads must be >= 1")
        import torch

        torch.set_num_threads(threads)
    config = TrainConfig(arch=arch, data=data, epochs=epochs, batch_size=batch_size, lr=lr, img_size=img_size,
                         val_split=val_split, from_ckpt=from_ckpt, freeze_backbone=freeze_backbone,
                         unfreeze_after=unfreeze_after, balanced=balanced, amp=amp, device=device, seed=seed, out=out,
                         resume=resume, data_root=data_root, allow_pickle=allow_pickle)
    config.validate()
    reporter = ConsoleReporter(err_console, TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                               TextColumn("loss {task.fields[loss]:.4f}  acc {task.fields[acc]:.1f}%"),
                               TimeElapsedColumn())
    result = fit(config, reporter=reporter)
    if result.main:  # only rank 0 writes and reports under torchrun
        pre = result.preprocess
        console.print(f"[bold]{literal(result.best_path)}[/]  {literal(arch)}  classes={len(result.class_names)}  "
                      f"input={'x'.join(map(str, pre.shape))}  best val_acc {result.best_val_acc:.2f}% "
                      f"(epoch {result.best_epoch}/{result.epochs})  {result.seconds:.1f} s", highlight=False)
        console.print(f"next: deploykit export {literal(result.best_path)}", highlight=False)
