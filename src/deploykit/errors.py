"""One exception family for user-facing failures.

The CLI catches :class:`DeployKitError` once (``cli/app.py``) and prints its message on one line with a
non-zero exit code. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


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
    """An optional dependency (TensorRT, a CUDA GPU, ...) is absent on this host."""

    exit_code = 3
