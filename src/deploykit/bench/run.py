"""A bench from start to end: what to bench (an export folder, one artifact file, a model file exported on the
fly, or the bundled default), probe the host, plan, measure each case, verify the OpenVINO rows as they ran."""

from __future__ import annotations

import contextlib
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deploykit import runners
from deploykit.bench.host import Capabilities, host_info, probe
from deploykit.bench.measure import RoundPlan, measure_cases
from deploykit.bench.options import DEFAULT_MODEL, EXPORTS_DIR, Backend, BenchOptions
from deploykit.bench.plan import plan_cases
from deploykit.bench.results import (BENCH_NAME, BENCH_PLOT, BenchReport, Measurement, Skip, add_speedups,
                                     fastest_verified)
from deploykit.data import sample_images
from deploykit.errors import DeployKitError, InputError
from deploykit.files import write_json_atomic
from deploykit.manifest import ENGINE_SUFFIXES, MANIFEST_NAME, Manifest
from deploykit.models import build_model, get_spec
from deploykit.models.loading import save_checkpoint
from deploykit.parity import Precision
from deploykit.pipeline import export_folder
from deploykit.predict import onnx_metadata
from deploykit.messages import Reporter, Task, reporter_or_silent
from deploykit.runners.base import Device
from deploykit.verify import RECORDED, FixedLogits, compare_runners, reference_runner, verification_data


def bench_input(manifest: Manifest, batch: int) -> np.ndarray:
    """A fixed batch of real photos (scikit-image samples) through the folder's preprocessing, tiled to ``batch``."""
    pre = manifest.preprocessing
    images = sample_images().sample(min(batch, 8))
    arr = images.load(pre)
    reps = -(-batch // arr.shape[0])
    return np.ascontiguousarray(np.concatenate([arr] * reps)[:batch], dtype=np.float32)


def _pin_threads(threads: int) -> int | None:
    """The thread budget ONNX Runtime and OpenVINO get, for PyTorch too: ``threads`` intra-op threads and one
    inter-op thread (ORT's ``inter_op_num_threads = 1``; OpenVINO's one stream), so a 2-core host is not
    oversubscribed by a second pool. PyTorch can size its inter-op pool only before the process first uses it;
    later it keeps what it has. Import both before any RSS is read. Returns PyTorch's inter-op thread count."""
    interop = None
    with contextlib.suppress(ImportError):
        import torch

        torch.set_num_threads(threads)
        with contextlib.suppress(RuntimeError):  # "cannot set number of interop threads after parallel work ..."
            torch.set_num_interop_threads(1)
        interop = torch.get_num_interop_threads()
    with contextlib.suppress(ImportError):
        import onnxruntime  # noqa: F401
    return interop


def bench_folder(folder: Path, options: BenchOptions, *, reporter: Reporter | None = None,
                 target: dict[str, Any] | None = None, only: str | None = None, manifest: Manifest | None = None,
                 caps: Capabilities | None = None) -> BenchReport:
    """Measure every requested (backend, precision, batch) of an export folder (``only``: of that one artifact).

    ``caps``: what this host can run (default: :func:`deploykit.bench.host.probe`). A case that fails with a
    user-facing error (an engine TensorRT refuses, a batch its profile does not take) is listed as skipped with
    that error; the other cases still run.
    """
    reporter = reporter_or_silent(reporter)
    options.validate()
    folder = Path(folder)
    manifest = manifest or Manifest.load(folder)
    caps = caps or probe(options.backends, options.device)
    if options.device is Device.cuda:
        caps.require_cuda()
    info = target or {}
    where = ("the bundled model's temporary export" if info.get("bundled") else
             f"the on-the-fly export of {Path(str(info.get('source'))).name}" if info.get("exported") else None)
    cases, skips = plan_cases(folder, manifest, options, caps, only=only, where=where)
    host = host_info(options)
    results: list[Measurement] = []
    restore = None
    with contextlib.suppress(ImportError):
        import torch

        restore = torch.get_num_threads()
    interop = _pin_threads(options.thread_count)
    if interop is not None:
        host["torch_interop_threads"] = interop
    inputs = {b: bench_input(manifest, b) for b in sorted({c.batch for c in cases})}
    plan = RoundPlan.of(options)
    batches = sorted({c.batch for c in cases})
    steps = len(cases) + plan.rounds * len(batches)  # one per load, one per round of each batch size
    done = 0
    with reporter.progress("benchmarking") as task:
        try:
            for b in batches:
                group = [c for c in cases if c.batch == b]

                def step(text: str, b: int = b) -> None:
                    nonlocal done
                    task.update(description=f"bench batch {b}: {text}", completed=done, total=steps)
                    done += 1

                measured, failed = measure_cases(group, inputs[b], options, on_step=step)
                results += measured
                for case, exc in failed:  # these cases only: the rest of the run goes on
                    skip = Skip(case.backend, case.precision, str(exc), batch=case.batch)
                    if skip not in skips:  # TensorRT's two variants fail alike
                        skips.append(skip)
            order = {(c.backend, c.precision, c.variant, c.batch): i for i, c in enumerate(cases)}
            results.sort(key=lambda m: order[(m.backend, m.precision, m.variant, m.batch)])  # the plan's order
        finally:
            if restore is not None:
                import torch

                torch.set_num_threads(restore)
                torch.set_flush_denormal(False)  # torch's default, as a library call found it
        verify_ov_rows(folder, manifest, results, options.thread_count, task, data=options.data,
                       max_images=options.max_images)
        task.update(description="bench done", completed=steps, total=steps)
    add_speedups(results)
    fastest_verified(results)
    info = {"folder": str(folder), "arch": manifest.model.get("arch"), "input": manifest.input.get("shape"),
            "num_classes": manifest.model.get("num_classes"), **(target or {})}
    return BenchReport(host, results, skips, info)


def verify_ov_rows(folder: Path, manifest: Manifest, results: list[Measurement], threads: int,
                   task: Task | None = None, *, data: Path | None = None, max_images: int | None = None) -> None:
    """The parity of each row, on the images every command judges on (the folder's evidence against PyTorch's
    recorded logits, or ``data``): what each OpenVINO row ran, compiled again with the same settings (the
    compiled-model cache gives back the same program), judged by the tolerance of the precision that ran (bf16
    rows: bf16); an ONNX Runtime or TensorRT row keeps the verdict export or build recorded on those same images,
    and is judged again here when there is none or ``data`` asks for other images."""
    rows = [m for m in results if m.backend is not Backend.torch and m.artifact
            and (m.backend is Backend.ov or data is not None or not _recorded_here(m, manifest))]
    if not rows:
        return
    if task is not None:
        task.update(description=f"bench verifying {len(rows)} rows")
    try:
        vdata = verification_data(manifest, data, max_images=max_images)
        fp32 = next((a.path for a in manifest.artifacts if a.precision == "fp32"), None)
        if vdata.recorded is not None:
            reference, ref_name, kind = FixedLogits(vdata.recorded, manifest.preprocessing.shape), RECORDED, \
                "pytorch-recorded"
        elif manifest.source.get("path"):
            reference, ref_name = reference_runner(folder, manifest)
            kind = "pytorch" if ref_name == "pytorch" else "onnx-fp32"
        elif fp32 is not None:  # a bare ONNX file without its folder: the FP32 ONNX on ONNX Runtime is the reference
            reference, ref_name, kind = runners.open(folder / fp32, Backend.ort, threads=threads), fp32, "onnx-fp32"
        else:
            raise InputError("no reference here (no deploykit.json beside the file)")
        # the FP32 ONNX standing in as the reference is not judged against itself (on OpenVINO it is another run)
        itself = [m for m in rows if m.artifact == ref_name and m.backend is not Backend.ov]
        rows = [m for m in rows if m not in itself]
        if not rows:
            return
        runs = [(m.artifact, m.precision.value,
                 runners.open(folder / m.artifact, Backend.ov, inference_precision=m.variant.value, threads=threads)
                 if m.backend is Backend.ov else runners.open(folder / m.artifact, threads=threads)) for m in rows]
        report = compare_runners(reference, runs, vdata.batch, labels=vdata.labels, reference_name=ref_name,
                                 data_name=vdata.info["source"])
    except DeployKitError as exc:
        for m in rows:
            m.note = "; ".join(filter(None, [m.note, f"not verified: {exc}"]))
            m.parity = None  # not judged on these images: no verdict rather than another command's
        return
    for m, art in zip(rows, report.artifacts):
        keep = ("max_abs_diff", "cosine_min", "top1_agreement", "top5_agreement", "accuracy", "accuracy_drop")
        ran = f"openvino {m.variant.value}" if m.backend is Backend.ov else m.backend.value
        m.parity = {"passed": art.passed, "reference": report.reference, "n_images": report.n_images,
                    "data": vdata.info["source"], "held_out": vdata.info.get("held_out"),
                    "domain": vdata.info.get("domain", True), "reference_kind": kind,
                    "verified": f"this run ({ran}, {report.data})",
                    **{k: art.metrics[k] for k in keep if k in art.metrics},
                    **({"failures": art.failures} if art.failures else {})}


def _recorded_here(m: Measurement, manifest: Manifest) -> bool:
    """Whether the row's verdict from the manifest was reached on the folder's evidence images (so it is the one
    `verify` gives): the manifest records the images' source and count with it."""
    record = manifest.evidence
    entry = manifest.artifact(m.artifact)
    parity = (entry.parity if entry is not None else None) or {}
    if not parity or record is None:
        return bool(parity)
    return parity.get("n_images") == record["n_images"] and parity.get("data") == record["source"]


def latest_export(root: Path = EXPORTS_DIR) -> Path | None:
    """The export folder under ``root`` whose deploykit.json was written last (None when there is none)."""
    root = Path(root)
    if not root.is_dir():
        return None
    found = [d for d in root.iterdir() if d.is_dir() and (d / MANIFEST_NAME).is_file()]
    return max(found, key=lambda d: (d / MANIFEST_NAME).stat().st_mtime_ns, default=None)


def default_target(root: Path = EXPORTS_DIR) -> tuple[Path | None, str]:
    """What ``deploykit bench`` with no TARGET measures, and the sentence that says so: the latest export folder
    under ``./exports/``, else (None) the bundled model."""
    latest = latest_export(root)
    if latest is not None:
        return latest, (f"benchmarking {latest}: the most recently written export folder under {root}/ "
                        "(pass TARGET to bench another)")
    return None, (f"benchmarking the bundled {DEFAULT_MODEL} (random weights, 1000 classes, 224x224): there is no "
                  f"export folder under ./{root}/; pass TARGET (an export folder or a model file) to bench yours")


def default_model(directory: Path) -> Path:
    """The bundled default: a ResNet-18 (1000 classes, 224x224) with seeded random weights, as a checkpoint.

    Weights do not change speed, and nothing is downloaded; parity numbers still compare ONNX with PyTorch.
    """
    import torch

    torch.manual_seed(0)
    spec = get_spec(DEFAULT_MODEL)
    path = Path(directory) / f"{DEFAULT_MODEL}_seed0.pt"
    save_checkpoint(path, build_model(DEFAULT_MODEL, num_classes=1000), arch=DEFAULT_MODEL, num_classes=1000,
                    preprocess=spec.preprocess())
    return path


def bench_artifact(path: Path, options: BenchOptions, *, reporter: Reporter | None = None) -> BenchReport:
    """One artifact file: its export folder's manifest restricted to it; a bare ``.onnx`` (no manifest beside it)
    runs on ONNX Runtime with the preprocessing deploykit stored in its metadata."""
    folder = path.parent
    if (folder / MANIFEST_NAME).is_file():
        return bench_folder(folder, options, reporter=reporter, only=path.name,
                            target={"source": str(path), "artifact": path.name})
    if path.suffix != ".onnx":
        raise InputError(f"{path.name} needs the {MANIFEST_NAME} of its export folder beside it; copy the whole "
                         "folder")
    manifest = _manifest_from_onnx(path)
    return bench_folder(folder, options, reporter=reporter, only=path.name, manifest=manifest,
                        target={"source": str(path), "artifact": path.name, "manifest": "ONNX metadata"})


def _manifest_from_onnx(path: Path) -> Manifest:
    """A stand-in manifest for a bare deploykit ONNX: preprocessing and class names from its metadata, the input
    shape from its graph, the precision from its name (``model.<precision>.onnx``, else fp32)."""
    import onnx

    pre, names = onnx_metadata(path)
    if pre is None:
        raise InputError(f"{path.name} has no {MANIFEST_NAME} beside it and no deploykit metadata; bench its export "
                         "folder instead")
    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {i.name for i in graph.initializer}
    inp = next(i for i in graph.input if i.name not in initializers)
    shape = [d.dim_value if d.HasField("dim_value") else None for d in inp.type.tensor_type.shape.dim]
    stem = path.name[:-len(".onnx")]
    precision = next((p.value for p in Precision if stem.endswith(f".{p.value}")), Precision.FP32.value)
    return Manifest(source={}, model={"arch": None, "num_classes": None, "class_names": names},
                    input={"name": inp.name, "shape": shape, "dynamic_batch": not isinstance(shape[0], int)},
                    output={}, preprocess=pre.to_dict(), opset=None,
                    artifacts=[{"path": path.name, "precision": precision}], folder=path.parent)


def bench_target(target: Path | None, options: BenchOptions, *, reporter: Reporter | None = None) -> BenchReport:
    """Bench an export folder, or a model file exported into a temporary folder first (``None``: the default)."""
    reporter = reporter_or_silent(reporter)
    options.validate()
    if target is not None and Path(target).is_dir():
        if not (Path(target) / MANIFEST_NAME).is_file():
            raise InputError(f"{target} is not an export folder (no {MANIFEST_NAME}); pass a model file or "
                             "run `deploykit export` first")
        return bench_folder(Path(target), options, reporter=reporter, target={"source": str(target)})
    if target is not None and not Path(target).is_file():
        raise InputError(f"{target} not found: pass an export folder or a model file")
    if target is not None and (Path(target).suffix == ".onnx" or Path(target).name.endswith(ENGINE_SUFFIXES)):
        return bench_artifact(Path(target), options, reporter=reporter)
    with tempfile.TemporaryDirectory(prefix="deploykit-bench-") as tmp:
        if target is None:
            model = default_model(Path(tmp))
            origin = {"source": f"default model: {DEFAULT_MODEL}, seeded random weights (torch.manual_seed(0))",
                      "bundled": True}
        else:
            model = Path(target)
            origin = {"source": str(target)}
        reporter.status(f"exporting {model.name} to a temporary folder (dynamic batch)")
        result = export_folder(model, out=Path(tmp) / "export", dynamic_batch=True, verify=True,
                               reporter=reporter, data=options.data, max_images=options.max_images)
        if result.report is not None and not result.report.passed:
            reporter.warn(f"out of tolerance: {result.report.failure_summary()}")
        folder = result.folder
        del result  # the export's in-memory model would otherwise sit in every RSS reading
        return bench_folder(folder, options, reporter=reporter, target={**origin, "exported": "on the fly"})


@dataclass(frozen=True)
class Kept:
    """Where a bench's record went besides the screen (``deploykit bench`` says so)."""

    json: Path | None = None  # bench.json written beside the export folder bench chose itself
    plot: Path | None = None  # where the plot goes: the one asked for, else bench.png beside that bench.json
    earlier: Path | None = None  # the benched folder's bench.json from an earlier bench, left as it was


def keep_results(report: BenchReport, target: Path | None, *, chosen: bool, plot: Path | None = None) -> Kept:
    """When a bench's record is kept: bare ``deploykit bench`` benches the latest export (``chosen``) and, when
    anything was measured, keeps the record beside it as ``bench.json`` (what ``deploykit report`` reads), the
    plot going to ``bench.png`` there unless ``plot`` names a file. A folder named on the command line keeps the
    ``bench.json`` it has (``earlier``): ``deploykit bench DIR --json > DIR/bench.json`` replaces it."""
    if chosen and target is not None and report.results:
        kept = Path(target) / BENCH_NAME
        write_json_atomic(kept, report.to_json())
        return Kept(json=kept, plot=plot or Path(target) / BENCH_PLOT)
    earlier = Path(target) / BENCH_NAME if target is not None and Path(target).is_dir() else None
    return Kept(plot=plot, earlier=earlier if earlier is not None and earlier.is_file() else None)
