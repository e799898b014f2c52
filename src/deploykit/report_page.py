"""``report.md``: one page per export folder -- what was exported, how close each artifact is, how fast it runs.

Everything comes from files the other stages already wrote: ``deploykit.json`` (source, training accuracy,
preprocessing, each artifact's parity and accuracy, engine facts), the training run's ``metrics.json`` when it
sits beside the source checkpoint, ``bench.json`` (``deploykit bench --json``) and the PNGs in the folder
(``eval``'s confusion matrix, ``bench --plot``). Nothing is re-measured here, so the page never disagrees
with the numbers the commands printed.
"""

from __future__ import annotations

import contextlib
import math
import re
from pathlib import Path
from typing import Any

from deploykit import schema as S
from deploykit.bench.host import contention_warning, host_line
from deploykit.bench.output import ratio_cell
from deploykit.bench.results import BENCH_NAME
from deploykit.errors import InputError
from deploykit.evidence import check_evidence, held_out_text
from deploykit.files import atomic_path, read_json
from deploykit.manifest import Artifact, Manifest, verified
from deploykit.text import markdown_cell, printable

REPORT_NAME = "report.md"


def _num(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _shape(shape: Any) -> str:
    return "x".join("N" if d is None or isinstance(d, str) else str(d) for d in shape or ())


def _bench_row(row: dict, where: str) -> None:
    for key in ("backend", "precision", "variant", "device"):
        S.get(row, key, where, S.text(64), optional=True)
    S.get(row, "batch", where, S.whole(1, 1 << 20), optional=True)
    latency = S.get(row, "latency_ms", where, S.any_object, optional=True) or {}
    for key in ("p50", "p90", "p99", "mean"):
        S.get(latency, key, f"{where}.latency_ms", S.number(), optional=True)
    for key in ("throughput", "speedup_vs_torch"):
        S.get(row, key, where, S.number(), optional=True)
    parity = S.get(row, "parity", where, S.any_object, optional=True) or {}
    S.get(parity, "passed", f"{where}.parity", S.boolean, optional=True)
    S.get(parity, "n_images", f"{where}.parity", S.whole(0, 1 << 24), optional=True)
    S.get(row, "artifact", where, S.text(256), optional=True)
    S.get(row, "speedup_vs_torch_range", where, S.items(S.number(), 2, 2), optional=True)
    S.get(row, "stable", where, S.boolean, optional=True)
    S.get(row, "unstable", where, S.items(S.text(2000), 0, 16), optional=True)


def _bench_skip(skip: dict, where: str) -> None:
    for key in ("backend", "precision"):
        S.get(skip, key, where, S.text(64), optional=True)
    S.get(skip, "batch", where, S.whole(1, 1 << 20), optional=True)
    S.get(skip, "reason", where, S.text(2000), optional=True)


def check_bench(data: object, path: Path) -> None:
    """``bench.json`` is data from a file: the fields the report uses must have the types bench writes."""
    try:
        S.obj(data, "")
        S.get(data, "results", "", S.items(S.record(_bench_row)))
        host = S.get(data, "host", "", S.any_object, optional=True) or {}
        S.get(host, "skipped", "host", S.items(S.record(_bench_skip)), optional=True)
        S.get(host, "versions", "host", S.any_object, optional=True)
    except S.SchemaError as exc:
        raise InputError(f"{path} is not `deploykit bench --json` output: {exc}") from None


def md(value: Any) -> str:
    """A value from a file as literal Markdown text (no HTML, no table-breaking ``|``, no links)."""
    return markdown_cell(value)


def _plain_name(name: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+-]*\.png", name))


def training_metrics(manifest: Manifest) -> dict[str, Any] | None:
    """The run's metrics.json when the source checkpoint is a `deploykit train` output still in its run folder
    (only the numbers the report prints, and only when they are numbers)."""
    if not manifest.source.get("path"):
        return None
    path = manifest.source_path().parent / "metrics.json"
    if not path.is_file():
        return None
    try:
        data = read_json(path, "training metrics file")
    except InputError:
        return None
    if not isinstance(data, dict):
        return None
    numbers = {k: data.get(k) for k in ("best_val_acc", "epochs", "seconds")}
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
               for v in numbers.values()):
        return None
    return numbers


def _artifact_rows(manifest: Manifest) -> list[str]:
    has_acc = any("accuracy" in a.metrics for a in manifest.artifacts)
    head = ["artifact", "precision", "MB", "reference", "images", "max abs diff", "cos min", "top-1 agr",
            "top-5 agr"] + (["acc %", "drop pts"] if has_acc else []) + ["result"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" if i < 2 else "--:" for i in range(len(head) - 1))
             + "|---|"]
    for art in manifest.artifacts:
        parity = art.parity or {}
        m = parity.get("metrics", {})
        result = "-" if not parity else ("pass" if parity.get("passed") else
                                        "FAIL " + "; ".join(parity.get("failures", [])))
        if parity.get("note"):
            result += f" ({parity['note']})"
        result = md(result)
        row = [f"`{art.path}`",  # a checked plain file name (manifest.ARTIFACT_NAME)
 md(art.precision), _num((art.bytes or 0) / 1e6, ".2f"),
               md(parity.get("reference", "-")), md(parity.get("n_images", "-")), _num(m.get("max_abs_diff"), ".2e"),
               _num(m.get("cosine_min"), ".6f"), _num(m.get("top1_agreement"), ".3f"),
               _num(m.get("top5_agreement"), ".3f")]
        if has_acc:
            row += [_num(m.get("accuracy"), ".2f"), _num(m.get("accuracy_drop"), "+.2f")]
        lines.append("| " + " | ".join(row + [result]) + " |")
    return lines


def _engine_lines(manifest: Manifest) -> list[str]:
    lines = []
    for art in manifest.artifacts:
        facts = art.engine
        if not facts:
            continue
        onnx = facts.get("onnx") or {}
        lines.append(f"- `{art.path}`: TensorRT {md(facts.get('tensorrt', '?'))} on {md(facts.get('gpu', '?'))} "
                     f"(compute capability {md(facts.get('compute_capability', '?'))}), built in "
                     f"{_num(facts.get('build_seconds'), '.1f')} s from {md(onnx.get('path', '?'))}")
    return lines


def _int8_lines(manifest: Manifest) -> list[str]:
    """How each INT8 graph was calibrated and what stayed in higher precision, from the manifest."""
    lines = []
    for art in manifest.artifacts:
        details = art.details or {}
        calib = details.get("calibration")
        if not calib:
            continue
        # deploykit's own words as they are (no escapes in the raw text); anything else from the file, escaped
        target = {"tensorrt": "TensorRT (Q/DQ) and OpenVINO on Intel CPUs", "cpu": "ONNX Runtime CPU",
                  "onnxruntime-cpu": "ONNX Runtime CPU"}.get(art.target) or md(art.target or "?")
        kept = details.get("fp32_layers") or []
        other = {"fp16": "FP16", "fp32": "FP32"}.get(art.remainder, "FP32")  # model.int8.onnx's remainder
        lines.append(f"- `{art.path}` for {target}: calibrated on {md(calib.get('images', '?'))} images "
                     f"({md(calib.get('method', '?'))})"
                     + (f", cache {md(calib['cache'])}" if calib.get("cache") else "")
                     + (f"; {md(details['int8_layers'])} layers in INT8" if details.get("int8_layers") is not None
                        else "")
                     + (f", the rest in {other}" if art.remainder else "")
                     + (f", kept in {other}: {md(', '.join(map(str, kept)))}" if kept else "") + ".")
    return lines


def _bench_lines(bench: dict[str, Any]) -> list[str]:
    host = bench.get("host", {})
    results = bench.get("results", [])
    lines = []
    if isinstance(host.get("versions"), dict):
        try:
            lines += [f"Host: {md(host_line(host))}", ""]
        except (KeyError, TypeError, ValueError, AttributeError):
            pass  # a hand-written or older bench.json without every host field: the table still stands
    head = ["backend", "precision", "variant", "device", "batch", "p50 ms", "p99 ms", "img/s (p50)",
            "vs torch (p50)", "parity"]
    lines += ["| " + " | ".join(head) + " |",
              "|" + "|".join("---" if i < 4 or i == len(head) - 1 else "--:" for i in range(len(head))) + "|"]
    for r in results:
        lat = r.get("latency_ms", {})
        lines.append("| " + " | ".join([md(r.get("backend", "-")), md(r.get("precision", "-")),
                                        md(r.get("variant") or "-"), md(r.get("device", "-")),
                                        md(r.get("batch", "-")), _num(lat.get("p50"), ".3f"),
                                        _num(lat.get("p99"), ".3f"), _num(r.get("throughput"), ".1f"),
                                        ratio_cell(r.get("speedup_vs_torch"), r.get("speedup_vs_torch_range"),
                                                   r.get("stable", True)),
                                        md(verdict_text(r.get("parity")))]) + " |")  # numbers: no escapes
    unstable = [f"{r.get('backend')} {r.get('precision')} batch {r.get('batch')}: {'; '.join(r['unstable'])}"
                for r in results if r.get("unstable")]
    if unstable:
        lines += ["", "Unstable rows (their figures are not results; rerun when the host is quieter):", ""]
        lines += [f"- {md(u)}" for u in unstable]
    busy = contention_warning(host)
    if busy:
        lines += ["", f"**Warning:** {busy}"]  # deploykit's words around two checked numbers: no escapes
    notes = sorted({f"{r.get('backend')} {r.get('precision')}: {r['note']}" for r in results if r.get("note")})
    if notes:
        lines += ["", "Notes:", ""] + [f"- {md(n)}" for n in notes]
    skipped = host.get("skipped", [])
    if skipped:
        lines += ["", "Skipped:", ""]
    for skip in skipped:
        what = " ".join(str(v) for v in (skip.get("backend"), skip.get("precision"),
                                         f"batch {skip['batch']}" if skip.get("batch") is not None else None) if v)
        lines.append(f"- {md(what)}: {md(skip.get('reason', ''))}")
    return lines


# Which runtime runs which artifact on which device (README "Which artifact to ship"): per device its runtime, the
# precisions that runtime takes (best first) and how the file is shipped; recommended_artifact picks from it.
RECOMMENDED = (("NVIDIA Jetson / GPU", "TensorRT", ("int8", "fp16", "fp32"),
                "an engine built on the device from `{path}`: `deploykit build {folder} --precision {precision}`"),
               ("Intel CPU", "OpenVINO", ("int8",),
                "`{path}` as it is (the file TensorRT builds from; integer kernels)"),
               ("other CPU (ARM, AMD)", "ONNX Runtime", ("int8-cpu", "fp32"), "`{path}`"))


def verdict_text(parity: Any) -> str:
    """A speed row's verdict: pass/FAIL and the images it rests on; "reference" for PyTorch; "-" for none."""
    if not isinstance(parity, dict) or not parity:
        return "-"
    if parity.get("is_reference"):
        return "reference"
    verdict = {True: "pass", False: "FAIL"}.get(parity.get("passed"), "-")
    n = parity.get("n_images")
    return f"{verdict} ({n} images)" if isinstance(n, int) and not isinstance(n, bool) else verdict


BENCH_BACKEND = {"TensorRT": "trt", "OpenVINO": "ov", "ONNX Runtime": "ort"}


def _bench_failures(bench: dict[str, Any] | None) -> set[tuple[str, str]]:
    """(backend, precision) pairs a bench row failed or could not verify: the report names no such file for that
    runtime, whatever the export's ONNX Runtime verdict was."""
    out = set()
    for r in (bench or {}).get("results", []):
        parity = r.get("parity") if isinstance(r.get("parity"), dict) else {}
        if r.get("backend") != "torch" and not parity.get("is_reference") and not verified(parity):
            out.add((str(r.get("backend")), str(r.get("precision"))))
    return out


def recommended_artifact(manifest: Manifest, bench: dict[str, Any] | None = None) -> list[tuple[str, str, Artifact]]:
    """Which artifact to ship per device, whatever its speed: ``(device, runtime, artifact)`` in
    :data:`RECOMMENDED`'s order, the first precision that device's runtime takes whose ONNX is verified
    (:func:`deploykit.manifest.verified`: its parity passed in the manifest) and did not fail on a bench row of that
    runtime. A device with no such file is left out. (The fastest verified bench row is another question:
    ``bench.results.fastest_verified``.)"""
    passed = {a.precision: a for a in manifest.artifacts if a.kind == "onnx" and a.verified}
    failed = _bench_failures(bench)
    chosen = []
    for device, runtime, order, _ in RECOMMENDED:
        precision = next((p for p in order if p in passed and (BENCH_BACKEND[runtime], p) not in failed), None)
        if precision is not None:
            chosen.append((device, runtime, passed[precision]))
    return chosen


def _ship_lines(manifest: Manifest, folder: Path, bench: dict[str, Any] | None) -> list[str]:
    """Per device: the verified artifact to ship (:func:`recommended_artifact`), then the rows bench marked fastest
    verified."""
    how = {device: text for device, _, _, text in RECOMMENDED}
    lines = ["| device | runtime | ship |", "|---|---|---|"]
    for device, runtime, art in recommended_artifact(manifest, bench):
        lines.append(f"| {device} | {runtime} | " + how[device].format(path=art.path, folder=md(str(folder)),
                                                                         precision=art.precision) + " |")
    if len(lines) == 2:
        return ["No artifact of this folder has passed verification yet: `deploykit verify " + md(str(folder)) + "`."]
    fastest = [r for r in (bench or {}).get("results", []) if r.get("ship") and verified(r.get("parity"))]
    if fastest:
        lines += ["", "Fastest verified on the bench host (`deploykit bench`):", ""]
        lines += [f"- {md(r.get('backend'))} ({md(r.get('device'))}, batch {md(r.get('batch'))}): "
                  f"{md(r.get('artifact', r.get('precision')))} in {md(r.get('precision'))}, p50 "
                  f"{_num((r.get('latency_ms') or {}).get('p50'), '.3f')} ms, parity "
                  f"{md(verdict_text(r.get('parity')))}" for r in fastest]
    return lines


def render_report(folder: Path, bench: dict[str, Any] | None = None, manifest: Manifest | None = None,
                  stale: str | None = None) -> str:
    """``stale``: why the bench numbers may be of an earlier export (:func:`stale_bench`), said above them."""
    folder = Path(folder)
    manifest = manifest or Manifest.load(folder)
    model, source, pre = manifest.model, manifest.source, manifest.preprocess
    arch = model.get("arch") or "model"
    classes = manifest.class_names
    shown = ", ".join(classes[:10]) + (", ..." if len(classes) > 10 else "") if classes else ""
    lines = [f"# {md(arch)}: deploykit report", "",
             f"- source: {md(source.get('name') or Path(str(source.get('path'))).name)} "
             f"({md(source.get('kind', '?'))}, sha256 {md(str(source.get('sha256'))[:12])})",
             f"- input: {md(manifest.input.get('name'))} {_shape(manifest.input.get('shape'))} "
             f"{md(manifest.input.get('dtype'))} -> {md(manifest.output.get('name'))} "
             f"({model.get('num_classes')} classes{': ' + md(shown) if shown else ''})",
             f"- preprocessing: {pre.get('channels')} channel(s), {pre.get('height')}x{pre.get('width')}, resize "
             f"{pre.get('resize') or 'straight to size'}, mean {md(pre.get('mean'))}, std {md(pre.get('std'))}",
             "- versions: " + md(", ".join(f"{k} {v}" for k, v in manifest.versions.items() if v)), ""]
    train = training_metrics(manifest)
    if train is not None or model.get("best_val_acc") is not None:
        best = train["best_val_acc"] if train else model["best_val_acc"]
        lines += ["## Training", "", f"Best validation accuracy {best:.2f}%"
                  + (f" after {train.get('epochs')} epochs in {train.get('seconds', 0):.1f} s" if train else "")
                  + ".", ""]
    has_acc = any("accuracy" in a.metrics for a in manifest.artifacts)
    lines += ["## Artifacts", "",
              "Each artifact against its reference on the verification images (`deploykit verify`); "
              + ("accuracy in percent, " if has_acc else "") + "agreement as a fraction.", ""]
    evidence = manifest.evidence
    if evidence is not None:
        held = held_out_text(evidence)
        if evidence.get("domain") is False:
            held = "bundled photos, not the model's kind of images: export with --data for a verdict on its own"
        files = ", ".join(f"`{f['path']}`" for f in evidence["files"].values())
        lines += [f"Verification images: {md(evidence.get('n_images'))} of {md(evidence.get('source'))} ({md(held)}); "
                  f"the folder carries them and PyTorch's logits on them ({files}), so `deploykit verify` judges "
                  "each file against PyTorch on the same images anywhere, without torch.", ""]
    lines += _artifact_rows(manifest)
    int8 = _int8_lines(manifest)
    if int8:
        lines += ["", "INT8 calibration:", ""] + int8
    engines = _engine_lines(manifest)
    if engines:
        lines += ["", "TensorRT engines:", ""] + engines
    lines += ["", "## Which file to ship", ""] + _ship_lines(manifest, folder, bench)
    if bench is not None:
        lines += ["", "## Speed", ""]
        if stale:
            lines += [f"**Out of date:** {md(stale)}", ""]
        lines += ["`deploykit bench`: latency per batch; img/s = batch / p50; `vs torch` = PyTorch eager FP32 p50 / "
                  "this p50 on the same device and batch, per timing round, the median of rounds (their range in "
                  "brackets); `unstable` rows are not results.", ""] + _bench_lines(bench)
    else:
        where = printable(folder).replace("`", "'")  # inside code spans: hidden characters escaped, no backtick
        lines += ["", "## Speed", "", f"Not measured yet: the speed table comes from `{BENCH_NAME}` in this folder. "
                  f"Write it with `deploykit bench {where} --json > {where}/{BENCH_NAME}` (add "
                  f"`--plot {where}/bench.png` for the figure), then run `deploykit report {where}` again."]
    pngs = sorted(p.name for p in folder.glob("*.png"))
    if pngs:
        lines += ["", "## Figures", ""] + [f"![{Path(n).stem}]({n})" for n in pngs if _plain_name(n)]
    return "\n".join(lines) + "\n"


def write_report(folder: Path, out: Path | None = None, bench_path: Path | None = None) -> Path:
    """Write ``report.md`` (or ``out``) for an export folder; ``bench.json`` in the folder is used when present."""
    folder = Path(folder)
    if bench_path is None and (folder / BENCH_NAME).is_file():
        bench_path = folder / BENCH_NAME
    bench = None
    if bench_path is not None:
        if not Path(bench_path).exists():
            raise InputError(f"--bench {bench_path} not found; write it with `deploykit bench DIR --json > FILE`")
        bench = read_json(Path(bench_path), "bench results file")
        check_bench(bench, Path(bench_path))
    manifest = Manifest.load(folder)
    for entry in manifest.artifacts:  # the page vouches for these files: they must be the ones verified
        if (folder / entry.path).exists() or (folder / entry.path).is_symlink():
            manifest.file(entry)
    check_evidence(manifest)  # and for the images and logits they were judged on
    stale = None if bench_path is None else stale_bench(folder, Path(bench_path), manifest)
    text = render_report(folder, bench, manifest, stale=stale)
    dest = Path(out) if out is not None else folder / REPORT_NAME
    with atomic_path(dest) as tmp:
        tmp.write_text(text)
    return dest


def stale_bench(folder: Path, bench_path: Path, manifest: Manifest) -> str | None:
    """Why ``bench_path`` may hold the numbers of an earlier export (written before one of the artifacts it would
    be read beside), or None. ``report`` says so above the speed table and on the terminal."""
    import datetime

    try:
        written = bench_path.stat().st_mtime
    except OSError:
        return None
    newer = []
    for entry in manifest.artifacts:
        with contextlib.suppress(OSError):
            if (folder / entry.path).stat().st_mtime > written + 1.0:  # 1 s: coarse file-system clocks
                newer.append(entry.path)
    if not newer:
        return None
    when = datetime.datetime.fromtimestamp(written).strftime("%Y-%m-%d %H:%M")
    return (f"{bench_path.name} ({when}) is older than {', '.join(newer[:3])}{' ...' if len(newer) > 3 else ''}: "
            f"its numbers may be of an earlier export; rerun `deploykit bench {folder} --json > {bench_path}`")
