"""Which INT8 layers cost accuracy, and the fewest to keep out of INT8 to meet a budget.

Sensitivity of a layer = the noise it adds on its own: the graph with only that layer in INT8 (every other layer
in the remainder precision), measured against the FP32 graph on the verification images. Layers are ranked by
that graph's mean squared logit error (a smooth measure that ranks well on a few dozen images). Measuring the
other way round -- one layer out of an otherwise INT8 graph -- ranks by interactions instead: on Lite0 the noise
of the first depthwise conv hides everything downstream, layers whose errors happened to cancel it scored below
zero, and moving 40 of 50 layers out of INT8 in that order left 90% of the logit error in (MSE 0.0092 of 0.036);
in this order 10 layers take out 92% of it and 26 take out 97% (docs/precision.md). The budget is then met
greedily: move the noisiest layer out of INT8, re-measure, the next... until the loss is within the budget, going
on past layers that gain nothing alone (two layers can matter together where neither does by itself). Greedy can
move a layer that later ones made unnecessary, so a pruning pass follows: each moved layer, most recently moved
first, goes back to INT8 if the budget still holds without it.
The layers are chosen on one half of the verification images and the loss reported is the other half's
(:func:`budget_split`). The loss is the accuracy drop in points when the images carry labels,
otherwise the top-1 disagreement with FP32 in points (an upper bound on the accuracy drop).

On the search half the budget holds when both the counted loss and the *expected* loss (:func:`expected_loss`)
are within it. Counting flips on a hundred images rewards the layer that happens to fix the two near-ties in the
sample (issue 11, Lite0: 0.78 points counted on the 128 search images, 3.9 on the 128 others); the expected loss
uses every image's noise, so it moves only with the noise itself (same run, steps 4-40: 3.5-4.5 expected
on the search half, 2.3-3.9 counted on the confirmation half, while the search half's count swung 0.8-4.7).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


BOOTSTRAP = 200  # resamples for the expected loss's standard error (seeded: the same images give the same answer)


@dataclass
class Score:
    loss: float  # points: accuracy drop (labels) or top-1 disagreement, counted on these images
    mse: float  # mean squared logit error vs FP32
    expected: float | None = None  # points: expected_loss() on these images
    expected_se: float = 0.0  # its standard error (bootstrap over the images)

    @property
    def worst(self) -> float:
        """What the budget is held to: the counted loss, and the expected one plus one standard error where it
        was estimated. A search that stops where the estimate first touches the budget stops on the images that
        happened to favour it; one standard error keeps the choice from resting on that luck (Lite0, search half
        0.95 expected, the other half 1.62 without it)."""
        return self.loss if self.expected is None else max(self.loss, self.expected + self.expected_se)

    def to_json(self) -> dict:
        out = {"loss_pts": round(self.loss, 4), "mse": float(self.mse)}
        if self.expected is not None:
            out["expected_loss_pts"] = round(self.expected, 4)
            out["expected_loss_se_pts"] = round(self.expected_se, 4)
        return out


def score(reference: np.ndarray, logits: np.ndarray, labels: np.ndarray | None) -> Score:
    mse = float(np.mean((reference.astype(np.float64) - logits) ** 2))
    if labels is not None:
        loss = 100.0 * (float((reference.argmax(1) == labels).mean()) - float((logits.argmax(1) == labels).mean()))
    else:
        loss = 100.0 * float((reference.argmax(1) != logits.argmax(1)).mean())
    terms = _FlipTerms.of(reference, logits, labels)
    if terms is None:
        return Score(loss, mse)
    return Score(loss, mse, terms.expected(), terms.standard_error())


def expected_loss(reference: np.ndarray, logits: np.ndarray, labels: np.ndarray | None) -> float | None:
    """The loss in points to expect on other images like these, rather than the one counted on these.

    Quantization moves each image's margin (its FP32 top-1 logit minus the strongest other class's) by some
    amount ``d``; an image flips when its ``d`` is below minus its margin. Which images happen to be near-ties
    with unlucky noise is chance, so every image's margin is paired with every image's ``d`` (the noise
    distribution transplanted across the sample): ``P(flip_j) = #{i : d_i < -margin_j} / n``. The expected
    disagreement is the mean of ``P(flip_j)``; with labels, a flip of image ``j`` (to FP32's runner-up, the
    likeliest) costs ``[top1_j == label_j] - [top2_j == label_j]`` and the expected accuracy drop is the mean of
    ``P(flip_j)`` times that. ``None`` for fewer than two classes or images.
    """
    terms = _FlipTerms.of(reference, logits, labels)
    return None if terms is None else terms.expected()


@dataclass
class _FlipTerms:
    margin: np.ndarray  # FP32 top-1 logit minus the strongest other class's, per image
    moved: np.ndarray  # how much the quantized graph moved that margin
    cost: np.ndarray  # what a flip costs: 1 without labels, else [top1 == label] - [top2 == label]
    lost: bool = False  # NaN/inf logits

    @classmethod
    def of(cls, reference, logits, labels) -> _FlipTerms | None:
        ref = np.asarray(reference, np.float64)
        out = np.asarray(logits, np.float64)
        if ref.ndim != 2 or ref.shape[1] < 2 or len(ref) < 2 or out.shape != ref.shape:
            return None
        rows = np.arange(len(ref))
        top2 = np.argsort(ref, axis=1)[:, -2:]
        first, second = top2[:, 1], top2[:, 0]

        def margin_of(values):  # FP32's top-1 against the strongest other class: < 0 is a flip
            others = values.copy()
            others[rows, first] = -np.inf
            return values[rows, first] - others.max(axis=1)

        margin = margin_of(ref)
        moved = margin_of(out) - margin
        cost = np.ones(len(ref)) if labels is None else \
            (first == np.asarray(labels)).astype(np.float64) - (second == np.asarray(labels))
        lost = not (np.isfinite(margin).all() and np.isfinite(moved).all())
        return cls(margin, moved, cost, lost)

    def expected(self, idx: np.ndarray | None = None) -> float:
        if self.lost:
            return 100.0  # NaN/inf logits: every image is lost
        margin, moved, cost = (self.margin, self.moved, self.cost) if idx is None else \
            (self.margin[idx], self.moved[idx], self.cost[idx])
        p_flip = np.searchsorted(np.sort(moved), -margin, side="left") / len(margin)
        return 100.0 * float((p_flip * cost).mean())

    def standard_error(self) -> float:
        if self.lost:
            return 0.0
        draws = np.random.default_rng(0).integers(0, len(self.margin), (BOOTSTRAP, len(self.margin)))
        return float(np.std([self.expected(idx) for idx in draws]))


@dataclass
class LayerCost:
    layer: str
    loss_alone: float  # loss when this layer is the only one in INT8
    mse_alone: float
    mse_added: float  # mse(this one INT8) - mse(none INT8): the noise this layer adds by itself

    def to_json(self) -> dict:
        return {"layer": self.layer, "loss_pts_if_only_int8": round(self.loss_alone, 4),
                "mse_if_only_int8": self.mse_alone, "mse_added": self.mse_added}


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
    floor: Score | None = None  # no layer in INT8 (the remainder precision alone), on the ranking's images
    n_ranking: int | None = None

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
                "confirm": self.confirm.to_json() if self.confirm else None,
                "none_int8": self.floor.to_json() if self.floor else None, "sensitivity_images": self.n_ranking}


def budget_split(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the search and confirmation halves of ``n`` verification images (seeded, disjoint): the budget
    chooses its layers on one and reports the loss of that choice on the other, so a choice fitted to a few
    images is not its own proof."""
    order = np.random.default_rng(seed).permutation(n)
    half = (n + 1) // 2
    return np.sort(order[:half]), np.sort(order[half:])


def rank_layers(layers: Sequence[str], evaluate: Callable[[Sequence[str]], np.ndarray], reference: np.ndarray,
                labels: np.ndarray | None, *, advance: Callable[[int], None] | None = None) -> tuple[Score, list]:
    """``evaluate(excluded_layers) -> logits`` of the INT8 graph with those layers out of INT8.

    Returns the score with no layer in INT8 (the floor the remainder precision sets) and every layer's cost
    alone, noisiest first."""
    everything = tuple(layers)
    floor = score(reference, evaluate(everything), labels)
    if advance:
        advance(1)
    costs = []
    for layer in layers:
        s = score(reference, evaluate(tuple(other for other in layers if other != layer)), labels)
        costs.append(LayerCost(layer, s.loss, s.mse, s.mse - floor.mse))
        if advance:
            advance(1)
    costs.sort(key=lambda c: (-c.mse_alone, -c.loss_alone))
    return floor, costs


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
        if current.worst <= budget:  # CPU quantizer gives a layer's input the range of the op that produces it)
            break
        kept.append(cost.layer)
        current = score(reference, evaluate(tuple(kept)), labels)
        measured[frozenset(kept)] = current
        result.steps.append({"layer": cost.layer, **current.to_json()})
    if current.worst <= budget:
        for layer in reversed(list(kept)):
            trial = [k for k in kept if k != layer]
            key = frozenset(trial)
            if key not in measured:  # removing the newest layer first gives the set before it: measured, over budget
                measured[key] = score(reference, evaluate(tuple(trial)), labels)
            if measured[key].worst <= budget:
                kept, current = trial, measured[key]
                result.steps.append({"layer": layer, "back_to_int8": True, **current.to_json()})
    result.kept_fp32 = kept
    result.final = current
    result.met = current.worst <= budget
    return result


def logits_of(path: Path, batch: np.ndarray) -> np.ndarray:
    from deploykit.runners.onnxrt import OnnxRuntimeRunner

    return OnnxRuntimeRunner(path).infer(batch)
