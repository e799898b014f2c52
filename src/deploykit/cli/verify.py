"""`deploykit verify`: every ONNX artifact of an export folder against its reference."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from deploykit.cli.app import app
from deploykit.cli.options import ArtifactBackend, Int8AgreementOpt, MaxImagesOpt, check_max_images
from deploykit.cli.render import console, literal, parity_table
from deploykit.cli.messages import ConsoleReporter
from deploykit.errors import InputError, VerificationError
from deploykit.files import dumps_strict
from deploykit.manifest import MANIFEST_NAME, Manifest
from deploykit.precision import PrecisionRequest
from deploykit.runners.base import Backend
from deploykit.verify import verify_folder


@app.command()
def verify(
    target: Annotated[Path, typer.Argument(help="Export folder (holds deploykit.json), or one artifact in it: "
                                                "model.onnx, model.fp16.onnx, model.fp16.engine, ...")],
    data: Annotated[Optional[Path], typer.Option("--data", help="Images: ImageFolder (labelled: accuracy too) or flat "
                                                              "folder, or digits (the held-out digits) "
                                                              "\\[default: the folder's evidence, judged against "
                                                              "PyTorch's logits recorded at export].")] = None,
    max_images: MaxImagesOpt = None,
    recheck_reference: Annotated[bool, typer.Option(
        "--recheck-reference", help="Also run the PyTorch source here and check it still gives the logits "
                                    "recorded at export (needs torch and the checkpoint).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    int8_agreement: Int8AgreementOpt = None,
    int8_accuracy_drop: Annotated[Optional[float], typer.Option(
        "--int8-accuracy-drop", help="INT8 gate with labelled --data: most accuracy points lost \\[default: 1.0].")
    ] = None,
    allow_pickle: Annotated[bool, typer.Option(
        "--trust-code", "--allow-pickle", help="Reload a source checkpoint that is code (a pickled module, "
        "TorchScript, a .pt2 program: each runs code from the file) as the reference; a manifest alone never grants "
        "this. --allow-pickle is the same flag.")] = False,
    model_def: Annotated[Optional[str], typer.Option(
        "--model-def", help="Your model code (path/to/model.py:factory) to rebuild a --model-def source as the "
                            "reference.")] = None,
    backend: Annotated[Optional[ArtifactBackend], typer.Option(
        "--backend", help="Run the artifacts on ort (ONNX Runtime), ov (OpenVINO, CPU: the ONNX files, and "
        "model.onnx also in bf16 where the CPU has it) or trt (the engines) \\[default: what each artifact is for: "
        "ONNX on ort, engines on trt].")] = None,
) -> None:
    """Compare each artifact with the PyTorch reference (its logits recorded at export on the folder's evidence images,
    no torch needed): logits, cosine, top-1/top-5 (and accuracy with labels)."""
    folder, only = artifact_in_folder(target)
    gates = PrecisionRequest(int8=True, int8_agreement=int8_agreement, int8_accuracy_drop=int8_accuracy_drop)
    gates.validate()  # the INT8 gates export takes, checked as export checks them
    overrides = gates.overrides
    reporter = ConsoleReporter()
    reporter.status(f"verifying {literal(folder)}: each artifact against its reference")  # long: the heartbeat follows
    report = verify_folder(folder, data=data, reporter=reporter, overrides=overrides, only=only,
                           allow_pickle=allow_pickle, model_def=model_def, backend=backend and Backend(backend.value),
                           max_images=check_max_images(max_images), recheck=recheck_reference)
    if as_json:
        print(dumps_strict(report.to_json()))
    else:
        console.print(parity_table(report))
        for line in ran_lines(report):
            console.print(literal(line), highlight=False, soft_wrap=True)
        check = report.reference_check
        if check is not None:
            console.print(f"reference re-checked: PyTorch here vs its logits recorded at export: max |diff| "
                          f"{check['max_abs_diff']:.2e}, top-1 {check['top1_agreement']:.3f} "
                          f"({'pass' if check['passed'] else 'FAIL'})", highlight=False, soft_wrap=True)
    if not report.passed:
        raise VerificationError(f"out of tolerance: {report.failure_summary()}")


def ran_lines(report) -> list[str]:
    """What each OpenVINO run computed in, and how it compares with ONNX Runtime on the same file."""
    out = []
    for a in report.artifacts:
        if a.extra.get("backend") != "ov":
            continue
        layers = ", ".join(f"{n} {p}" for p, n in sorted(a.extra["layer_precisions"].items()))
        out.append(f"{a.path} ({a.precision}) ran on OpenVINO {a.extra['openvino']} in "
                   f"{a.extra['inference_precision']} (conv/matmul layers: {layers or '-'})")
        ort = a.extra.get("ort")
        if ort:
            m = ort["metrics"]
            out.append(f"  ONNX Runtime on the same file: top-1 {m['top1_agreement']:.3f}, cos min "
                       f"{m['cosine_min']:.4f} vs {report.reference} ({'pass' if ort['passed'] else 'FAIL'}); "
                       f"top-1 agreement OpenVINO vs ONNX Runtime {ort['top1_agreement_with_ov']:.3f}")
    return out


def artifact_in_folder(target: Path) -> tuple[Path, list[str] | None]:
    """``(folder, None)`` for an export folder; ``(its folder, [name])`` for one artifact listed in the
    deploykit.json beside it."""
    if not target.exists():
        raise InputError(f"not found: {target}")
    if target.is_dir():
        return target, None
    folder = target.parent
    if not (folder / MANIFEST_NAME).is_file():
        raise InputError(f"{target.name} has no {MANIFEST_NAME} beside it: verify compares an artifact with its "
                         "export folder's reference (the PyTorch model, else model.onnx); copy the whole folder")
    if Manifest.load(folder).artifact(target.name) is None:
        raise InputError(f"{target.name} is not listed in {folder / MANIFEST_NAME}; verify its export folder")
    return folder, [target.name]
