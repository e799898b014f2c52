"""Does the accuracy budget's prediction hold on other images? (issue 11 follow-up)

    OMP_NUM_THREADS=2 PYTHONPATH=src python benchmarks/budget_prediction.py logits.npz [--budget 1.0] \\
        [--images 256] [--trials 400]

`logits.npz` holds FP32 logits under the key `fp32` and any number of other graphs' logits on the same images
(say 1200 held-out crops). Each trial draws `--images` of them (seeded), splits them into a search and a
confirmation half as `--accuracy-budget` does (`sensitivity.budget_split`: at random, or stratified by the FP32
margin as the export does), and asks the search half what the budget search asks: `Score.within` (the predicted
chance that the confirmation half counts a loss within the budget) and `Score.holds`. Then it counts the loss on
the confirmation half. Per graph and split: the mean predicted chance against the fraction of trials actually
within the budget, and -- what the budget promises -- among the trials where the search half says "holds", how
often the confirmation half agreed; and the same for the rule before it (expected loss plus one standard error
within the budget).

A fixed graph per trial: this checks the prediction itself, not the search's choice among graphs (which stops
at the first set of layers that holds, and so leans on the search half's luck a little more than this shows).
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from common import draw_halves, old_rule


def main() -> int:
    from deploykit.precision.sensitivity import CONFIDENCE, score

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("logits")
    parser.add_argument("--budget", type=float, default=1.0)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--trials", type=int, default=400)
    args = parser.parse_args()
    data = dict(np.load(args.logits))
    ref_all = data.pop("fp32")
    print(f"{len(ref_all)} images, {args.trials} trials of {args.images} (half each), budget {args.budget:g} pts, "
          f"holds = counted within it and predicted within it at >= {CONFIDENCE:.0%}\n")
    print("| graph | loss on all images | split | mean predicted P(within) | actually within | search says holds "
          "| of those, within | expected + 1 SE rule says holds | of those, within |\n|---|---|---|---|---|---|---|---|---|")
    for name, out_all in data.items():
        whole = score(ref_all, out_all, None)
        for stratified in (False, True):
            predicted, within, holds, held_within, old, old_within = [], [], 0, 0, 0, 0
            for search, confirm in draw_halves(ref_all, args.trials, args.images, stratified):
                s = score(ref_all[search], out_all[search], None)
                c = score(ref_all[confirm], out_all[confirm], None)
                predicted.append(s.within(args.budget, len(confirm)))
                ok = c.loss <= args.budget
                within.append(ok)
                if s.holds(args.budget, len(confirm)):
                    holds += 1
                    held_within += ok
                if old_rule(s, args.budget):
                    old += 1
                    old_within += ok
            print(f"| {name} | {whole.loss:.2f} (expected {whole.expected:.2f}) | "
                  f"{'stratified' if stratified else 'random'} | {np.mean(predicted):.2f} | {np.mean(within):.2f} | "
                  f"{holds} of {args.trials} | {held_within / holds if holds else float('nan'):.2f} | "
                  f"{old} of {args.trials} | {old_within / old if old else float('nan'):.2f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
