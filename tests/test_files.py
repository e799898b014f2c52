"""files.py: atomic writes, their errors and modes, strict JSON."""

from __future__ import annotations

from pathlib import Path

import pytest


def test_unwritable_destination_names_the_path_not_a_flag():
    from deploykit.errors import InputError
    from deploykit.files import atomic_path, ensure_writable_dir

    if not Path("/proc/self").is_dir():
        pytest.skip("needs Linux /proc (a folder no file can be created in, even as root)")
    with pytest.raises(InputError, match=r"^cannot write /proc/x\.png: ") as err:
        with atomic_path(Path("/proc/x.png")) as tmp:
            tmp.write_bytes(b"never")
    assert "--" not in str(err.value)
    with pytest.raises(InputError, match=r"^cannot create output folder /proc/sub: .*; choose another --plot$"):
        ensure_writable_dir(Path("/proc/sub"), flag="--plot")


def test_outputs_get_the_usual_file_mode_not_mkstemps_0600(tmp_path):
    import os
    import stat

    from deploykit.files import write_json_atomic

    old = os.umask(0o022)
    try:
        write_json_atomic(tmp_path / "m.json", {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "m.json").stat().st_mode) == 0o644


def test_strict_json_refuses_nan_and_huge_numbers(tmp_path):
    from deploykit.errors import InputError
    from deploykit.files import dumps_strict, read_json

    for text in ('{"a": NaN}', '{"a": Infinity}', '{"a": 1e999}'):
        (tmp_path / "bad.json").write_text(text)
        with pytest.raises(InputError):
            read_json(tmp_path / "bad.json", "a test file")
    assert dumps_strict({"a": float("nan"), "b": [float("inf"), 1.5]}) == '{"a": null, "b": [null, 1.5]}'
