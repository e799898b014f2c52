"""`deploykit build`: an export folder's ONNX -> a TensorRT engine, on the device that will run it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Optional

import typer

from deploykit.cli.app import app
from deploykit.cli.command import DeployKitCommand
from deploykit.cli.options import ProfileOpt, TimingCacheOpt, WorkspaceOpt
from deploykit.cli.render import console, err_console, literal, note, parity_table
from deploykit.cli.messages import ConsoleReporter
from deploykit.errors import InputError, VerificationError
from deploykit.pipeline import build_folder
from deploykit.tensorrt.profile import BatchProfile, EnginePrecision

# The value `--dynamic-batch` may take: MIN:OPT:MAX or N; malformed ranges too, so that they fail with the
# profile's own message rather than as a stray MODEL argument.
_RANGE = re.compile(r"\s*\d[\d\s]*(:[\d\s]*)*")


def split_dynamic_batch(args: list[str]) -> list[str]:
    """``--dynamic-batch 1:8:32`` / ``--dynamic-batch=1:8:32`` -> ``--dynamic-batch --profile 1:8:32``; a bare
    ``--dynamic-batch`` stays the flag. Typer's parser has no options with an optional value, so `export` reads
    its arguments through this first (:class:`DynamicBatchCommand`)."""
    out: list[str] = []
    ranges: list[str] = []
    rest = list(args)
    while rest:
        arg = rest.pop(0)
        if arg == "--":
            out += [arg, *rest]
            break
        if arg.startswith("--dynamic-batch="):
            ranges.append(arg.split("=", 1)[1])
        elif arg == "--dynamic-batch" and rest and _RANGE.fullmatch(rest[0]):
            ranges.append(rest.pop(0))
        else:
            out.append(arg)
            continue
        out.append("--dynamic-batch")
    if not ranges:
        return out
    options = out[:out.index("--")] if "--" in out else out
    if len(ranges) > 1 or any(a == "--profile" or a.startswith("--profile=") for a in options):
        raise InputError("give the batch range once: --dynamic-batch MIN:OPT:MAX (or its alias --profile MIN:OPT:MAX)")
    return options + ["--profile", ranges[0]] + out[len(options):]  # before a `--` separator, if any


class DynamicBatchCommand(DeployKitCommand):
    """A command whose ``--dynamic-batch`` flag may carry the engine's batch range: ``--dynamic-batch
    MIN:OPT:MAX`` is ``--dynamic-batch --profile MIN:OPT:MAX``."""

    def parse_args(self, ctx, args: list[str]) -> list[str]:
        return super().parse_args(ctx, split_dynamic_batch(args))


def build_and_verify(folder: Path, precision: EnginePrecision, *, profile: str | None, workspace: float | None,
                     timing_cache: Path | None, data: Path | None, verify: bool, done: str | None = None,
                     loaded=None, trt_check: bool = True):
    """:func:`deploykit.pipeline.build_folder` with a progress bar: the engine's facts printed once it is built,
    then its verification (PyTorch reference, else the FP32 ONNX) as a table."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

    requested = BatchProfile.parse(profile) if profile is not None else None
    # one row per TensorRT build phase: phases have no reliable time left, so the elapsed time instead
    reporter = ConsoleReporter(err_console, TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                               TimeElapsedColumn())
    result = build_folder(folder, precision, profile=requested, workspace_gib=workspace, timing_cache=timing_cache,
                          data=data, verify=verify, loaded=loaded, done=done, trt_check=trt_check,
                          reporter=reporter, on_built=_print_built)
    if result.report is not None:
        console.print(parity_table(result.report))
    return result.engine, result.report


def _print_built(result) -> None:
    """The build's notes, then one line of facts about the engine."""
    for msg in result.notes:
        note(msg)
    facts = result.facts
    profile = facts["profile"]
    console.print(f"[bold]{literal(result.path)}[/]  TensorRT {facts['tensorrt']}  {literal(facts['gpu'])} (sm_"
                  f"{facts['compute_capability'].replace('.', '')})  {facts['typing']} typing  profile "
                  f"{profile['min'][0]}:{profile['opt'][0]}:{profile['max'][0]}  {facts['build_seconds']:.1f} s  "
                  f"timing cache {'reused' if facts['timing_cache']['reused'] else 'new'}", highlight=False)


@app.command(cls=DynamicBatchCommand)  # --dynamic-batch MIN:OPT:MAX, as export's; --profile is its alias
def build(
    folder: Annotated[Path, typer.Argument(help="Export folder (deploykit.json + ONNX), copied to this device.")],
    precision: Annotated[EnginePrecision, typer.Option("--precision", help="Which ONNX to build from.")
                         ] = EnginePrecision.fp32,
    dynamic_batch: Annotated[bool, typer.Option(
        "--dynamic-batch", help="--dynamic-batch MIN:OPT:MAX: the engine's batch optimization profile, for a "
                                "dynamic-batch export \\[default: 1:8:32] (alias: --profile MIN:OPT:MAX).")
                             ] = False,
    profile: ProfileOpt = None,
    workspace: WorkspaceOpt = None,
    timing_cache: TimingCacheOpt = None,
    data: Annotated[Optional[Path], typer.Option("--data", help="Verification images: a folder, or digits "
                                                                "\\[default: the folder's evidence, against "
                                                                "PyTorch's recorded logits].")
                    ] = None,
    no_verify: Annotated[bool, typer.Option("--no-verify", help="Skip verifying the engine.")] = False,
    no_trt_check: Annotated[bool, typer.Option(
        "--no-trt-check", help="Build even when this TensorRT's operator table says the graph will not parse "
                               "(`deploykit check`).")] = False,
) -> None:
    """Build model.<precision>.engine from an export folder with this device's TensorRT, then verify it."""
    if dynamic_batch and profile is None:
        raise InputError("build --dynamic-batch takes the batch range: --dynamic-batch MIN:OPT:MAX, e.g. 1:8:32 (a "
                         "dynamic batch dimension itself comes from `deploykit export --dynamic-batch`)")
    _, report = build_and_verify(folder, precision, profile=profile, workspace=workspace,
                                 timing_cache=timing_cache, data=data, verify=not no_verify,
                                 trt_check=not no_trt_check)
    if no_verify:
        note(f"verification skipped (--no-verify): run `deploykit verify {folder}` to check the engine")
    if report is not None and not report.passed:
        raise VerificationError(f"out of tolerance: {report.failure_summary()}")
