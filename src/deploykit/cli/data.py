"""`deploykit data`: write a bundled dataset's split as an ImageFolder of PNGs (for eval, verify, calibration)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from deploykit.cli.app import app
from deploykit.cli.render import console, literal
from deploykit.data import Bundled, Split, bundled_split, write_imagefolder


@app.command()
def data(
    name: Annotated[Bundled, typer.Argument(help="Bundled dataset.")],
    out: Annotated[Path, typer.Option("--out", help="Folder to write train/ and val/ into (with --split: "
                                                    "<class>/<index>.png of that split).")],
    split: Annotated[Optional[Split], typer.Option("--split", help="Only this split, straight into --out. val: "
                                                                   "the held-out images `train` validates on and "
                                                                   "`eval --data NAME` uses; train: the rest "
                                                                   "\\[default: both, as train/ and val/].")] = None,
    data_root: Annotated[Optional[Path], typer.Option("--data-root", help="Where MNIST / FashionMNIST / CIFAR10 "
                                                                          "files are.")] = None,
) -> None:
    """Write digits (or MNIST / FashionMNIST / CIFAR10 from --data-root) as PNG files, one folder per class."""
    # both splits by default: `deploykit train ARCH --data DIR` trains on train/ and validates on val/
    for part, dest in ([(split, out)] if split is not None else [(s, out / s.value) for s in (Split.train, Split.val)]):
        images = write_imagefolder(bundled_split(name, part, data_root=data_root), dest)
        console.print(f"[bold]{literal(dest)}[/]: {len(images)} images in {len(images.class_names or ())} class folders "
                      f"({name.value}, {part.value} split)", highlight=False, soft_wrap=True)
