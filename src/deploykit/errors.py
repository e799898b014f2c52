"""One exception family for user-facing failures.

The CLI catches :class:`DeployKitError` once (``cli/app.py``) and prints its message on one line with a
non-zero exit code. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import signal


class DeployKitError(Exception):
    """A mistake or a missing prerequisite the user can fix. ``str(err)`` says what to do."""

    exit_code = 1


class InputError(DeployKitError):
    """A path, option or image the user gave cannot be used."""


class CheckpointError(DeployKitError):
    """A checkpoint cannot be read, or does not fit the architecture."""


class VerificationError(DeployKitError):
    """An artifact is out of tolerance against its reference."""

    exit_code = 4


class MissingDependencyError(DeployKitError):
    """An optional dependency (TensorRT, a CUDA GPU, ...) is absent on this host. ``lines``: the same message as
    a first line and the lines under it (what to install, commands one per line) for the CLI to print; ``str()``
    stays one line."""

    exit_code = 3

    def __init__(self, message: str, lines: list[str] | None = None) -> None:
        super().__init__(message)
        self.lines = list(lines or [])


class EngineBuildError(DeployKitError):
    """TensorRT could not parse the ONNX or build the engine."""


class EngineMismatchError(DeployKitError):
    """An engine was built by another TensorRT version or for another GPU than the one here."""


class EngineRuntimeError(DeployKitError):
    """A loaded TensorRT engine could not run: no execution context, a rejected buffer, a failed CUDA call."""


# Modules that come with an extra (pyproject.toml), and what that extra is for.
EXTRAS = {"torch": ("torch", "PyTorch"), "torchvision": ("torch", "PyTorch"), "onnxscript": ("torch", "PyTorch"),
          "safetensors": ("torch", "PyTorch"), "sklearn": ("data", "scikit-learn (the digits dataset)"),
          "matplotlib": ("plot", "matplotlib (the --plot PNGs)")}


def missing_extra(exc: ImportError, command: str | None = None) -> MissingDependencyError | None:
    """The one-line MissingDependencyError for an ImportError of a module an extra provides, else None."""
    name = (getattr(exc, "name", None) or "").split(".")[0]
    if name not in EXTRAS:
        return None
    extra, what = EXTRAS[name]
    jetson = " (on a Jetson: NVIDIA's PyTorch for JetPack)" if extra == "torch" else ""
    # `torch` itself missing, or an install broken inside (No module named 'torch._C'): say which
    state = "which is not installed here" if exc.name == name else f"whose import failed here ({exc})"
    return MissingDependencyError(f"{'deploykit ' + command if command else 'this'} needs {what}, {state}: "
                                  f'pip install "deploykit[{extra}]"{jetson}')


# -- interrupts: Ctrl-C and SIGTERM end every command the same way ------------------------------------------------
_interrupted = False


def interrupt(signum, frame) -> None:
    """The SIGINT/SIGTERM handler: note the interrupt, ignore any further one (so the unwinding and cleanup that
    follow -- staging folders removed, locks released -- run to their end) and raise KeyboardInterrupt."""
    global _interrupted
    _interrupted = True
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    raise KeyboardInterrupt


def interrupt_requested() -> bool:
    """Whether a SIGINT/SIGTERM arrived: whatever error the interrupted library then raised (torch's exporter wraps
    a KeyboardInterrupt raised inside it into its own error), the command ends as ``interrupted``."""
    return _interrupted
