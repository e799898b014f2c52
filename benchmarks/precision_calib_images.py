"""Fill a folder with real calibration photos: random crops of the colour photos scikit-image ships.

    python benchmarks/precision_calib_images.py --out calib --n 40 --size 160    # the repo's starter ./calib
    python benchmarks/precision_calib_images.py --out /tmp/calib512 --n 512      # the benchmark set

No download: the photos are inside the scikit-image wheel. Crops vary position, scale and mirroring, so a
few photos give many distinct views; for real deployments calibrate on images from your own domain.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

from PIL import Image

COLOUR = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
          "motorcycle_right.png", "hubble_deep_field.jpg", "retina.jpg", "immunohistochemistry.png", "color.png")


def photos() -> list[Image.Image]:
    import skimage.data

    root = Path(skimage.data.__file__).parent
    return [Image.open(root / name).convert("RGB") for name in COLOUR if (root / name).is_file()]


def random_crops(images: list[Image.Image], n: int, size: int, seed: int):
    """``n`` seeded random square crops (35-100% of the shorter side, half of them mirrored) resized to ``size``,
    cycling through ``images``: yields ``(i, index of the photo, crop)``."""
    rng = random.Random(seed)
    for i in range(n):
        k = i % len(images)
        w, h = images[k].size
        side = int(min(w, h) * rng.uniform(0.35, 1.0))
        left, top = rng.randint(0, w - side), rng.randint(0, h - side)
        crop = images[k].crop((left, top, left + side, top + side)).resize((size, size), Image.Resampling.BICUBIC)
        if rng.random() < 0.5:
            crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        yield i, k, crop


def write_crops(out: Path, n: int, size: int, seed: int = 0, quality: int = 85) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, _, crop in random_crops(photos(), n, size, seed):
        path = out / f"crop_{i:04d}.jpg"
        crop.save(path, quality=quality)
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("calib"))
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    paths = write_crops(args.out, args.n, args.size, args.seed)
    total = sum(p.stat().st_size for p in paths)
    print(f"wrote {len(paths)} crops to {args.out} ({total / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
