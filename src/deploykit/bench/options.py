"""What a bench is asked for: backends, precisions, batch sizes, device, threads, how long to time."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from deploykit.errors import InputError
from deploykit.runners.base import Backend, Device
from deploykit.parity import Precision
from deploykit.runners.openvino import openvino_available

DEFAULT_MODEL = "resnet18"  # what `deploykit bench` with no TARGET measures: seeded weights, 1000 classes, 224x224
DEFAULT_WARMUP = 5
DEFAULT_ITERS = 100
DEFAULT_BUDGET_S = 15.0  # without --iters/--seconds: 100 iterations, or fewer once 15 s have passed
MIN_ITERS = 10  # ... but never fewer than this
EXPORTS_DIR = Path("exports")  # where `deploykit bench` with no TARGET looks for the latest export folder


def default_backends() -> tuple[Backend, ...]:
    """Every backend; OpenVINO only where it is installed (asked for by name without it: a skipped row)."""
    return tuple(b for b in Backend if b is not Backend.ov or openvino_available())


class Variant(str, Enum):
    """How a backend ran: the plain form, or one of the extra forms asked for with --torch-variants / TRT."""

    eager = "eager"  # PyTorch, as the model comes
    channels_last = "channels_last"  # PyTorch FP32, NHWC memory format (CPU)
    channels_last_autocast = "channels_last+autocast"  # PyTorch, NHWC + FP16 autocast (CUDA)
    compiled = "compile"  # torch.compile (inductor)
    session = "session"  # ONNX Runtime InferenceSession.run, host arrays in and out
    end_to_end = "end-to-end"  # TensorRT, host-to-device copy + compute + device-to-host copy
    compute = "compute"  # TensorRT, device buffers only (trtexec's "GPU Compute Time")
    ov_f32 = "f32"  # OpenVINO, INFERENCE_PRECISION_HINT=f32 (what the compiled model reports it runs)
    ov_bf16 = "bf16"  # OpenVINO, INFERENCE_PRECISION_HINT=bf16 (native bf16 CPUs; INT8 graphs: the non-INT8 rest)


PLAIN_VARIANTS = (Variant.eager, Variant.session, Variant.ov_f32)  # labels leave these out


def label(backend: Backend, precision: Precision, variant: Variant) -> str:
    """``ort fp16``, ``torch fp32 compile``: the variant only where it is not the backend's plain form."""
    plain = variant in PLAIN_VARIANTS or variant.value == precision.value
    return f"{backend.value} {precision.value}" + ("" if plain else f" {variant.value}")


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


@dataclass(frozen=True)
class BenchOptions:
    backends: tuple[Backend, ...] = field(default_factory=default_backends)
    precisions: tuple[Precision, ...] = tuple(Precision)
    batches: tuple[int, ...] = (1,)
    device: Device = Device.cpu
    threads: int | None = None  # None: every core this process may run on
    warmup: int = DEFAULT_WARMUP
    iters: int | None = None
    seconds: float | None = None
    torch_variants: bool = False
    data: Path | None = None  # verification images for the parity of each row (default: the folder's evidence)
    max_images: int | None = None  # most of them (deploykit.evidence.DEFAULT_MAX_IMAGES)

    def validate(self) -> None:
        if self.iters is not None and self.seconds is not None:
            raise InputError("give --iters or --seconds, not both")
        if self.iters is not None and self.iters < 1:
            raise InputError(f"--iters must be >= 1, got {self.iters}")
        if self.seconds is not None and not self.seconds > 0:
            raise InputError(f"--seconds must be > 0, got {self.seconds}")
        if self.warmup < 0:
            raise InputError(f"--warmup must be >= 0, got {self.warmup}")
        if self.threads is not None and self.threads < 1:
            raise InputError(f"--threads must be >= 1, got {self.threads}")
        if not self.batches or any(b < 1 for b in self.batches):
            raise InputError(f"--batch sizes must be >= 1, got {','.join(map(str, self.batches)) or 'none'}")
        if any(b > 4096 for b in self.batches):
            raise InputError(f"--batch sizes must be at most 4096, got {','.join(map(str, self.batches))}")
        if not self.backends:
            raise InputError("--backends is empty; choose from torch,ort,ov,trt")
        if not self.precisions:
            raise InputError("--precisions is empty; choose from fp32,fp16,int8,int8-cpu,bf16")

    @property
    def thread_count(self) -> int:
        return self.threads or available_cores()


def parse_list(text: str, kind: type[Enum], flag: str) -> tuple:
    """``"torch, ort"`` -> ``(Backend.torch, Backend.ort)``; unknown names raise one line listing the choices."""
    out = []
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        try:
            value = kind(item)
        except ValueError:
            choices = ",".join(m.value for m in kind)
            raise InputError(f"{flag}: unknown {item!r}; choose from {choices}") from None
        if value not in out:
            out.append(value)
    return tuple(out)


def parse_batches(text: str) -> tuple[int, ...]:
    try:
        values = tuple(dict.fromkeys(int(s) for s in text.split(",") if s.strip()))
    except ValueError:
        raise InputError(f"--batch must be comma-separated integers, e.g. 1,8,32; got {text!r}") from None
    return values
