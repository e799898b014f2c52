"""deploykit train: real training on scikit-learn's digits (tiny epochs), fine-tuning, resume, DDP, data sources."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from deploykit.data import Bundled, Split, bundled_split, digits_split, split_imagefolder, write_imagefolder
from deploykit.errors import InputError
from deploykit.manifest import Manifest
from deploykit.models.loading import load_model
from deploykit.models.registry import get_spec, list_models
from deploykit.messages import Recorder
from deploykit.train import TrainConfig, find_head, fit, load_data, replace_head


@pytest.fixture
def one_thread():
    """Small models train far faster on one thread than on two contended ones; restore the setting after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def digits_val(tmp_path_factory) -> Path:
    """The held-out digits as an ImageFolder of PNGs (what `deploykit data digits --out` writes)."""
    root = tmp_path_factory.mktemp("digits") / "val"
    write_imagefolder(digits_split(Split.val), root)
    return root


@pytest.fixture(scope="session")
def three_digits(tmp_path_factory) -> Path:
    """A small 3-class ImageFolder (digits 0, 1, 2 from the train split), for fine-tuning."""
    items = digits_split(Split.train)
    root = tmp_path_factory.mktemp("three")
    from PIL import Image

    for i, label in enumerate(items.labels):
        if label < 3:
            (root / f"d{label}").mkdir(exist_ok=True)
            Image.fromarray(items.images[i]).save(root / f"d{label}" / f"{i}.png")
    return root


def _state(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


# -- the generic head replacement, across the whole zoo ---------------------------------------------------
@pytest.mark.parametrize("arch", list_models())
def test_replace_head_fits_every_zoo_architecture(arch):
    spec = get_spec(arch)
    model = spec.build_on_meta(1000)
    with torch.device("meta"):
        name = replace_head(model, 7)
    expected = {k: tuple(v.shape) for k, v in spec.build_on_meta(7).state_dict().items()}
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == expected
    assert name == find_head(model)[0]


@pytest.mark.parametrize("arch,size", [("lenet", 28), ("squeezenet1_1", 35)])
def test_replaced_head_produces_new_class_count(arch, size):
    spec = get_spec(arch)
    model = spec.build(num_classes=1000).eval()
    replace_head(model, 3)
    with torch.no_grad():
        assert model(torch.zeros(2, spec.channels, size, size)).shape == (2, 3)


# -- train -> export -> verify -> eval, end to end -------------------------------------------------------
def test_train_digits_export_verify_eval(cli, one_thread, digits_val, tmp_path):
    result = cli("train", "lenet", "--data", "digits", "--epochs", "2", "--seed", "3", "--threads", "1")
    assert result.exit_code == 0, result.output
    run = Path("runs/lenet")  # the default --out, relative to the test's folder
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics) >= {"best_val_acc", "epochs", "seconds", "history"}
    assert metrics["epochs"] == 2 and len(metrics["history"]) == 2
    assert isinstance(metrics["best_val_acc"], float) and metrics["seconds"] > 0
    assert metrics["best_val_acc"] == max(h["val_acc"] for h in metrics["history"])
    assert metrics["best_val_acc"] > 50.0  # 10 classes: chance is 10%

    ckpt = _state(run / "best.pth")  # self-describing and weights_only-loadable
    assert ckpt["arch"] == "lenet" and ckpt["num_classes"] == 10 and ckpt["class_names"] == [str(i) for i in range(10)]
    assert ckpt["input_shape"] == [1, 28, 28] and ckpt["best_val_acc"] == metrics["best_val_acc"]
    assert ckpt["train_args"]["seed"] == 3 and ckpt["train_args"]["data"] == "digits"
    loaded = load_model(run / "best.pth")
    assert loaded.kind == "deploykit" and loaded.preprocess.shape == (1, 28, 28)

    result = cli("export", run / "best.pth", "--out", "ex", "--data", "digits")  # no flags; the bundled name works
    assert result.exit_code == 0, result.output
    parity = Manifest.load(Path("ex")).artifacts[0]["parity"]
    assert parity["n_images"] == 360  # the whole held-out split, not a sample
    assert cli("verify", "ex", "--data", digits_val).exit_code == 0
    result = cli("verify", "ex", "--data", "digits", "--json")
    assert result.exit_code == 0, result.output
    (art,) = json.loads(result.stdout)["artifacts"]
    assert abs(art["metrics"]["accuracy"] - metrics["best_val_acc"]) < 0.3

    # eval on the checkpoint, the ONNX export and the bundled held-out split all see the same pixels
    accs = {}
    for model, data in ((run / "best.pth", digits_val), ("ex", digits_val), ("ex", "digits")):
        result = cli("eval", model, "--data", data, "--json")
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)  # the JSON alone on stdout, exactly the documented keys
        assert set(report) == {"top1", "top5", "n"}
        assert report["n"] == 360 and 0.0 <= report["top1"] <= report["top5"] <= 100.0
        accs[(str(model), str(data))] = report["top1"]
    assert all(abs(a - metrics["best_val_acc"]) < 0.3 for a in accs.values()), (accs, metrics["best_val_acc"])
    assert Path("ex/confusion.png").stat().st_size > 1000
    assert (run / "best.confusion.png").is_file()


def test_data_command_writes_the_held_out_split(cli):
    result = cli("data", "digits", "--split", "val", "--out", "held")
    assert result.exit_code == 0, result.output
    files = sorted(Path("held").rglob("*.png"))
    assert len(files) == 360 and {p.parent.name for p in files} == {str(i) for i in range(10)}
    assert cli("data", "digits", "--split", "train", "--out", "tr").exit_code == 0
    assert len(list(Path("tr").rglob("*.png"))) == 1797 - 360
    # no --split: both, as train/ and val/ -- the layout `train --data DIR` trains and validates on (issue 25)
    assert cli("data", "digits", "--out", "both").exit_code == 0
    assert len(list(Path("both/train").rglob("*.png"))) == 1797 - 360
    assert len(list(Path("both/val").rglob("*.png"))) == 360


# -- determinism and resume -------------------------------------------------------------------------------
def _weights(path: Path) -> dict:
    return _state(path)["state_dict"]


def test_cpu_training_is_deterministic_for_a_seed(one_thread):
    a = fit(TrainConfig("lenet", "digits", epochs=2, seed=5, out=Path("a"), device=None))
    b = fit(TrainConfig("lenet", "digits", epochs=2, seed=5, out=Path("b")))
    c = fit(TrainConfig("lenet", "digits", epochs=2, seed=6, out=Path("c")))
    wa, wb, wc = _weights(a.best_path), _weights(b.best_path), _weights(c.best_path)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert [h.val_loss for h in a.history] == [h.val_loss for h in b.history]
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)


def test_resume_continues_exactly(one_thread):
    whole = fit(TrainConfig("lenet", "digits", epochs=3, seed=1, out=Path("whole")))

    class Interrupted(Exception):
        pass

    class StopAfterTwo(Recorder):  # a reporter that is killed mid-run, like Ctrl-C after epoch 2
        def log(self, line: str) -> None:
            if line.startswith("epoch 2/3"):
                raise Interrupted

    with pytest.raises(Interrupted):
        fit(TrainConfig("lenet", "digits", epochs=3, seed=1, out=Path("cut")), reporter=StopAfterTwo())
    assert json.loads(Path("cut/metrics.json").read_text())["epochs"] == 2
    resumed = fit(TrainConfig("lenet", "digits", epochs=3, seed=1, out=Path("cut"), resume=True))
    assert resumed.epochs == 3 and [h.epoch for h in resumed.history] == [1, 2, 3]
    a, b = _state(Path("whole/last.pth"))["model"], _state(Path("cut/last.pth"))["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [h.val_acc for h in resumed.history] == [h.val_acc for h in whole.history]


# -- fine-tuning ------------------------------------------------------------------------------------------
def test_finetune_freeze_then_unfreeze(cli, one_thread, three_digits):
    assert cli("train", "lenet", "--data", "digits", "--epochs", "1", "--out", "base", "--threads", "1").exit_code == 0
    base = _weights(Path("base/best.pth"))

    result = cli("train", "lenet", "--data", three_digits, "--from", "base/best.pth", "--freeze-backbone",
                 "--epochs", "1", "--out", "head", "--threads", "1")
    assert result.exit_code == 0, result.output
    head = _weights(Path("head/best.pth"))
    assert head["classifier.5.weight"].shape == (3, 84)  # new 3-class head
    frozen = [k for k in base if not k.startswith("classifier.5.")]
    assert all(torch.equal(base[k], head[k]) for k in frozen)  # the backbone did not move
    assert load_model(Path("head/best.pth")).class_names == ["d0", "d1", "d2"]

    result = cli("train", "lenet", "--data", three_digits, "--from", "base/best.pth", "--freeze-backbone",
                 "--unfreeze-after", "1", "--epochs", "2", "--lr", "0.002", "--out", "all", "--threads", "1")
    assert result.exit_code == 0, result.output
    history = json.loads(Path("all/metrics.json").read_text())["history"]
    assert [h["trainable"] for h in history] == ["head", "all"]
    assert history[1]["lr"] <= 0.002 * 0.1 + 1e-12  # all layers at the lower rate
    last = _state(Path("all/last.pth"))["model"]
    assert not torch.equal(last["features.0.weight"], base["features.0.weight"])  # unfrozen layers trained


def test_finetune_torchvision_state_dict_keeps_frozen_batchnorm(one_thread, resnet18_sd, three_digits):
    result = fit(TrainConfig("resnet18", str(three_digits), epochs=1, img_size=32, from_ckpt=resnet18_sd,
                             freeze_backbone=True, out=Path("rn")))
    source = torch.load(resnet18_sd, weights_only=True)
    tuned = _weights(result.best_path)
    assert tuned["fc.weight"].shape == (3, 512)
    for key in ("conv1.weight", "bn1.running_mean", "bn1.running_var", "layer4.1.bn2.weight"):
        assert torch.equal(source[key], tuned[key]), key
    assert load_model(result.best_path).preprocess.shape == (3, 32, 32)


def test_from_a_different_architecture_is_refused(cli, resnet18_sd, three_digits):
    result = cli("train", "lenet", "--data", three_digits, "--from", resnet18_sd, "--epochs", "1")
    assert result.exit_code == 1
    assert "lenet" in result.output and "Traceback" not in result.output


# -- data sources -----------------------------------------------------------------------------------------
def test_imagefolder_split_is_stratified_and_seeded(three_digits):
    train, val = split_imagefolder(three_digits, val_split=0.25, seed=0)
    again, val_again = split_imagefolder(three_digits, val_split=0.25, seed=0)
    _, val_other = split_imagefolder(three_digits, val_split=0.25, seed=1)
    assert val.paths == val_again.paths and val.paths != val_other.paths
    assert not set(train.paths) & set(val.paths)
    counts = np.bincount(val.labels)
    totals = np.bincount(train.labels) + counts
    assert np.all(np.abs(counts - totals * 0.25) <= 1)


def test_train_and_val_subfolders_are_used_as_given(tmp_path, three_digits):
    root = tmp_path / "ds"
    shutil.copytree(three_digits, root / "train")
    (root / "val" / "d1").mkdir(parents=True)  # val may lack classes; labels follow train's class list
    first = sorted((three_digits / "d1").iterdir())[0]
    shutil.copy(first, root / "val" / "d1" / first.name)
    train, val = split_imagefolder(root, val_split=None, seed=0)
    assert val.class_names == train.class_names == ("d0", "d1", "d2") and val.labels == (1,)
    with pytest.raises(InputError, match="--val-split does not apply"):
        split_imagefolder(root, val_split=0.3, seed=0)


def test_balanced_sampler_draws_classes_evenly(tmp_path, three_digits):
    from deploykit.train.loop import Dist, epoch_sampler

    root = tmp_path / "skewed"
    for name, keep in (("d0", 100), ("d1", 10), ("d2", 10)):
        (root / name).mkdir(parents=True)
        for p in sorted((three_digits / name).iterdir())[:keep]:
            shutil.copy(p, root / name / p.name)
    for balanced, check in ((True, lambda share: np.all(share > 0.2)), (False, lambda share: share[0] > 0.7)):
        config = TrainConfig("lenet", str(root), val_split=0.1, balanced=balanced)
        data = load_data(config, get_spec("lenet"))
        labels = np.asarray(data.train_labels)
        drawn = np.concatenate([labels[list(epoch_sampler(data, config, Dist(), e))] for e in range(5)])
        share = np.bincount(drawn, minlength=3) / len(drawn)
        assert check(share), (balanced, share)


def _write_idx(path: Path, array: np.ndarray) -> None:
    dims = array.shape
    magic = (0x08 << 8) | len(dims)  # idx: 0, 0, type 0x08 (unsigned byte), number of dimensions
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def test_mnist_from_data_root_and_missing_files(cli, one_thread, tmp_path):
    from PIL import Image

    raw = tmp_path / "root" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for split, prefix in ((Split.train, "train"), (Split.val, "t10k")):  # real digits in MNIST's idx format
        items = digits_split(split)
        images = np.stack([np.asarray(Image.fromarray(im).resize((28, 28))) for im in items.images[:200]])
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.asarray(items.labels[:200]))
    loaded = bundled_split(Bundled.mnist, Split.val, data_root=tmp_path / "root")
    assert len(loaded) == 200 and loaded.class_names[0].startswith("0")
    result = cli("train", "lenet", "--data", "mnist", "--data-root", tmp_path / "root", "--epochs", "1",
                 "--out", "mn", "--threads", "1")
    assert result.exit_code == 0, result.output
    assert json.loads(Path("mn/metrics.json").read_text())["val_images"] == 200

    result = cli("train", "lenet", "--data", "fashionmnist", "--data-root", tmp_path / "root", "--epochs", "1")
    assert result.exit_code == 1 and "FashionMNIST/raw" in result.output and "never downloads" in result.output


@pytest.mark.parametrize("args,message", [
    (["--data", "digits", "--freeze-backbone"], "--from"),
    (["--data", "digits", "--val-split", "0.3"], "--val-split does not apply"),
    (["--data", "no_such_folder"], "not found"),
    (["--data", "digits", "--resume"], "--resume"),
    (["--data", "digits", "--epochs", "0"], "--epochs"),
    (["--data", "mnist"], "--data-root"),
    (["--data", "digits", "--amp", "--device", "cpu"], "--amp"),
])
def test_user_mistakes_are_one_line_errors(cli, args, message):
    result = cli("train", "lenet", *args)
    assert result.exit_code == 1, result.output
    assert message in result.output and "Traceback" not in result.output


def test_img_size_below_the_architecture_minimum_is_one_line(cli):
    result = cli("train", "squeezenet1_1", "--data", "digits", "--img-size", "8")
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert "--img-size 8 is below the smallest input squeezenet1_1 accepts (35x35)" in result.output


def test_from_a_missing_checkpoint_creates_no_out_folder(cli):
    result = cli("train", "lenet", "--data", "digits", "--from", "missing.pth", "--out", "never")
    assert result.exit_code == 1 and "not found" in result.output, result.output
    assert not Path("never").exists()


def test_bundled_digits_calibrate_on_the_train_split():
    from deploykit.precision.calibrate import calibration_images

    images = calibration_images(Path("digits"), size=32, min_images=8)
    assert len(images) == 32 and images.labels is not None and "train split" in images.source
    assert all(p.suffix == ".png" and p.is_file() for p in images.paths)


def test_flat_folder_cannot_be_trained_on(cli, photos):
    result = cli("train", "lenet", "--data", photos, "--epochs", "1")
    assert result.exit_code == 1 and "class subfolders" in result.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a host without CUDA")
def test_cuda_without_a_gpu_is_a_missing_dependency(cli):
    result = cli("train", "lenet", "--data", "digits", "--device", "cuda", "--epochs", "1")
    assert result.exit_code == 3 and "--device cpu" in result.output


def test_eval_rejects_unknown_classes_and_unlabelled_folders(cli, one_thread, three_digits, photos):
    assert cli("train", "lenet", "--data", "digits", "--epochs", "1", "--out", "m", "--threads", "1").exit_code == 0
    result = cli("eval", "m/best.pth", "--data", three_digits)  # folders d0/d1/d2 are not the model's 0..9
    assert result.exit_code == 1 and "does not know" in result.output
    result = cli("eval", "m/best.pth", "--data", photos)
    assert result.exit_code == 1 and "not labelled" in result.output


# -- torchrun: DistributedDataParallel on CPU (gloo) -----------------------------------------------------
@pytest.mark.slow
def test_torchrun_ddp_on_cpu_through_both_fine_tuning_phases(one_thread, tmp_path, three_digits):
    """torchrun, 2 CPU processes (gloo): head-only then all layers, so DDP is re-wrapped for the new parameters."""
    base = fit(TrainConfig("lenet", "digits", epochs=1, out=tmp_path / "base")).best_path
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "deploykit",
           "train", "lenet", "--data", str(three_digits), "--from", str(base), "--freeze-backbone",
           "--unfreeze-after", "1", "--epochs", "2", "--batch-size", "16", "--lr", "0.01", "--device", "cpu",
           "--out", str(tmp_path / "ddp")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=180)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    metrics = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert [h["trainable"] for h in metrics["history"]] == ["head", "all"]
    assert metrics["best_val_acc"] > 50.0  # 3 classes
    assert proc.stdout.count("best val_acc") == 1  # rank 0 reports, once
    loaded = load_model(tmp_path / "ddp" / "best.pth")
    assert loaded.num_classes == 3 and loaded.class_names == ["d0", "d1", "d2"]
