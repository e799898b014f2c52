"""Small real models for tests: registry architectures at seeded random init, saved as deploykit checkpoints."""

from __future__ import annotations

from pathlib import Path


def make_checkpoint(path: Path, arch: str, num_classes: int = 10, size: int | None = None, **extra) -> Path:
    """A deploykit checkpoint of a registry architecture at seeded random init (``size``: square input, no
    resize), with the registry's preprocessing recorded."""
    import torch

    from deploykit.models import build_model, get_spec
    from deploykit.models.loading import save_checkpoint

    torch.manual_seed(0)
    pre = get_spec(arch).preprocess()
    if size is not None:
        pre = pre.replace(height=size, width=size, resize=None)
        extra.setdefault("input_shape", list(pre.shape))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, build_model(arch, num_classes=num_classes), arch=arch, num_classes=num_classes,
                    preprocess=pre, **extra)
    return Path(path)
