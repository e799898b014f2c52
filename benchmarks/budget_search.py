"""How often does the `--accuracy-budget` search's choice hold on its confirmation half? (issue 11 follow-up)

`budget_prediction.py` checks the prediction on fixed graphs. The search does more: it walks the sensitivity
ranking, moving one more layer out of INT8 at each step, and stops at the first step whose search half says
"holds" -- so it stops where that half's noise happened to look good, and the prediction there is optimistic.
This simulates exactly that stopping rule on many draws of images, with the graphs of the real ranking.

1. `paths`: runs `deploykit export ... --accuracy-budget B` (the arguments after `--`), and for each target the
   budget ran on, writes the logits on `--eval` images of every prefix of its ranking (0, 1, ... all layers out
   of INT8) to OUT_NPZ, with the FP32 logits (from REF_FOLDER's model.onnx; REF_FOLDER also gives the
   preprocessing). One graph per prefix: ~12 s each for Lite0's CPU graph on 1200 crops (2 cores).

       PYTHONPATH=src python benchmarks/budget_search.py paths /tmp/path_lite0.npz /tmp/lite0 /tmp/eval1200 -- \\
           export W.pth --out /tmp/pb0 ... --int8 --int8-for cpu --accuracy-budget 1.0 --data /tmp/eval300

2. `simulate`: for each of `--trials` draws of `--images` of those images, split as the export does (random or
   stratified by FP32 margin), walks the path with each stopping rule and counts the loss on the confirmation
   half at the step it stopped at. Prints, per rule: how often the confirmation half was within the budget, how
   many layers were moved, and the loss of the chosen step on all images.

       PYTHONPATH=src python benchmarks/budget_search.py simulate /tmp/path_lite0.npz [--trials 200]

The simulation has no pruning pass (the export moves layers back to INT8 afterwards while the rule still
holds: one more walk to the same edge) and uses one ranking for every draw.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import draw_halves, old_rule


def paths(out_npz: Path, ref_folder: Path, eval_dir: Path, export_args: list[str]) -> None:
    import deploykit.precision.variants as variants
    from deploykit.cli import main
    from deploykit.manifest import Manifest
    from deploykit.runners.onnxrt import OnnxRuntimeRunner

    x = Manifest.load(ref_folder).preprocessing.batch(sorted(p for p in eval_dir.iterdir() if p.is_file()))
    original = variants._budget

    def run(path: Path) -> np.ndarray:
        runner = OnnxRuntimeRunner(path)
        return np.concatenate([runner.infer(x[i:i + 32]) for i in range(0, len(x), 32)]).astype(np.float32)

    def budget_then_path(result, request, target, *args):
        kept = original(result, request, target, *args)
        if target not in result.budgets:  # the all-INT8 graph met its gate and the budget: no search ran
            return kept
        quantize = args[2]  # _budget(result, request, target, precision, plan, quantize, ...)
        ranking = [c.layer for c in result.budgets[target].ranking]
        logits = []
        with tempfile.TemporaryDirectory() as tmp:
            for k in range(len(ranking) + 1):
                t = time.perf_counter()
                quantize(Path(tmp) / "probe.onnx", tuple(ranking[:k]), probe=True)
                logits.append(run(Path(tmp) / "probe.onnx"))
                print(f"path {target.value} {k}/{len(ranking)} {time.perf_counter() - t:.1f}s", flush=True)
        np.savez(out_npz.with_name(f"{out_npz.stem}-{target.value}.npz"), fp32=run(ref_folder / "model.onnx"),
                 path=np.stack(logits), ranking=np.array(ranking))
        return kept

    variants._budget = budget_then_path  # the export's own search, ranking and graph builder, untouched
    sys.argv = ["deploykit", *export_args]
    main()


def simulate(npz: Path, trials: int, budget: float, images: int) -> None:

    from deploykit.precision.sensitivity import CONFIDENCE, score

    data = np.load(npz)
    fp32, path = data["fp32"].astype(np.float64), data["path"]
    last = len(path) - 1
    whole = [score(fp32, path[k].astype(np.float64), None).loss for k in range(last + 1)]
    print(f"{npz}: {last} layers; loss on all {len(fp32)} images after k moved: " +
          " ".join(f"{k}:{whole[k]:.2f}" for k in range(0, last + 1, 5)))
    rules = {"expected + 1 SE": lambda s, n: old_rule(s, budget),
             **{f"P(within) >= {c:g}{' (default)' if c == CONFIDENCE else ''}":
                (lambda c: lambda s, n: s.loss <= budget and s.within(budget, n) >= c)(c) for c in (0.8, 0.9, 0.95)}}
    print("| split | rule | confirmation within the budget | layers moved: mean (min-max) | loss on all images at "
          "that step: mean, share over the budget |\n|---|---|---|---|---|")
    for stratified in (False, True):
        found: dict[str, list] = {name: [] for name in rules}
        for search, confirm in draw_halves(fp32, trials, images, stratified):
            scores: dict[int, object] = {}

            def at(k: int):
                if k not in scores:
                    scores[k] = score(fp32[search], path[k][search].astype(np.float64), None)
                return scores[k]

            for name, holds in rules.items():
                k = next((k for k in range(last + 1) if holds(at(k), len(confirm))), last)
                confirmed = score(fp32[confirm], path[k][confirm].astype(np.float64), None).loss <= budget + 1e-9
                found[name].append((k, confirmed, whole[k]))
        for name, rows in found.items():
            k, ok, loss = map(np.array, zip(*rows))
            print(f"| {'stratified' if stratified else 'random'} | {name} | {ok.mean():.2f} | {k.mean():.1f} "
                  f"({k.min()}-{k.max()}) | {loss.mean():.2f}, {np.mean(loss > budget):.2f} |", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("paths")
    p.add_argument("out", type=Path)
    p.add_argument("ref_folder", type=Path)
    p.add_argument("eval", type=Path)
    s = sub.add_parser("simulate")
    s.add_argument("npz", type=Path)
    s.add_argument("--trials", type=int, default=200)
    s.add_argument("--budget", type=float, default=1.0)
    s.add_argument("--images", type=int, default=256)
    argv = sys.argv[1:]
    export_args = argv[argv.index("--") + 1:] if "--" in argv else []
    args = parser.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    if args.command == "paths":
        paths(args.out, args.ref_folder, args.eval, export_args)
    else:
        simulate(args.npz, args.trials, args.budget, args.images)
    return 0


if __name__ == "__main__":
    sys.exit(main())
