"""The accuracy budget's maths, pure: the search/confirmation halves, the expected loss, the predicted count,
the greedy search and its pruning pass (no model, no graph)."""

from __future__ import annotations

import numpy as np
import pytest


def test_budget_split_is_disjoint_seeded_and_covers_every_image():
    from deploykit.precision.sensitivity import budget_split

    search, confirm = budget_split(21)
    assert len(search) == 11 and len(confirm) == 10 and not set(search) & set(confirm)
    assert sorted([*search, *confirm]) == list(range(21))
    assert [a.tolist() for a in budget_split(21)] == [search.tolist(), confirm.tolist()]  # same images every run


def test_budget_split_shares_the_near_ties_out():
    """Stratified by the FP32 margin, each half gets one of every pair of neighbouring margins: the 4 near-ties
    of 200 images go 2 and 2 (at random, all 4 land in one half one time in eight), on every seed."""
    from deploykit.precision.sensitivity import budget_split, margins

    reference = np.zeros((201, 5))
    reference[:, 0] = np.linspace(1.0, 9.0, 201)
    reference[[3, 50, 120, 190], 1] = reference[[3, 50, 120, 190], 0] - 1e-3  # near-ties
    assert margins(reference)[3] == pytest.approx(1e-3)
    for seed in range(20):
        search, confirm = budget_split(201, seed, reference)
        assert len(search) == 101 and len(confirm) == 100 and sorted([*search, *confirm]) == list(range(201))
        assert len({3, 50, 120, 190} & set(search)) == 2
    assert [a.tolist() for a in budget_split(201, 0, reference)] == [a.tolist() for a in budget_split(201, 0, reference)]
    one_class = budget_split(5, 0, np.zeros((5, 1)))  # no margin to stratify by: the seeded random split
    assert [a.tolist() for a in one_class] == [a.tolist() for a in budget_split(5)]


def test_expected_loss_transplants_the_noise_across_images():
    """A near-tie that happened not to flip still counts: its margin meets the noise other images showed."""
    from deploykit.precision.sensitivity import score

    def expected_loss(reference, logits, labels):  # the expected loss score() records
        return score(reference, logits, labels).expected

    reference = np.zeros((4, 3))
    reference[:, 0] = [5.0, 5.0, 5.0, 0.1]
    reference[3, 1] = 0.05  # image 3 is a near tie between classes 0 and 1
    assert expected_loss(reference, reference, None) == 0.0
    noisy = reference.copy()
    noisy[0, 0] -= 0.5  # image 0's margin drops by 0.5: no flip there (margin 5), but image 3's 0.1 would
    s = score(reference, noisy, None)
    assert s.loss == 0.0 and s.expected == pytest.approx(100 * (1 / 4) / 4)  # P(flip_3) = 1/4, others 0
    assert s.expected_se > 0 and 0.0 < s.within(6.25, 4) < 1.0  # 4 images: unsure either way
    assert s.to_json()["expected_loss_pts"] == pytest.approx(6.25) and "expected_loss_se_pts" in s.to_json()
    flipped = reference.copy()
    flipped[3, 1] = 1.0  # image 3 flips: counted 25 points; every image with margin < 0.95 would too
    assert score(reference, flipped, None).loss == 25.0 and expected_loss(reference, flipped, None) == 6.25
    # with labels, a flip costs [top1 == label] - [top2 == label]: losing a right answer, or gaining one
    assert expected_loss(reference, flipped, np.array([0, 0, 0, 0])) == 6.25
    assert expected_loss(reference, flipped, np.array([0, 0, 0, 1])) == -6.25
    assert expected_loss(reference, flipped, np.array([0, 0, 0, 2])) == 0.0
    assert expected_loss(reference, np.full_like(reference, np.nan), None) == 100.0
    assert expected_loss(reference[:1], reference[:1], None) is None  # one image: no distribution to transplant


def test_fit_budget_holds_the_expected_loss_too():
    """Counted on the sample the budget is met with no layer moved, but the noise says near-ties elsewhere
    would flip: the search goes on until the expected loss is within the budget too."""
    from deploykit.precision.sensitivity import LayerCost, fit_budget, score

    reference = np.zeros((100, 3))
    reference[:, 0] = np.linspace(0.05, 5.0, 100)  # margins from near-ties to sure

    def evaluate(excluded):
        out = reference.copy()
        out[-10:, 0] -= 0.0 if "a" in excluded else 2.0  # sure images lose 2.0 of margin: none flips here
        return out

    base = score(reference, evaluate(()), None)
    assert base.loss == 0.0 and base.expected > 1.0
    result = fit_budget(base, [LayerCost("a", 0.0, 0.0, 1.0)], 1.0, evaluate, reference, None)
    assert result.met and result.kept_fp32 == ["a"] and result.final.expected == 0.0


def test_within_is_the_binomial_chance_of_the_count():
    """Every image's flip chance is 3%: the chance that 128 other images count at most 1 flip (0.78 <= 1 point)
    is the binomial one; with labels a flip that gains a right answer pays for one that loses one."""
    from math import comb

    from deploykit.precision.sensitivity import score

    reference = np.zeros((100, 2))
    reference[:, 0] = 1.0
    noisy = reference.copy()
    noisy[:3, 0] -= 2.0  # 3 of 100 images flip; every image's margin (1.0) would flip under that noise
    s = score(reference, noisy, None)
    binom = sum(comb(128, k) * 0.03 ** k * 0.97 ** (128 - k) for k in range(2))
    assert s.within(1.0, 128) == pytest.approx(binom, abs=0.03) and binom < 0.2
    assert s.within(3.0, 100) > 0.6 and s.within(0.0, 100) < 0.1 and not s.holds(1.0, 128)
    labels = np.array([0, 1] * 50)  # half the flips gain a right answer: the expected drop is 0
    assert score(reference, noisy, labels).within(1.0, 128) > 0.6


def test_fit_budget_holds_the_count_the_confirmation_half_will_see():
    """Counted and expected (plus a standard error), 0.75 points are within a 1-point budget; but on 128 other
    images, where one flip is 0.78 points, 2 flips or more are 1 chance in 4: the search moves the layer. On 2000
    other images the same noise holds the budget."""
    from deploykit.precision.sensitivity import LayerCost, fit_budget, score

    reference = np.zeros((2000, 2))
    reference[:, 0] = 1.0

    def evaluate(excluded):
        out = reference.copy()
        out[:15, 0] -= 0.0 if "a" in excluded else 1.5  # 15 of 2000 flip: 0.75 points
        return out

    base = score(reference, evaluate(()), None)
    assert base.loss == pytest.approx(0.75) and base.expected + base.expected_se <= 1.0
    ranking = [LayerCost("a", 0.75, 0.0, 1.0)]
    small = fit_budget(base, ranking, 1.0, evaluate, reference, None, confirm_n=128)
    assert small.met and small.kept_fp32 == ["a"] and small.steps[0]["p_within_budget"] == 1.0
    assert fit_budget(base, ranking, 1.0, evaluate, reference, None).kept_fp32 == []  # 2000 others


def test_fit_budget_moves_redundant_layers_back_to_int8():
    """Greedy keeps a, b, c in FP32 (c gains nothing alone, so only going on past it meets the budget); {b, c}
    alone meets the budget, so pruning moves a back to INT8."""
    from deploykit.precision.sensitivity import LayerCost, Score, fit_budget

    reference = np.eye(10)[np.arange(100) % 10] * 5.0
    wrong = np.roll(reference, 1, axis=1)

    def evaluate(excluded):
        bad = 0 if {"b", "c"} <= set(excluded) else 20  # images classified wrong unless b and c are FP32
        out = reference.copy()
        out[:bad] = wrong[:bad]
        return out

    ranking = [LayerCost(n, 20.0, 1.0, gain) for n, gain in (("a", 3.0), ("b", 2.0), ("c", -1.0))]
    result = fit_budget(Score(20.0, 1.0), ranking, 1.0, evaluate, reference, None)
    assert result.met and result.kept_fp32 == ["b", "c"] and result.final.loss == 0.0
    assert [s["layer"] for s in result.steps] == ["a", "b", "c", "a"] and result.steps[-1]["back_to_int8"]


def test_sensitivity_tables_order_and_columns():
    """The full ranking is sorted by its first numeric column, noisiest first, and shows the kept column only where a
    budget moved layers; a one-pass ranking has its own SQNR columns (issue 25). Asserted on the tables' data."""
    from types import SimpleNamespace

    from deploykit.cli.render_precision import precision_tables
    from deploykit.precision import Int8Target
    from deploykit.precision.sensitivity import BudgetResult, LayerCost, LayerNoise, Score

    ranking = [LayerCost("a", 3.0, 0.9, 0.8), LayerCost("b", 5.0, 0.5, 0.4), LayerCost("c", 1.0, 0.1, 0.0)]
    ranking.sort(key=lambda c: (-c.mse_alone, -c.loss_alone))  # as rank_layers sorts
    kept = BudgetResult(Score(9.0, 1.0), ranking, kept_fp32=["a"], final=Score(0.5, 0.1), met=True)
    plain = BudgetResult(Score(9.0, 1.0), ranking)
    noise = BudgetResult(Score(9.0, 1.0), [LayerNoise("c", 0.1, 1e-4), LayerNoise("a", 1e-3, 1e-5)], one_pass=True)
    for budget, kept_column in ((kept, True), (plain, False)):
        result = SimpleNamespace(fp16=None, int8={}, budgets={Int8Target.trt: budget}, ranges=None,
                                 other_precision=lambda target: "FP16")
        table = precision_tables(result)[0]
        headers = [c.header for c in table.columns]
        assert headers[:2] == ["layer", "mse if only INT8"] and ("kept FP16" in headers) == kept_column
        mse = [float(v) for v in table.columns[1]._cells]
        assert mse == sorted(mse, reverse=True)
    result = SimpleNamespace(fp16=None, int8={}, budgets={Int8Target.trt: noise}, ranges=None,
                             other_precision=lambda target: "FP16")
    table, = precision_tables(result)
    assert [c.header for c in table.columns] == ["layer", "SQNR dB", "input SQNR dB", "weight SQNR dB"]
    assert list(table.columns[0]._cells) == ["c", "a"] and float(table.columns[1]._cells[0]) == pytest.approx(10.0, abs=0.1)
