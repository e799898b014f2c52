"""Which INT8 layers cost accuracy, and the fewest to keep in FP32 to meet a budget.

Sensitivity of a layer = how much the INT8 graph's output improves when that one layer's Q/DQ is removed
(the layer runs FP32, everything else stays INT8), measured against the FP32 graph on the verification
images. Layers are ranked by the drop in mean squared logit error (a smooth measure that ranks well on a few
dozen images); the budget is then met greedily: keep the most sensitive layer in FP32, re-measure, the next...
until the loss is within the budget, going on past layers that gain nothing alone (two layers can matter together
where neither does by itself). Greedy can keep a layer that later ones made unnecessary, so a pruning pass
follows: each kept layer, most recently added first, goes back to INT8 if the budget still holds without it.
The layers are chosen on one half of the verification images and the loss reported is the other half's
(:func:`budget_split`). The loss is the accuracy drop in points when the images carry labels,
otherwise the top-1 disagreement with FP32 in points (an upper bound on the accuracy drop).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class Score:
    loss: float  # points: accuracy drop (labels) or top-1 disagreement
    mse: float  # mean squared logit error vs FP32

    def to_json(self) -> dict:
        return {"loss_pts": round(self.loss, 4), "mse": float(self.mse)}


def score(reference: np.ndarray, logits: np.ndarray, labels: np.ndarray | None) -> Score:
    mse = float(np.mean((reference.astype(np.float64) - logits) ** 2))
    if labels is not None:
        loss = 100.0 * (float((reference.argmax(1) == labels).mean()) - float((logits.argmax(1) == labels).mean()))
    else:
        loss = 100.0 * float((reference.argmax(1) != logits.argmax(1)).mean())
    return Score(loss, mse)


@dataclass
class LayerCost:
    layer: str
    loss_without: float  # loss when only this layer is FP32
    mse_without: float
    gain_mse: float  # mse(all INT8) - mse(this one FP32)

    def to_json(self) -> dict:
        return {"layer": self.layer, "loss_pts_if_fp32": round(self.loss_without, 4),
                "mse_if_fp32": self.mse_without, "mse_gain": self.gain_mse}


@dataclass
class BudgetResult:
    base: Score  # everything INT8
    ranking: list[LayerCost]
    kept_fp32: list[str] = field(default_factory=list)  # layers moved out of INT8, in order
    steps: list[dict] = field(default_factory=list)  # loss after each move
    final: Score | None = None  # on the search split, where the layers were chosen
    met: bool | None = None  # None: no budget was asked; else judged on the confirmation split when there is one
    confirm: Score | None = None  # the chosen graph on the confirmation split: the loss that is reported
    n_search: int | None = None
    n_confirm: int | None = None

    @property
    def loss(self) -> float | None:
        """The reported loss: the confirmation split's, else the search split's."""
        chosen = self.confirm or self.final
        return None if chosen is None else chosen.loss

    def to_json(self) -> dict:
        return {"all_int8": self.base.to_json(), "sensitivity": [c.to_json() for c in self.ranking],
                "kept_fp32": self.kept_fp32, "steps": self.steps,
                "final": self.final.to_json() if self.final else None, "met": self.met,
                "search_images": self.n_search, "confirm_images": self.n_confirm,
                "confirm": self.confirm.to_json() if self.confirm else None}


def budget_split(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the search and confirmation halves of ``n`` verification images (seeded, disjoint): the budget
    chooses its layers on one and reports the loss of that choice on the other, so a choice fitted to a few
    images is not its own proof."""
    order = np.random.default_rng(seed).permutation(n)
    half = (n + 1) // 2
    return np.sort(order[:half]), np.sort(order[half:])


def rank_layers(layers: Sequence[str], evaluate: Callable[[Sequence[str]], np.ndarray], reference: np.ndarray,
                labels: np.ndarray | None, *, advance: Callable[[int], None] | None = None) -> tuple[Score, list]:
    """``evaluate(excluded_layers) -> logits`` of the INT8 graph with those layers in FP32."""
    base = score(reference, evaluate(()), labels)
    costs = []
    for layer in layers:
        s = score(reference, evaluate((layer,)), labels)
        costs.append(LayerCost(layer, s.loss, s.mse, base.mse - s.mse))
        if advance:
            advance(1)
    costs.sort(key=lambda c: (-c.gain_mse, c.loss_without))
    return base, costs


def fit_budget(base: Score, ranking: list[LayerCost], budget: float | None,
               evaluate: Callable[[Sequence[str]], np.ndarray], reference: np.ndarray,
               labels: np.ndarray | None) -> BudgetResult:
    """The fewest layers (greedy by sensitivity, then pruned) to keep in FP32 so the loss is within ``budget``.

    ``result.steps`` records every move with the loss after it: layers moved to FP32 in order, then the ones the
    pruning pass moved back to INT8 (``"back_to_int8": True``).
    """
    result = BudgetResult(base, ranking)
    if budget is None:
        return result
    current = base
    kept: list[str] = []
    measured: dict[frozenset, Score] = {frozenset(): base}
    for cost in ranking:  # layers with no gain alone are tried too: a pair can matter where one does not (ORT's
        if current.loss <= budget:  # CPU quantizer gives a layer's input the range of the op that produces it)
            break
        kept.append(cost.layer)
        current = score(reference, evaluate(tuple(kept)), labels)
        measured[frozenset(kept)] = current
        result.steps.append({"layer": cost.layer, **current.to_json()})
    if current.loss <= budget:
        for layer in reversed(list(kept)):
            trial = [k for k in kept if k != layer]
            key = frozenset(trial)
            if key not in measured:  # removing the newest layer first gives the set before it: measured, over budget
                measured[key] = score(reference, evaluate(tuple(trial)), labels)
            if measured[key].loss <= budget:
                kept, current = trial, measured[key]
                result.steps.append({"layer": layer, "back_to_int8": True, **current.to_json()})
    result.kept_fp32 = kept
    result.final = current
    result.met = current.loss <= budget
    return result


def logits_of(path: Path, batch: np.ndarray) -> np.ndarray:
    from deploykit.runners.onnxrt import QDQ_FOLDING, OnnxRuntimeRunner

    return OnnxRuntimeRunner(path, session_config=QDQ_FOLDING).infer(batch)
