"""Where INT8 noise comes from, per layer (issue 11 diagnosis; figures in docs/precision.md).

    PYTHONPATH=src python benchmarks/int8_noise_per_layer.py /tmp/i8/lite0 [--sensitivity 64]

Per quantized layer of the TensorRT plan: the input tensor's observed |x| max, what entropy / MSE search keep,
whether the graph bounds it (ReLU6), the share of values entropy clips; the weight's per-channel spread
(max / median channel |w| max) and its int8 SQNR; the mean output shift int8 puts on the layer (bias correction's
measure, relative to the output's spread). With --sensitivity N: logit MSE and cosine against FP32 on N
held-out crops when only that layer is INT8 (entropy ranges), and when it alone is INT8 with bias correction.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from common import Model, infer, int8_crops, ranges_for


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--images", type=Path, default=Path("/tmp/i8/img"))
    parser.add_argument("--sensitivity", type=int, default=0)
    args = parser.parse_args()
    from onnx import numpy_helper

    from deploykit.precision.bias_correction import measure_shifts
    from deploykit.precision.int8 import quantize_trt
    from deploykit.precision.ranges import bounded_tensors

    calib, evals = int8_crops(args.images)
    m = Model(args.folder, calib, evals, 200)
    inits = {i.name: numpy_helper.to_array(i) for i in m.model.graph.initializer}
    nodes = {n.name: n for n in m.model.graph.node}
    bounded = bounded_tensors(m.model)
    ent = ranges_for(m, {"entropy"})
    mse = ranges_for(m, {"mse"})
    amax_ent = {n: r["amax"] for n, r in ent.items()}
    shifts = measure_shifts(m.src, {n: r["amax"] for n, r in ranges_for(m, {"minmax"}).items()},
                            m.calib_batches(64), plan=m.plan)
    # output spread per layer, for the shift's relative size
    from deploykit.precision.calibrate import collect_stats

    outs = {layer.node: nodes[layer.node].output[0] for layer in m.plan.layers}
    ostats = collect_stats(m.src, list(outs.values()), m.calib_batches(32), histogram=False)
    sens = {}
    if args.sensitivity:
        x = m.x[:args.sensitivity]
        ref = m.ref[:args.sensitivity]
        with tempfile.TemporaryDirectory() as tmp:
            for layer in m.plan.layers:
                row = []
                for bias in (None, shifts):
                    others = [lay.node for lay in m.plan.layers if lay.node != layer.node]
                    dest = Path(tmp) / "one.onnx"
                    quantize_trt(m.src, dest, amax_ent, plan=m.plan, exclude=others, bias=bias)
                    out = infer(dest, x)
                    cos = (ref * out).sum(1) / (np.linalg.norm(ref, axis=1) * np.linalg.norm(out, axis=1))
                    row.append((float(((ref - out) ** 2).mean()), float(cos.mean())))
                sens[layer.node] = row
    print("| layer | kind | input |x| max | entropy / mse keep | bounded | entropy clips | w spread max/med |"
          " w SQNR dB | mean shift / out range | " + ("1-layer logit MSE (cos) | with BC |" if sens else ""))
    print("|---" * (11 if sens else 9) + "|")
    for layer in m.plan.layers:
        node = nodes[layer.node]
        t = layer.activations[0] if layer.activations else None
        st = m.stats.get(t)
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        kind = "depthwise" if group > 1 else (node.op_type if node.op_type != "Conv" else
                                               f"conv {inits[layer.weight].shape[2]}x{inits[layer.weight].shape[3]}")
        clip = ""
        if st is not None and st.hist is not None:
            width = st.edge / len(st.hist)
            cut = int(amax_ent[t] / width)
            clip = f"{st.hist[cut:].sum() / max(st.hist.sum(), 1):.2%}"
        w = inits[layer.weight].astype(np.float64)
        axis = layer.weight_axis
        ch = np.abs(np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)).max(1)
        scale = (np.maximum(ch, 1e-8) / 127).reshape([-1 if d == axis else 1 for d in range(w.ndim)])
        wq = np.clip(np.round(w / scale), -127, 127) * scale
        sqnr = 10 * np.log10((w ** 2).sum() / max(((w - wq) ** 2).sum(), 1e-30))
        o = ostats[outs[layer.node]]
        rel = float(np.abs(shifts[layer.node]).mean() / max(o.hi - o.lo, 1e-8)) if layer.node in shifts else 0.0
        cells = [layer.name, kind, f"{st.amax:.2f}" if st else "",
                 f"{amax_ent.get(t, 0):.2f} / {mse[t]['amax']:.2f}" if st else "",
                 "yes" if t in bounded else "", clip, f"{ch.max() / max(np.median(ch), 1e-12):.1f}", f"{sqnr:.1f}",
                 f"{rel:.2e}"]
        if sens:
            (e0, c0), (e1, c1) = sens[layer.node]
            cells += [f"{e0:.4f} ({c0:.4f})", f"{e1:.4f} ({c1:.4f})"]
        print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
