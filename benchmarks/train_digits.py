"""Training targets on scikit-learn's digits (issue 6), measured with deploykit's own `fit`.

Targets: lenet >= 97% validation accuracy in <= 60 s on 2 CPU cores; resnet18 at 32x32 >= 98%.
Validation is the fixed held-out split (360 images) that `deploykit data digits` writes and `deploykit eval
--data digits` uses. The time is wall-clock for the whole run: data preparation, model build, every epoch.

    .venv/bin/python benchmarks/train_digits.py                       # both cases, seed 0, 2 threads
    .venv/bin/python benchmarks/train_digits.py --cases lenet --seeds 0,1,2 --threads 1
    .venv/bin/python benchmarks/train_digits.py --json runs/bench_train_digits.json

On a host shared with other work, two OpenMP threads can be far slower than one for a model as small as LeNet
(threads spin-wait for a core); the load average is printed beside the figures for that reason.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

# name -> (TrainConfig overrides, target accuracy %, time budget s or None)
CASES = {
    "lenet": ({"arch": "lenet"}, 97.0, 60.0),  # the defaults: `deploykit train lenet --data digits`
    "resnet18": ({"arch": "resnet18", "epochs": 12, "lr": 1e-3, "batch_size": 64, "img_size": 32}, 98.0, None),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="lenet,resnet18", help="comma list of " + ",".join(CASES))
    parser.add_argument("--seeds", default="0", help="comma list of seeds")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (the target is on 2 cores)")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()

    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    from deploykit.runners.base import Device
    from deploykit.train import TrainConfig, fit

    torch.set_num_threads(args.threads)
    names = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [n for n in names if n not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {unknown}; choose from {list(CASES)}")
    results, ok = [], True
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            overrides, target, budget = CASES[name]
            for seed in (int(s) for s in args.seeds.split(",")):
                config = TrainConfig(data="digits", seed=seed, device=Device.cpu, out=Path(tmp) / f"{name}-{seed}",
                                     **overrides)
                load_before = os.getloadavg()[0]
                start = time.perf_counter()
                result = fit(config)
                wall = time.perf_counter() - start
                passed = result.best_val_acc >= target and (budget is None or wall <= budget)
                ok &= passed
                row = {"case": name, "seed": seed, "threads": args.threads, "best_val_acc": result.best_val_acc,
                       "best_epoch": result.best_epoch, "epochs": result.epochs, "wall_s": wall,
                       "train_s": result.seconds, "target_acc": target, "budget_s": budget, "passed": passed,
                       "load_avg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
                       "config": {k: v for k, v in config.to_json().items() if k in overrides or k == "seed"}}
                results.append(row)
                print(f"{name:9s} seed {seed}  val_acc {result.best_val_acc:6.2f}% (epoch {result.best_epoch}/"
                      f"{result.epochs})  wall {wall:6.1f} s  target >= {target}%"
                      f"{f' in <= {budget:.0f} s' if budget else ''}  {'PASS' if passed else 'FAIL'}  "
                      f"[threads {args.threads}, load {row['load_avg_1m'][0]} -> {row['load_avg_1m'][1]}]",
                      flush=True)
    if args.json:
        from deploykit.files import write_json_atomic

        write_json_atomic(args.json, {"cpu_count": os.cpu_count(), "torch": torch.__version__, "results": results})
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
