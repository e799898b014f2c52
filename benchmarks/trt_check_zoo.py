"""Every graph deploykit writes for the registry, checked against TensorRT's operator tables (docs/tensorrt-check.md).

For each of the registry's entries (``deploykit.models.list_models()``, as ``DEPLOYKIT_TEST_ZOO=all`` enumerates the
zoo: 81 with torchvision 0.29), at seeded random init, 7 classes, its smallest input (``ModelSpec.min_size``):
the FP32 ONNX as ``deploykit export`` writes it, the FP16 graph (``convert_fp16``) and the TensorRT INT8 graph with
its default FP16 remainder (``quantize_trt`` then ``fp16_remainder``), ranges from 4 of the bundled photos -- the
graph's structure, not its accuracy, is what the check reads. Each graph is checked for TensorRT 10.3 and 11.5.
Entries over --max-params get the FP32 graph only (memory on a shared 23 GB host).

    python benchmarks/trt_check_zoo.py --out /tmp/trt-check-zoo.json [--only resnet18,vit_b_16]

Prints one line per entry as it goes (progress), then the summary: graphs checked, problems by kind, ops seen.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path


def graphs_of(name: str, work: Path, max_params: float) -> dict[str, Path]:
    import onnx
    import torch

    from deploykit.data import sample_images
    from deploykit.export import export_onnx
    from deploykit.models import get_spec
    from deploykit.models.loading import LoadedModel
    from deploykit.precision.calibrate import collect_stats
    from deploykit.precision.fp16 import convert_fp16
    from deploykit.precision.int8 import cpu_tensors, plan_trt, quantize_trt
    from deploykit.precision.remainder import fp16_remainder

    spec = get_spec(name)
    torch.manual_seed(0)
    module = spec.build(num_classes=7).eval()
    size = spec.min_size
    pre = spec.preprocess().replace(height=size, width=size, resize=None)
    fp32 = export_onnx(LoadedModel(module, "zoo", name, 7, None, pre, work / "none"), work / "model.onnx")
    out = {"fp32": fp32}
    params = sum(p.numel() for p in module.parameters())
    del module
    if params > max_params:
        return out
    batch = sample_images().load(pre)[:4]
    model = onnx.load(str(fp32))
    stats = collect_stats(fp32, sorted(cpu_tensors(model)), [batch], histogram=False)
    absmax = {t: s.amax for t, s in stats.items()}
    out["fp16"] = convert_fp16(fp32, work / "model.fp16.onnx", absmax).path
    plan = plan_trt(model)
    amax = {t: absmax[t] for t in plan.activation_tensors if t in absmax}
    int8 = quantize_trt(fp32, work / "model.int8-fp32rem.onnx", amax, plan=plan)
    out["int8"] = fp16_remainder(int8.path, work / "model.int8.onnx", absmax).path
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("trt-check-zoo.json"))
    parser.add_argument("--only", default="")
    parser.add_argument("--max-params", type=float, default=150e6)
    parser.add_argument("--targets", default="10.3,11.5")
    args = parser.parse_args()

    import onnx

    from deploykit.models import list_models
    from deploykit.tensorrt.check import check_model, parse_targets

    targets = parse_targets(args.targets)
    names = [n for n in args.only.split(",") if n] or list_models()
    results: dict[str, dict] = {}
    started = time.time()
    for i, name in enumerate(names, 1):
        t0 = time.time()
        entry: dict = {"graphs": {}}
        with tempfile.TemporaryDirectory() as tmp:
            try:
                graphs = graphs_of(name, Path(tmp), args.max_params)
            except Exception as exc:  # recorded, and the sweep goes on
                entry["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
                graphs = {}
            for precision, path in graphs.items():
                model = onnx.load(str(path), load_external_data=False)
                entry["graphs"][precision] = {
                    "opset": next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
                    "ops": sorted({n.op_type for n in model.graph.node}),
                    "tensorrt_ready": {t.version: check_model(model, t).to_dict() for t in targets}}
        results[name] = entry
        bad = [f"{p}@{v}" for p, g in entry["graphs"].items() for v, r in g["tensorrt_ready"].items() if not r["ready"]]
        print(f"[{i}/{len(names)}] {name}: {','.join(entry['graphs']) or 'no graph'} "
              f"{'ready' if not bad and 'error' not in entry else 'NOT READY ' + ' '.join(bad)}"
              f"{' ERROR ' + entry['error'] if 'error' in entry else ''} ({time.time() - t0:.0f} s, "
              f"{time.time() - started:.0f} s total)", flush=True)
        args.out.write_text(json.dumps(results, indent=1))

    graphs = [(n, p, g) for n, e in results.items() for p, g in e["graphs"].items()]
    problems = Counter(pr.split(" -- ")[0].split(": ", 1)[-1][:120] for _, _, g in graphs
                       for r in g["tensorrt_ready"].values() for pr in r["problems"])
    unknown = sorted({pr for _, _, g in graphs for r in g["tensorrt_ready"].values() for pr in r["problems"]
                      if "unknown op" in pr})
    ops = Counter(op for _, _, g in graphs for op in g["ops"])
    print(f"\n{len(results)} entries, {len(graphs)} graphs "
          f"({Counter(p for _, p, _ in graphs)}), errors: {sum('error' in e for e in results.values())}")
    print(f"graphs ready on every target: {sum(all(r['ready'] for r in g['tensorrt_ready'].values()) for *_, g in graphs)}"
          f" of {len(graphs)}")
    print(f"unknown ops: {unknown or 'none'}")
    print(f"problems by kind: {dict(problems.most_common(20)) or 'none'}")
    print(f"ops seen ({len(ops)}): {', '.join(sorted(ops))}")


if __name__ == "__main__":
    sys.exit(main())
