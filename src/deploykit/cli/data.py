"""`deploykit data`: write a bundled dataset's split as an ImageFolder of PNGs (for eval, verify, calibration)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from deploykit.cli.app import app
from deploykit.cli.render import console, literal
from deploykit.data import Bundled, Split


@app.command()
def data(
    name: Annotated[Bundled, typer.Argument(help="Bundled dataset.")],
    out: Annotated[Path, typer.Option("--out", help="Folder to write <class>/<index>.png into.")],
    split: Annotated[Split, typer.Option("--split", help="val: the held-out images `train` validates on and "
                                                         "`eval --data NAME` uses; train: the rest.")] = Split.val,
    data_root: Annotated[Optional[Path], typer.Option("--data-root", help="Where MNIST / FashionMNIST / CIFAR10 "
                                                                          "files are.")] = None,
) -> None:
    """Write digits (or MNIST / FashionMNIST / CIFAR10 from --data-root) as PNG files, one folder per class."""
    from deploykit.data import bundled_split, write_imagefolder

    images = write_imagefolder(bundled_split(name, split, data_root=data_root), out)
    console.print(f"[bold]{literal(out)}[/]: {len(images)} images in {len(images.class_names or ())} class folders "
                  f"({name.value}, {split.value} split)", highlight=False)
