"""Fill a folder with real calibration photos: random crops of the colour photos scikit-image ships.

    python benchmarks/calib_images.py --out calib --n 40 --size 160    # the repo's starter ./calib
    python benchmarks/calib_images.py --out /tmp/calib512 --n 512      # the benchmark set

No download: the photos are inside the scikit-image wheel. Crops vary position, scale and mirroring, so a
few photos give many distinct views; for real deployments calibrate on images from your own domain.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from common import write_crops


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
