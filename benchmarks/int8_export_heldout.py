"""Judge the INT8 graphs a `deploykit export` wrote, as shipped, on held-out crops (issue 11 follow-up).

    OMP_NUM_THREADS=2 PYTHONPATH=src python benchmarks/int8_export_heldout.py /tmp/m11/lite0 [/tmp/m11/lite1 ...] \\
        [--eval /tmp/i8/img/eval300] [--ov] [--jsonl out.jsonl] [--anchors /tmp/i8/anchors]

int8_recipes.py / int8_vs_nncf_modelopt.py call `quantize_trt` / `quantize_cpu` directly (FP32 remainder) and run graphs with
a plain ONNX Runtime session. This script instead takes the export folder's own `model.int8.onnx` (FP16 remainder
by default since the remainder merge) and `model.int8-cpu.onnx`, and runs them with deploykit's runners as
`deploykit verify` does: `OnnxRuntimeRunner` (which leaves out ORT's WeightBiasQuantization rewrite -- with it
ORT computes a different graph for float16 Q/DQ scales, see runners/onnxrt.py) and, for the Q/DQ graph,
`session_config=QDQ_FOLDING` (weight DQs folded once; logits equal to ~1e-6).

Per folder and graph, against FP32 `model.onnx` on the evaluation crops (default: ``common.int8_crops``'s 300 held-out
crops, built under --images if missing): top-1 agreement overall and on confident crops (FP32 max prob > 0.5, and
how many), logit cosine mean / min. With --ov: OpenVINO (`OpenVINORunner`, inference_precision f32) runs
`model.int8.onnx` too, and the two runtimes' top-1 agreement with each other is reported, overall and confident.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from common import int8_crops, metrics, softmax


def run(runner, x: np.ndarray, batch: int = 16) -> np.ndarray:
    out = [runner.infer(x[i:i + batch]) for i in range(0, len(x), batch)]
    return np.concatenate(out).astype(np.float64)


def mcnemar(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: of the b + c images where exactly one of two graphs keeps FP32's top-1,
    how unlikely a split this uneven is if both graphs were equally good (binomial, p = 1/2)."""
    from math import comb

    n, k = b + c, min(b, c)
    if n == 0:
        return 1.0
    return min(1.0, 2 * sum(comb(n, i) for i in range(k + 1)) / 2 ** n)  # exact integers: n may pass 1023


def paired(ref: np.ndarray, ours: np.ndarray, theirs: np.ndarray) -> dict:
    """Paired comparison on the same images: where only ours keeps FP32's top-1 (b), only theirs does (c)."""
    a, t = ref.argmax(1) == ours.argmax(1), ref.argmax(1) == theirs.argmax(1)
    b, c = int((a & ~t).sum()), int((~a & t).sum())
    return {"only_ours": b, "only_theirs": c, "mcnemar_p": mcnemar(b, c)}


def evaluate(folder: Path, eval_dir: Path, threads: int, ov: bool, anchors: Path | None = None) -> dict:
    from deploykit.manifest import Manifest
    from deploykit.runners.onnxrt import QDQ_FOLDING, OnnxRuntimeRunner

    manifest = Manifest.load(folder)
    paths = sorted(p for p in eval_dir.iterdir() if p.is_file())
    x = manifest.preprocessing.batch(paths)
    row: dict = {"folder": str(folder), "n": len(paths)}
    details = {a["path"]: a.get("details", {}) for a in json.loads((folder / "deploykit.json").read_text())
               .get("artifacts", [])}
    t = time.perf_counter()
    ref = run(OnnxRuntimeRunner(folder / "model.onnx", threads=threads), x)
    row["fp32_s"] = round(time.perf_counter() - t, 1)
    conf = softmax(ref).max(1) > 0.5
    row["fp32_distinct_top1"] = len(np.unique(ref.argmax(1)))  # a random-weight net may call everything one class
    outs: dict[str, np.ndarray] = {}
    for name in ("model.int8.onnx", "model.int8-cpu.onnx"):
        if not (folder / name).is_file():
            continue
        t = time.perf_counter()
        cfg = QDQ_FOLDING if name == "model.int8.onnx" else None
        out = run(OnnxRuntimeRunner(folder / name, threads=threads, session_config=cfg), x)
        m = metrics(ref, out)
        m["seconds"] = round(time.perf_counter() - t, 1)
        d = details.get(name, {})
        m["remainder"] = d.get("remainder")
        m["fp32_layers"] = len(d.get("fp32_layers") or [])
        row[name] = m
        outs[name] = out
        if name == "model.int8.onnx" and ov:
            from deploykit.runners.openvino import OpenVINORunner

            t = time.perf_counter()
            o = run(OpenVINORunner(folder / name, inference_precision="f32", threads=threads), x)
            same = o.argmax(1) == out.argmax(1)
            row["ov"] = {"ov_vs_ort_agree": round(float(same.mean()), 4),
                         "ov_vs_ort_agree_conf": round(float(same[conf].mean()), 4) if conf.any() else None,
                         "n_conf": int(conf.sum()), "ov_vs_fp32": metrics(ref, o),
                         "ov_vs_ort_cos_min": metrics(out, o)["cos_min"],
                         "disagreeing": [paths[i].name for i in np.flatnonzero(~same)],
                         "seconds": round(time.perf_counter() - t, 1)}
    for graph in sorted((anchors / folder.name).glob("*.onnx")) if anchors else ():
        out = run(OnnxRuntimeRunner(graph, threads=threads), x)  # an anchor's graph, as its own tool wrote it
        m = metrics(ref, out)
        m["vs"] = {name: paired(ref, ours, out) for name, ours in outs.items()}
        row.setdefault("anchors", {})[graph.name] = m
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--images", type=Path, default=Path("/tmp/i8/img"), help="``common.int8_crops``'s crop root")
    parser.add_argument("--eval", type=Path, help="evaluation folder (default: common.int8_crops' 300 held-out crops)")
    parser.add_argument("--ov", action="store_true", help="also OpenVINO f32 on model.int8.onnx vs ORT")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    parser.add_argument("--jsonl", type=Path)
    parser.add_argument("--anchors", type=Path, help="int8_vs_nncf_modelopt.py's --out: also run <anchors>/<folder name>/*.onnx "
                        "on the same crops, with a paired (McNemar) comparison against each deploykit graph")
    args = parser.parse_args()
    if args.eval is None:
        args.eval = int8_crops(args.images)[1]
    print("| folder | graph | remainder | out of INT8 | n | agree | confident (n) | cos mean | cos min |\n"
          "|---|---|---|---|---|---|---|---|---|", flush=True)
    for folder in args.folders:
        row = evaluate(folder, args.eval, args.threads, args.ov, args.anchors)
        for name in ("model.int8.onnx", "model.int8-cpu.onnx"):
            if name in row:
                m = row[name]
                print(f"| {folder.name} | {name} | {m['remainder'] or '-'} | {m['fp32_layers']} | {row['n']} | "
                      f"{m['agree']:.3f} | {m['agree_conf']:.3f} ({m['n_conf']}) | {m['cos_mean']:.4f} | "
                      f"{m['cos_min']:.3f} |", flush=True)
        for graph, m in row.get("anchors", {}).items():
            vs = "; ".join(f"vs {n}: only ours {v['only_ours']}, only theirs {v['only_theirs']}, "
                           f"McNemar p {v['mcnemar_p']:.2g}" for n, v in m["vs"].items())
            print(f"| {folder.name} | {graph} (anchor) | - | - | {row['n']} | {m['agree']:.3f} | "
                  f"{m['agree_conf']:.3f} ({m['n_conf']}) | {m['cos_mean']:.4f} | {m['cos_min']:.3f} |\n  {vs}", flush=True)
        if "ov" in row:
            o = row["ov"]
            print(f"  OpenVINO f32 vs ORT on {folder.name}/model.int8.onnx: top-1 agree {o['ov_vs_ort_agree']:.4f}, "
                  f"confident {o['ov_vs_ort_agree_conf']} (n {o['n_conf']}), logit cos min {o['ov_vs_ort_cos_min']}; "
                  f"OV vs FP32 agree {o['ov_vs_fp32']['agree']:.3f} cos {o['ov_vs_fp32']['cos_mean']:.4f}; "
                  f"differ on {o['disagreeing']}; FP32 top-1 classes {row['fp32_distinct_top1']}", flush=True)
        if args.jsonl:
            with args.jsonl.open("a") as f:
                f.write(json.dumps(row) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
