"""Tables for the precision stage of `deploykit export` (FP16 nodes kept in FP32, INT8 layers, sensitivity)."""

from __future__ import annotations

from rich.table import Table

from deploykit.cli.render import literal

SHOWN_LAYERS = 10


def precision_tables(result) -> list[Table]:
    tables = []
    if result.fp16 is not None:
        t = Table(title=f"{literal(result.fp16.path.name)}: FP16 compute, FP32 I/O")
        t.add_column("node kept in FP32")
        t.add_column("why")
        for node, why in result.fp16.kept_fp32.items():
            t.add_row(literal(node), literal(why))
        if not result.fp16.kept_fp32:
            t.add_row("(none)", "every node is FP16-safe on the images seen")
        tables.append(t)
    for target, graph in result.int8.items():
        other = result.other_precision(target)
        t = Table(title=f"{literal(graph.path.name)}: INT8 for {target.value}, the rest {other}")
        t.add_column("layers in INT8", justify="right")
        t.add_column(f"layers in {other}")
        t.add_column("ops")
        t.add_column("calibration")
        r = result.ranges
        t.add_row(str(len(graph.layers)), literal(", ".join(graph.excluded) or "-"),
                  ", ".join(f"{k} {v}" for k, v in sorted(graph.counts.items()) if "quant" in k.lower() or k.startswith(("QLinear", "QGemm"))),
                  f"{r.method.value}, {r.n_images} images{' (cached)' if r.cached else ''}")
        tables.append(t)
    for target, budget in result.budgets.items():
        name = result.int8[target].path.name if target in result.int8 else target.value
        other = result.other_precision(target)
        if budget.one_pass:  # a miss without --accuracy-budget: the likely layers, from one pass
            t = Table(title=f"{literal(name)} INT8 sensitivity: loss with everything INT8 {budget.base.loss:.2f} pts "
                            f"(mse {budget.base.mse:.3g}); the likely layers, most quantization noise first (one "
                            f"pass on {budget.n_ranking} images)",
                      caption="SQNR: signal to quantization noise of the layer's INT8 input and weight, lower is "
                              "noisier; to find the fewest layers to keep out of INT8: --accuracy-budget PTS")
            for col in ("layer", "SQNR dB", "input SQNR dB", "weight SQNR dB"):
                t.add_column(col, justify="left" if col == "layer" else "right")
            for noise in budget.ranking[:SHOWN_LAYERS]:
                j = noise.to_json()
                t.add_row(literal(noise.layer), *("-" if j[k] is None else f"{j[k]:.1f}"
                                         for k in ("sqnr_db", "activation_sqnr_db", "weight_sqnr_db")))
            tables.append(t)
            continue
        # the order is the first numeric column's (noisiest first); the kept column only where a budget moved any
        kept = set(budget.kept_fp32)
        t = Table(title=f"{literal(name)} INT8 sensitivity: loss with everything INT8 {budget.base.loss:.2f} pts "
                        f"(mse {budget.base.mse:.3g}); each layer measured as the only INT8 layer, noisiest (highest "
                        "mse) first")
        cols = ["layer", "mse if only INT8", "mse added", "loss pts if only INT8"] + ([f"kept {other}"] if kept else [])
        for col in cols:
            t.add_column(col, justify="left" if col == "layer" else "right")
        for cost in budget.ranking[:max(SHOWN_LAYERS, len(kept))]:
            t.add_row(literal(cost.layer), f"{cost.mse_alone:.3g}", f"{cost.mse_added:.3g}", f"{cost.loss_alone:.2f}",
                      *(["yes" if cost.layer in kept else ""] if kept else []))
        tables.append(t)
        if budget.met is not None:
            s = Table(title=f"{literal(name)} accuracy budget: layers moved to {other} in order, then back to INT8 where "
                            "not needed")
            for col in ("layer", "move", "loss pts after", "expected pts after", "P(other half within)", "mse after"):
                s.add_column(col, justify="left" if col in ("layer", "move") else "right")
            if not budget.steps:
                s.add_row("(none)", "-", *_loss_cells(budget.base.to_json()))
            for step in budget.steps:
                s.add_row(literal(step["layer"]), "back to INT8" if step.get("back_to_int8") else f"to {other}",
                          *_loss_cells(step))
            if budget.confirm is not None:
                s.title += f" (chosen on {budget.n_search} images)"
                s.caption = (f"budget {'met' if budget.met else 'NOT met'} on {budget.n_confirm} other images: loss "
                             f"{budget.confirm.loss:.2f} pts ({budget.final.loss:.2f} on the {budget.n_search} it "
                             f"was chosen on) with {len(budget.kept_fp32)} layer(s) in {other}")
            else:
                s.caption = (f"budget {'met' if budget.met else 'NOT met'}: final loss "
                             f"{budget.final.loss:.2f} pts with {len(budget.kept_fp32)} layer(s) in {other}")
            tables.append(s)
    return tables


def _loss_cells(score: dict) -> tuple[str, str, str, str]:
    """Counted loss, expected loss (see sensitivity.Score.expected), the predicted chance that the confirmation
    half counts a loss within the budget (Score.within) and logit MSE of one budget step."""
    expected, within = score.get("expected_loss_pts"), score.get("p_within_budget")
    return (f"{score['loss_pts']:.2f}", "-" if expected is None else f"{expected:.2f}",
            "-" if within is None else f"{within:.0%}", f"{score['mse']:.3g}")
