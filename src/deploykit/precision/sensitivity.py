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

On the search half the budget holds when the counted loss is within it and the loss the confirmation half will
*count* is predicted to be within it too, with probability at least :data:`CONFIDENCE` (:meth:`Score.within`).
Counting flips on a hundred images rewards the layer that happens to fix the two near-ties in the sample (issue
11, Lite0: 0.78 points counted on the 128 search images, 3.9 on the 128 others); the prediction uses every
image's noise (:func:`expected_loss`), so it moves only with the noise itself (same run, steps 4-40: 3.5-4.5
expected on the search half, 2.3-3.9 counted on the confirmation half, while the search half's count swung
0.8-4.7). Holding the expected loss alone (even plus a standard error) to the budget is not enough: on 128
unlabelled images one flip is 0.78 points, and an expected 1.1 flips is 3 or more flips one time in six (Lite0's
CPU graph, 2026-12-02: 1.11 points expected on the confirmation half, 2.34 counted).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


BOOTSTRAP = 200  # resamples for the expected loss's standard error (seeded: the same images give the same answer)
# The chance, predicted on the search half, that the confirmation half counts the budget as met. The search stops
# at the first set of layers whose search half says so, i.e. where that half's noise happened to look good, so the
# prediction there is optimistic: simulated along the real ranking (benchmarks/budget_search.py, 200 draws of 128 +
# 128 crops), 0.8 was met by the confirmation half 0.73 of the time on Lite0, 0.69 / 0.85 on Lite1 / 2; 0.9 was met 0.95
# (Lite0, where it was chosen), 0.89 and 0.95 (Lite1, Lite2: held out), at 3-7 more layers out of INT8.
CONFIDENCE = 0.9
DRAWS = 2000  # simulated confirmation halves behind that prediction (seeded)


@dataclass
class Score:
    loss: float  # points: accuracy drop (labels) or top-1 disagreement, counted on these images
    mse: float  # mean squared logit error vs FP32
    expected: float | None = None  # points: expected_loss() on these images
    expected_se: float = 0.0  # its standard error (bootstrap over the images)
    terms: _FlipTerms | None = field(default=None, repr=False, compare=False)

    def within(self, budget: float, n: int) -> float:
        """The chance that ``n`` other images like these count a loss within ``budget`` points (1.0 or 0.0 from
        the count alone where no expected loss could be estimated)."""
        if self.terms is None:
            return float(self.loss <= budget)
        return self.terms.within(budget, n)

    def holds(self, budget: float, n: int) -> bool:
        """The budget holds here: counted on these images, and predicted for ``n`` others (the confirmation
        half) with probability at least CONFIDENCE."""
        return self.loss <= budget and self.within(budget, n) >= CONFIDENCE

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
    return Score(loss, mse, terms.expected(), terms.standard_error(), terms)


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
    _within: dict = field(default_factory=dict)  # within()'s answers: the search asks the same question twice

    @classmethod
    def of(cls, reference, logits, labels) -> _FlipTerms | None:
        ref = np.asarray(reference, np.float64)
        out = np.asarray(logits, np.float64)
        if ref.ndim != 2 or ref.shape[1] < 2 or len(ref) < 2 or out.shape != ref.shape:
            return None
        rows = np.arange(len(ref))
        top2 = np.argsort(ref, axis=1)[:, -2:]
        first, second = top2[:, 1], top2[:, 0]

        def margin_of(values):  # FP32's top-1 against the strongest other class (< 0 is a flip): margins() on FP32
            others = values.copy()
            others[rows, first] = -np.inf
            return values[rows, first] - others.max(axis=1)

        margin = margins(ref)
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
        return 100.0 * float((self._p_flip(margin, moved) * cost).mean())

    @staticmethod
    def _p_flip(margin: np.ndarray, moved: np.ndarray) -> np.ndarray:
        return np.searchsorted(np.sort(moved), -margin, side="left") / len(margin)

    def within(self, budget: float, n: int, draws: int = DRAWS) -> float:
        """The chance that ``n`` new images count a loss within ``budget`` points. Each simulated set of new
        images is a bootstrap resample of these images' flip chances (so the uncertainty of the estimate is in
        it), whose flips are then drawn: each image gains a point (a right answer or an agreement lost) with the
        resample's mean of ``P(flip) * [cost = 1]``, loses one with that of ``P(flip) * [cost = -1]``.
        Seeded: the same logits give the same answer."""
        if self.lost:
            return 0.0
        key = (budget, n, draws)
        if key not in self._within:
            p = self._p_flip(self.margin, self.moved)
            gain, regain = p * (self.cost > 0), p * (self.cost < 0)
            rng, hits, size = np.random.default_rng(0), 0, len(p)
            for start in range(0, draws, 250):
                idx = rng.integers(0, size, (min(250, draws - start), size))  # bootstrap resamples of the images
                q = np.stack([gain[idx].mean(1), regain[idx].mean(1)], axis=1)
                q = np.concatenate([q, np.clip(1.0 - q.sum(1, keepdims=True), 0.0, 1.0)], axis=1)
                counts = rng.multinomial(n, q / q.sum(1, keepdims=True))
                hits += int((100.0 * (counts[:, 0] - counts[:, 1]) / n <= budget + 1e-9).sum())
            self._within[key] = hits / draws
        return self._within[key]

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


def budget_split(n: int, seed: int = 0, reference: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the search and confirmation halves of ``n`` verification images (seeded, disjoint): the budget
    chooses its layers on one and reports the loss of that choice on the other, so a choice fitted to a few
    images is not its own proof.

    Given the FP32 ``reference`` logits, the halves are stratified by each image's FP32 margin (top-1 logit minus
    the runner-up): the images are taken in order of their margin two at a time, and a seeded coin sends one of
    each pair to each half. A count on a hundred images is decided by its few near-ties, which flip under any
    noise; split at random they fall where chance puts them (Lite0, 256 unsure crops: 7 of the 11 with margins
    under 0.05 logits, and 12 of the 19 under 0.1, fell in the confirmation half, which then counted flips the
    search half could not foresee; stratified: 5 of 11, 10 of 19). Each half holds its share, and the search
    sees what the confirmation will."""
    rng = np.random.default_rng(seed)
    if reference is None or np.ndim(reference) != 2 or np.shape(reference)[1] < 2:
        order = rng.permutation(n)
        half = (n + 1) // 2
        return np.sort(order[:half]), np.sort(order[half:])
    ranked = np.argsort(margins(reference), kind="stable")
    pairs = ranked[:n - n % 2].reshape(-1, 2)
    coin = rng.integers(0, 2, len(pairs))
    search = np.concatenate([pairs[np.arange(len(pairs)), coin], ranked[n - n % 2:]])
    return np.sort(search), np.sort(pairs[np.arange(len(pairs)), 1 - coin])


def margins(reference: np.ndarray) -> np.ndarray:
    """Each image's FP32 top-1 logit minus its strongest other class's."""
    top2 = np.sort(np.asarray(reference, np.float64), axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


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
               labels: np.ndarray | None, confirm_n: int | None = None) -> BudgetResult:
    """The fewest layers (greedy by sensitivity, then pruned) to keep in FP32 so the loss is within ``budget``:
    counted on these images, and predicted (:meth:`Score.holds`) for the ``confirm_n`` images of the other half
    (default: as many as these).

    ``result.steps`` records every move with the loss after it and ``p_within_budget``: layers moved to FP32 in
    order, then the ones the pruning pass moved back to INT8 (``"back_to_int8": True``).
    """
    result = BudgetResult(base, ranking)
    if budget is None:
        return result
    n = confirm_n or len(reference)

    def step(layer: str, s: Score, **extra) -> None:
        result.steps.append({"layer": layer, **extra, **s.to_json(), "p_within_budget": round(s.within(budget, n), 4)})

    current = base
    kept: list[str] = []
    measured: dict[frozenset, Score] = {frozenset(): base}
    for cost in ranking:  # layers with no gain alone are tried too: a pair can matter where one does not (ORT's
        if current.holds(budget, n):  # CPU quantizer gives a layer's input the range of the op that produces it)
            break
        kept.append(cost.layer)
        current = score(reference, evaluate(tuple(kept)), labels)
        measured[frozenset(kept)] = current
        step(cost.layer, current)
    if current.holds(budget, n):
        for layer in reversed(list(kept)):
            trial = [k for k in kept if k != layer]
            key = frozenset(trial)
            if key not in measured:  # removing the newest layer first gives the set before it: measured, over budget
                measured[key] = score(reference, evaluate(tuple(trial)), labels)
            if measured[key].holds(budget, n):
                kept, current = trial, measured[key]
                step(layer, current, back_to_int8=True)
    result.kept_fp32 = kept
    result.final = current
    result.met = current.holds(budget, n)
    return result


def logits_of(path: Path, batch: np.ndarray) -> np.ndarray:
    from deploykit.precision.graph import ort_providers
    from deploykit.runners.onnxrt import OnnxRuntimeRunner

    cuda = ort_providers()[0] == "CUDAExecutionProvider"  # the reference's and gates' logits: on the GPU if any
    return OnnxRuntimeRunner(path, device="cuda" if cuda else "cpu").infer(batch)
