"""Which INT8 layers cost accuracy, and the fewest to keep out of INT8 to meet a budget.

Sensitivity of a layer = the noise it adds alone: the graph with only that layer in INT8 (every other layer in the
remainder precision), ranked by its mean squared logit error against the FP32 graph on the verification images
(one layer *removed* from an all-INT8 graph ranks by interactions instead). The budget is met greedily -- move the
noisiest layer out of INT8, re-measure, on past layers that gain nothing alone -- then a pruning pass puts back
each moved layer, newest first, that the budget holds without. Layers are chosen on one half of the images and
the loss reported is the other half's (:func:`budget_split`): the accuracy drop in points with labels, else the
top-1 disagreement with FP32. On the search half the budget holds when the counted loss is within it *and* the
confirmation half is predicted to count a loss within it with probability :data:`CONFIDENCE`
(:meth:`Score.within`): a count on a hundred-odd images is too coarse to hold the expected loss alone to.
An INT8 gate miss without ``--accuracy-budget`` only names the likely layers, from one pass
(:func:`layer_noise`): the FP32 graph with every tensor the INT8 graph quantizes as an output, each layer ranked
by the local noise of its quantized input and weight (as ONNX Runtime's ``qdq_loss_debug``). It does not see how
the noise grows on its way to the logits; the per-layer search behind ``--accuracy-budget`` measures that.
The measurements behind each rule: docs/precision.md, "Accuracy, gates, budget".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


BOOTSTRAP = 200  # resamples for the expected loss's standard error (seeded: the same images give the same answer)
# The chance, predicted on the search half, that the confirmation half counts the budget as met. 0.9, not 0.8:
# the search stops where its half's noise looks good, so the prediction there is optimistic (the replay that
# chose it: docs/precision.md, "The count the other half will see"; benchmarks/budget_search.py).
CONFIDENCE = 0.9
DRAWS = 2000  # simulated confirmation halves behind that prediction (seeded)


@dataclass
class Score:
    loss: float  # points: accuracy drop (labels) or top-1 disagreement, counted on these images
    mse: float  # mean squared logit error vs FP32
    expected: float | None = None  # points: the loss to expect on other images like these (_FlipTerms)
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


@dataclass
class _FlipTerms:
    """The loss in points to expect on other images like these, rather than the one counted on these.

    Quantization moves each image's margin (its FP32 top-1 logit minus the strongest other class's) by some
    amount ``d``; an image flips when its ``d`` is below minus its margin. Which images happen to be near-ties
    with unlucky noise is chance, so every image's margin is paired with every image's ``d`` (the noise
    distribution transplanted across the sample): ``P(flip_j) = #{i : d_i < -margin_j} / n``. The expected
    disagreement is the mean of ``P(flip_j)``; with labels, a flip of image ``j`` (to FP32's runner-up, the
    likeliest) costs ``[top1_j == label_j] - [top2_j == label_j]`` and the expected accuracy drop is the mean of
    ``P(flip_j)`` times that. :meth:`of` is ``None`` for fewer than two classes or images.
    """

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
class LayerNoise:
    """One layer's quantization noise from :func:`layer_noise`: the relative noise power
    ``sum((qdq(x) - x)^2) / sum(x^2)`` of its quantized activation input(s) and of its weight."""

    layer: str
    activation: float
    weight: float

    @property
    def noise(self) -> float:
        """The relative noise the layer's output carries from both (independent noise powers add)."""
        return self.activation + self.weight

    def to_json(self) -> dict:
        return {"layer": self.layer, "relative_noise": self.noise, "sqnr_db": _db(self.noise),
                "activation_sqnr_db": _db(self.activation), "weight_sqnr_db": _db(self.weight)}


def _db(noise: float) -> float | None:
    """Signal to quantization-noise ratio in dB (None: no noise, e.g. a weight left in FP32)."""
    return None if noise <= 0 else round(float(-10.0 * np.log10(noise)), 2)


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
    one_pass: bool = False  # ranking: LayerNoise from layer_noise() (a miss without a budget), not LayerCost

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
                "none_int8": self.floor.to_json() if self.floor else None, "sensitivity_images": self.n_ranking,
                "sensitivity_method": ONE_PASS if self.one_pass else EACH_ALONE}


ONE_PASS = "one pass: each layer's quantization noise (its quantized inputs and weight)"
EACH_ALONE = "each layer alone in INT8, against FP32"


def _qdq_error(x: np.ndarray, rng: dict[str, float], unsigned: bool) -> float:
    """``sum((qdq(x) - x)^2)``: ``x`` quantized and dequantized as the INT8 graph does -- symmetric int8 on the
    calibrated ``amax`` (TensorRT), or asymmetric uint8 on the clipped ``[min, max]`` (ONNX Runtime's CPU graph, as
    ``int8.quantize_cpu``). In float32, in place on one buffer: this runs on every activation of the model."""
    if unsigned:
        amax = float(rng.get("amax_u8", rng["amax"]))
        lo, hi = min(max(float(rng["min"]), -amax), 0.0), max(min(float(rng["max"]), amax), 0.0)
        scale = max(hi - lo, 1e-12) / 255.0
        zero = float(np.round(-lo / scale))
        low, high = -zero, 255.0 - zero
    else:
        scale = max(float(rng["amax"]), 1e-12) / 127.0
        low, high = -127.0, 127.0
    q = np.divide(x, np.float32(scale), dtype=np.float32)
    np.rint(q, out=q)
    np.clip(q, low, high, out=q)
    q *= np.float32(scale)
    q -= x
    return float(np.dot(q.ravel(), q.ravel()))


def _weight_noise(w: np.ndarray, axis: int | None) -> float:
    """Relative noise power of a weight quantized to int8 symmetric per channel along ``axis``."""
    if axis is None:
        return 0.0
    w = np.asarray(w, np.float64)
    other = tuple(i for i in range(w.ndim) if i != axis)
    scale = np.maximum(np.abs(w).max(axis=other, keepdims=True), 1e-12) / 127.0
    q = np.clip(np.round(w / scale), -127, 127) * scale
    return float(((q - w) ** 2).sum() / max((w ** 2).sum(), 1e-30))


def layer_noise(fp32_path: Path, layers: Sequence, ranges: dict[str, dict[str, float]], batch: np.ndarray, *,
                unsigned: bool = False, chunk: int = 8,
                advance: Callable[[int], None] | None = None) -> list[LayerNoise]:
    """Every quantized layer's noise from one run of the FP32 graph over ``batch``, noisiest first.

    ``layers``: the plan's ``QuantLayer``s (activation inputs, weight, weight axis); ``ranges``: the calibrated
    ranges per activation tensor (``min``, ``max``, ``amax``, ``amax_u8``); ``unsigned``: the CPU graph's uint8
    activations. The graph runs with every quantized activation as an extra output, ``chunk`` images at a time,
    and the noise sums are accumulated, so memory stays that of a few images' activations. ``advance(n)``: progress,
    in images."""
    import onnx
    from onnx import numpy_helper

    from deploykit.runners.onnxrt import OnnxRuntimeRunner

    model = onnx.load(str(fp32_path))
    weights = {i.name: i for i in model.graph.initializer}
    tensors = list(dict.fromkeys(t for layer in layers for t in layer.activations if t in ranges))
    present = {o.name for o in model.graph.output}
    for name in tensors:
        if name not in present:
            model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    err = dict.fromkeys(tensors, 0.0)
    power = dict.fromkeys(tensors, 0.0)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "taps.onnx"
        onnx.save(model, str(path), save_as_external_data=model.ByteSize() > 1_800_000_000)
        runner = OnnxRuntimeRunner(path)
        names = [o.name for o in runner.session.get_outputs()]
        fixed = runner.session.get_inputs()[0].shape[0]
        chunk = fixed if isinstance(fixed, int) and fixed > 0 else chunk  # a graph exported with a fixed batch
        for start in range(0, len(batch) - len(batch) % chunk if len(batch) >= chunk else 0, chunk):
            outs = dict(zip(names, runner.session.run(names, {runner.input_name: batch[start:start + chunk]})))
            for name in tensors:
                x = np.ascontiguousarray(outs.pop(name), np.float32)
                err[name] += _qdq_error(x, ranges[name], unsigned)
                power[name] += float(np.dot(x.ravel(), x.ravel()))
            if advance:
                advance(chunk)
        del runner
    out = []
    for layer in layers:
        acts = [err[t] / max(power[t], 1e-30) for t in layer.activations if t in err]
        w = 0.0
        if layer.weight is not None and layer.weight in weights:
            w = _weight_noise(numpy_helper.to_array(weights[layer.weight]), layer.weight_axis)
        out.append(LayerNoise(layer.name, float(np.mean(acts)) if acts else 0.0, w))
    out.sort(key=lambda n: -n.noise)
    return out


def budget_split(n: int, seed: int = 0, reference: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the search and confirmation halves of ``n`` verification images (seeded, disjoint): the budget
    chooses its layers on one and reports the loss of that choice on the other, so a choice fitted to a few
    images is not its own proof.

    Given the FP32 ``reference`` logits, the halves are stratified by each image's FP32 margin (top-1 logit minus
    the runner-up): the images are taken in order of their margin two at a time, and a seeded coin sends one of
    each pair to each half. A count on a hundred images is decided by its few near-ties, which flip under any
    noise; split at random they fall where chance puts them (docs/precision.md, "Search and confirmation
    halves"). Each half holds its share, and the search sees what the confirmation will."""
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
    from deploykit import runners
    from deploykit.precision.graph import ort_providers

    cuda = ort_providers()[0] == "CUDAExecutionProvider"  # the reference's and gates' logits: on the GPU if any
    with runners.open(path, runners.Backend.ort, device="cuda" if cuda else "cpu") as runner:
        return runner.infer(batch)
