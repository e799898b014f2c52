"""Errors with a message of their own (issue 22, class 7): what the catch-all used to answer (exit 70) -- malformed
safetensors, a pickle named .safetensors, a sparse tensor in a state_dict, an immutable folder -- now ends in one
line that says what is wrong."""

from __future__ import annotations

import shutil
import struct
import subprocess

import pytest
from _hostile import assert_refused, invoke


def _safetensors(tmp_path, how: str):
    import torch
    from safetensors.torch import save_file

    good = tmp_path / "good.safetensors"
    save_file({"w": torch.ones(2, 2)}, str(good))
    data = good.read_bytes()
    path = tmp_path / f"{how}.safetensors"
    if how == "pickle-named-safetensors":
        torch.save({"w": torch.ones(2, 2)}, path)
    else:
        length = {"header-length-1": 1, "header-length-2^63": 2**63, "header-past-end": len(data)}[how]
        path.write_bytes(struct.pack("<Q", length) + data[8:])
    return path


def _sparse(tmp_path, _):
    import torch

    from deploykit.models.registry import build_model

    state = build_model("lenet", num_classes=10).state_dict()
    first = next(k for k in state if k.endswith("weight"))
    state[first] = state[first].to_sparse()
    path = tmp_path / "sparse.pth"
    torch.save(state, path)
    return path


CHECKPOINTS = {"header-length-1": _safetensors, "header-length-2^63": _safetensors, "header-past-end": _safetensors,
               "pickle-named-safetensors": _safetensors, "sparse-state-dict": _sparse}


@pytest.mark.parametrize("case", list(CHECKPOINTS))
def test_bad_checkpoint_has_its_own_line(case, tmp_path, image):
    path = CHECKPOINTS[case](tmp_path, case)
    line = assert_refused(invoke("predict", path, image, "--arch", "lenet"))
    assert path.name in line and "internal error" not in line


def _chattr(flag: str, path) -> bool:
    return shutil.which("chattr") is not None and \
        subprocess.run(["chattr", flag, str(path)], capture_output=True).returncode == 0


@pytest.mark.parametrize("where", ["export-folder", "parent-folder"])
def test_immutable_folder_has_its_own_line(where, export_copy, lenet_ckpt, tmp_path):
    """chattr +i on the export folder (a re-export cannot swap it) or on the folder --out is created in: EPERM,
    told in one line; the folder as it was."""
    target = export_copy if where == "export-folder" else tmp_path / "locked"
    target.mkdir(exist_ok=True)
    if not _chattr("+i", target):
        pytest.skip("chattr +i is not available here (needs root and a file system that has it)")
    try:
        out = export_copy if where == "export-folder" else target / "new"
        before = sorted(p.name for p in target.iterdir())
        line = assert_refused(invoke("export", lenet_ckpt, "--out", out, "--no-verify"))
        assert "internal error" not in line
        assert sorted(p.name for p in target.iterdir()) == before
    finally:
        _chattr("-i", target)
