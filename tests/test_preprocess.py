from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deploykit.data import sample_images, scan_images
from deploykit.errors import InputError
from deploykit.preprocess import Preprocess, parse_floats, parse_input_shape
from deploykit.messages import Recorder


def test_every_mode_becomes_the_requested_tensor(photos: Path):
    rgb = Preprocess(channels=3, height=40, width=48, mean=(0.5,) * 3, std=(0.25,) * 3, resize=50)
    gray = Preprocess(channels=1, height=28, width=28, mean=(0.1307,), std=(0.3081,))
    images = scan_images(photos)
    assert len(images) == 7  # notes.txt skipped
    for path in images.paths:
        x = rgb.load(path)
        assert x.shape == (3, 40, 48) and x.dtype == np.float32
        assert -2.0 - 1e-6 <= x.min() and x.max() <= 2.0 + 1e-6  # (0..1 - 0.5) / 0.25
        assert gray.load(path).shape == (1, 28, 28)


def test_sixteen_bit_is_scaled_not_clipped(photos: Path):
    pre = Preprocess(channels=1, height=64, width=64, mean=(0.0,), std=(1.0,))
    x16 = pre.load(photos / "coins_16bit.png")
    assert 0.05 < x16.mean() < 0.95  # a clipped 16-bit image would be all ones
    x8 = pre.apply(Image.fromarray((np.asarray(Image.open(photos / "coins_16bit.png")) // 257).astype(np.uint8)))
    np.testing.assert_allclose(x16, x8, atol=2 / 255)


def test_alpha_composited_on_white(tmp_path):
    img = Image.new("RGBA", (8, 8), (255, 0, 0, 0))  # fully transparent red
    pre = Preprocess(channels=3, height=8, width=8, mean=(0.0,) * 3, std=(1.0,) * 3)
    np.testing.assert_allclose(pre.apply(img), 1.0)


def test_imagefolder_labels_and_warning(tmp_path, photos):
    for cls, names in {"cat": ["chelsea.png"], "other": ["astronaut.jpg", "camera_gray.bmp"]}.items():
        (tmp_path / cls).mkdir()
        for n in names:
            (tmp_path / cls / n).write_bytes((photos / n).read_bytes())
    (tmp_path / "other" / "broken.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    recorder = Recorder()
    images = scan_images(tmp_path, reporter=recorder)
    warnings = recorder.of("warn")
    assert images.class_names == ("cat", "other")
    assert sorted(images.labels) == [0, 1, 1]
    assert warnings and "broken.jpg" in warnings[0]


def test_empty_and_missing_folders(tmp_path):
    with pytest.raises(InputError, match="no readable images"):
        scan_images(tmp_path)
    with pytest.raises(InputError, match="not found"):
        scan_images(tmp_path / "nope")


def test_bundled_photos_are_real_and_offline():
    images = sample_images()
    assert len(images) >= 16
    assert all(p.is_file() for p in images.paths)


@pytest.mark.parametrize("text", ["3,224", "2,28,28", "a,b,c", "3,0,4"])
def test_bad_input_shape(text):
    with pytest.raises(InputError, match="--input-shape"):
        parse_input_shape(text)


def test_parse_values():
    assert parse_input_shape("1,28,28") == (1, 28, 28)
    assert parse_floats("0.5, 0.5,0.5", "--mean") == (0.5, 0.5, 0.5)
    with pytest.raises(InputError, match="--mean"):
        parse_floats("0.5;0.5", "--mean")
    with pytest.raises(InputError, match="--mean/--std"):
        Preprocess(channels=3, height=8, width=8, mean=(0.5,), std=(0.5,) * 3)
