"""Bounded resources (issue 10, item 4): tiny inputs that ask for tens of GB get one line, quickly.

Runs that could allocate without bound go through a subprocess under an 8 GiB address-space limit and a 60 s
timeout, so a regression fails the test instead of taking the machine down.
"""

from __future__ import annotations

import json
import shutil

import pytest
from _hostile import assert_no_traceback, assert_refused, edit_manifest, invoke, run
from PIL import Image

LIMITS = {"timeout": 60, "memory_gb": 8}


@pytest.fixture(scope="module")
def odd_images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("odd")
    Image.new("L", (50_000, 1), 128).save(folder / "strip.png")  # a few hundred bytes
    (folder / "bomb.png").write_bytes(_bomb_png(20_000, 20_000))  # 400 megapixels, one colour, ~150 KB
    return folder


def _bomb_png(width: int, height: int) -> bytes:
    """A 1-bit single-colour PNG written directly (Pillow would need the whole bitmap in memory to save it)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\x00" + b"\xff" * ((width + 7) // 8)
    packer = zlib.compressobj(9)
    block = row * 1000
    body = b"".join(packer.compress(block) for _ in range(height // 1000)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def test_tiny_png_extreme_aspect(export_copy, odd_images, tmp_path):
    """A 50000x1 PNG: predict checks size and aspect before decoding/resizing (the 224 crop resizes it huge)."""
    # shorter side first (as ImageNet models do): 1 px -> 1024 px makes it 51200000x1024 before the crop
    edit_manifest(export_copy, lambda d: d["preprocess"].update(resize=1024))
    result = run("predict", export_copy, odd_images / "strip.png", cwd=tmp_path, **LIMITS)
    assert_refused(result)


def test_decompression_bomb_png(export_copy, odd_images, tmp_path):
    result = run("predict", export_copy, odd_images / "bomb.png", cwd=tmp_path, **LIMITS)
    assert_refused(result)


def test_export_resize_huge(lenet_ckpt, tmp_path):
    result = run("export", lenet_ckpt, "--out", tmp_path / "out", "--resize", "100000", cwd=tmp_path, **LIMITS)
    assert_refused(result)
    assert not (tmp_path / "out").exists()


def test_export_input_shape_huge(resnet18_sd, tmp_path):
    result = run("export", resnet18_sd, "--out", tmp_path / "out", "--input-shape", "3,100000,100000",
                 cwd=tmp_path, **LIMITS)
    assert_refused(result)


def test_train_img_size_huge(tmp_path):
    result = run("train", "lenet", "--data", "digits", "--epochs", "1", "--img-size", "100000", "--out",
                 tmp_path / "run", cwd=tmp_path, **LIMITS)
    assert_refused(result)


def test_manifest_size_huge(export_copy, image, tmp_path):
    edit_manifest(export_copy, lambda d: d["preprocess"].update(height=100_000, width=100_000))
    result = run("predict", export_copy, image, cwd=tmp_path, **LIMITS)
    assert_refused(result)


def test_onnx_metadata_size_huge(base_export, image, tmp_path):
    import onnx

    model = onnx.load(str(base_export / "model.onnx"))
    for prop in model.metadata_props:
        if prop.key == "deploykit.preprocess":
            pre = json.loads(prop.value)
            pre.update(height=100_000, width=100_000)
            prop.value = json.dumps(pre)
    onnx.save(model, str(tmp_path / "alone.onnx"))
    result = run("predict", tmp_path / "alone.onnx", image, cwd=tmp_path, **LIMITS)
    assert_refused(result)


# -- a bomb inside a folder is skipped with a warning, the rest used ---------------------------------------------
@pytest.fixture
def folder_with_bomb(digit_images, odd_images, tmp_path):
    folder = tmp_path / "imgs"
    shutil.copytree(digit_images, folder)
    shutil.copy(odd_images / "bomb.png", folder / "bomb.png")
    return folder


def test_bomb_in_verify_data(export_copy, folder_with_bomb):
    result = invoke("verify", export_copy, "--data", folder_with_bomb)
    assert_no_traceback(result)
    assert result.code == 0, result.describe()
    assert "bomb.png" in result.output or "skipped" in result.output, result.describe()


def test_bomb_in_calib_folder(lenet_ckpt, folder_with_bomb, tmp_path):
    out = tmp_path / "out"
    result = invoke("export", lenet_ckpt, "--out", out, "--int8", "--int8-for", "cpu", "--calib", folder_with_bomb,
                    "--calib-method", "minmax", "--min-calib", "4", "--no-verify")
    assert_no_traceback(result)
    assert result.code == 0, result.describe()
    assert (out / "model.int8-cpu.onnx").is_file()


def test_verify_huge_source_bounded(export_copy, digit_images, tmp_path):
    """A manifest whose source is a 200 GB (sparse) file: verify does not hash it for minutes."""
    huge = tmp_path / "huge.pth"
    with open(huge, "wb") as handle:
        handle.truncate(200 << 30)
    edit_manifest(export_copy, lambda d: d["source"].update(path=str(huge), sha256="0" * 64))
    result = run("verify", export_copy, "--data", digit_images, cwd=tmp_path, timeout=30, memory_gb=8)
    huge.unlink()
    assert_no_traceback(result)
    assert result.code in (0, 1, 4), result.describe()


# -- a write that fails (disk full): one line, nothing half-written -------------------------------------------------
def test_export_write_fails(lenet_ckpt, tmp_path):
    """Every file over 100 KB fails to write (as on a full disk) while exporting --fp16."""
    out = tmp_path / "out"
    result = run("export", lenet_ckpt, "--out", out, "--fp16", "--no-verify", cwd=tmp_path, max_file_bytes=100_000)
    assert_refused(result)
    left = [p.name for p in tmp_path.iterdir() if "out" in p.name]  # the folder, or a staging folder beside it
    assert not left, f"a failed export into a new --out left {left}"


def test_data_write_fails(tmp_path):
    result = run("data", "digits", "--out", tmp_path / "digits", cwd=tmp_path, max_file_bytes=100)
    assert_refused(result)


# -- issue 22, class 6: every number has a finite range; a graph that loops is refused when read ------------------
UNBOUNDED = {
    "bench-iters-1e12": ("bench", "{folder}", "--backends", "ort", "--precisions", "fp32", "--iters", str(10**12)),
    "bench-seconds-inf": ("bench", "{folder}", "--backends", "ort", "--precisions", "fp32", "--seconds", "inf"),
    "bench-seconds-1e309": ("bench", "{folder}", "--backends", "ort", "--precisions", "fp32", "--seconds", "1e309"),
    "bench-batch-2^40": ("bench", "{folder}", "--backends", "ort", "--precisions", "fp32", "--batch", str(2**40)),
    "export-batch-2^40": ("export", "{ckpt}", "--out", "{tmp}/o", "--no-verify", "--batch", str(2**40)),
    "train-seed-2^70": ("train", "lenet", "--data", "digits", "--epochs", "1", "--seed", str(2**70), "--out",
                        "{tmp}/r"),
    "train-lr-inf": ("train", "lenet", "--data", "digits", "--epochs", "1", "--lr", "inf", "--out", "{tmp}/r"),
    "predict-topk-2^40": ("predict", "{folder}", "{image}", "--topk", str(2**40)),
    "loop-graph-folder": ("predict", "{loop}", "{image}"),
    "loop-graph-onnx": ("bench", "{loop}/model.onnx", "--backends", "ort", "--precisions", "fp32", "--iters", "2"),
}


@pytest.mark.parametrize("case", list(UNBOUNDED))
def test_unbounded_input_refused_at_once(case, export_copy, lenet_ckpt, image, tmp_path):
    """Refused in one line within seconds: never a run that does not end, never the catch-all."""
    import hashlib
    import json

    from _loop_graph import loop_model

    loop = tmp_path / "loop"
    if "{loop}" in " ".join(UNBOUNDED[case]):
        import onnx
        import shutil

        shutil.copytree(export_copy, loop)
        onnx.save(loop_model(), str(loop / "model.onnx"))
        data = json.loads((loop / "deploykit.json").read_text())
        for art in data["artifacts"]:
            if art["path"] == "model.onnx":
                art.update(sha256=hashlib.sha256((loop / "model.onnx").read_bytes()).hexdigest(),
                           bytes=(loop / "model.onnx").stat().st_size)
        (loop / "deploykit.json").write_text(json.dumps(data))
        if case == "loop-graph-onnx":
            (loop / "deploykit.json").unlink()
    args = [a.format(folder=export_copy, ckpt=lenet_ckpt, tmp=tmp_path, image=image, loop=loop)
            for a in UNBOUNDED[case]]
    result = run(*args, cwd=tmp_path, timeout=60)
    assert_refused(result)
    assert result.seconds < 30, result.describe()
