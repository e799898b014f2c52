"""Calibration and held-out evaluation crops for the INT8 noise benchmarks (no download: scikit-image and
scikit-learn ship the photos).

Calibration: crops (seed 0) of 7 scikit-image colour photos. Evaluation: crops (seed 1, another size) of all 12
photos, so 5 photos (astronaut, motorcycle_right, coffee, and scikit-learn's china and flower) are never seen by
calibration, and the other 7 are seen from other views.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image
from precision_calib_images import COLOUR, random_crops

HELD_OUT = ("astronaut.png", "motorcycle_right.png", "coffee.png", "china.jpg", "flower.jpg")


def photos(held_out: bool) -> dict[str, Image.Image]:
    import skimage.data
    from sklearn.datasets import load_sample_images

    root = Path(skimage.data.__file__).parent
    out = {n: Image.open(root / n).convert("RGB") for n in COLOUR if (root / n).is_file()}
    sk = load_sample_images()
    for name, arr in zip(sk.filenames, sk.images):
        out[Path(name).name] = Image.fromarray(arr).convert("RGB")
    return {k: v for k, v in out.items() if held_out or k not in HELD_OUT}


def write_crops(out: Path, n: int, size: int, seed: int, held_out: bool) -> list[Path]:
    images = list(photos(held_out).items())
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, k, crop in random_crops([img for _, img in images], n, size, seed):
        path = out / f"crop_{i:04d}_{Path(images[k][0]).stem}.jpg"
        crop.save(path, quality=85)
        paths.append(path)
    return paths


def ensure(root: Path, n_calib: int = 200, n_eval: int = 300) -> tuple[Path, Path]:
    calib, evals = root / f"calib{n_calib}", root / f"eval{n_eval}"
    if not calib.is_dir():
        write_crops(calib, n_calib, 256, seed=0, held_out=False)
    if not evals.is_dir():
        write_crops(evals, n_eval, 288, seed=1, held_out=True)
    return calib, evals
