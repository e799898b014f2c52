"""Every way users hand us a model: each loads, and each mistake gets a one-line reason."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch
import torchvision

from deploykit.errors import CheckpointError, InputError
from deploykit.models import get_spec
from deploykit.models.checkpoint import detect_kind, save_checkpoint
from deploykit.models.loading import LoadOptions, load_model


def _same_outputs(a, b, shape=(3, 32, 32)) -> None:
    x = torch.randn(2, *shape)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b(x))


def test_bare_state_dict_infers_arch_and_classes(resnet18_sd: Path):
    loaded = load_model(resnet18_sd)
    assert (loaded.kind, loaded.arch, loaded.num_classes) == ("state_dict", "resnet18", 5)
    assert loaded.preprocess.shape == (3, 224, 224)
    assert any("inferred architecture resnet18" in n for n in loaded.notes)


@pytest.mark.parametrize("arch,classes", [("vgg11_bn", 3), ("mobilenet_v3_small", 11), ("densenet121", 2),
                                          ("squeezenet1_1", 4), ("resnext50_32x4d", 6), ("wide_resnet50_2", 6),
                                          ("efficientnet_b1", 9), ("lenet", 10)])
def test_inference_tells_close_architectures_apart(tmp_path, arch, classes):
    torch.manual_seed(0)
    model = get_spec(arch).build(num_classes=classes)
    torch.save(model.state_dict(), tmp_path / "w.pth")
    loaded = load_model(tmp_path / "w.pth")
    assert (loaded.arch, loaded.num_classes) == (arch, classes)


def test_wrapped_and_prefixed_state_dicts(tmp_path):
    model = torchvision.models.resnet18(num_classes=3)
    wrapped = {"epoch": 7, "optimizer": {}, "state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}
    torch.save(wrapped, tmp_path / "ddp.pth")
    loaded = load_model(tmp_path / "ddp.pth")
    assert (loaded.arch, loaded.num_classes) == ("resnet18", 3)
    _same_outputs(model.eval(), loaded.module)


def test_googlenet_trained_with_aux_heads(tmp_path):
    model = torchvision.models.googlenet(num_classes=4, aux_logits=True, init_weights=True)
    torch.save(model.state_dict(), tmp_path / "g.pth")
    loaded = load_model(tmp_path / "g.pth")
    assert (loaded.arch, loaded.num_classes) == ("googlenet", 4)


def test_explicit_arch_and_mismatch_lists_keys(resnet18_sd):
    loaded = load_model(resnet18_sd, LoadOptions(arch="resnet18"))
    assert loaded.num_classes == 5
    with pytest.raises(CheckpointError) as err:
        load_model(resnet18_sd, LoadOptions(arch="resnet50"))
    message = str(err.value)
    assert "does not fit resnet50" in message and "mis-shaped" in message and "closest" in message
    assert "\n" not in message
    with pytest.raises(CheckpointError, match="resnet18 with 9 classes"):
        load_model(resnet18_sd, LoadOptions(arch="resnet18", num_classes=9))


class Tiny(torch.nn.Module):
    def __init__(self, num_classes=5, width=8):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Conv2d(3, width, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                        torch.nn.Flatten())
        self.head = torch.nn.Linear(width, num_classes)

    def forward(self, x):
        return self.head(self.body(x))


MODEL_PY = textwrap.dedent('''
    import torch

    class Tiny(torch.nn.Module):
        def __init__(self, num_classes=5, width=8):
            super().__init__()
            self.body = torch.nn.Sequential(torch.nn.Conv2d(3, width, 3), torch.nn.ReLU(),
                                            torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
            self.head = torch.nn.Linear(width, num_classes)

        def forward(self, x):
            return self.head(self.body(x))

    def build(num_classes=5, width=8):
        return Tiny(num_classes, width)
''')


def test_unknown_state_dict_needs_model_def(tmp_path):
    torch.save(Tiny(num_classes=5).state_dict(), tmp_path / "tiny.pth")
    with pytest.raises(CheckpointError, match="--model-def"):
        load_model(tmp_path / "tiny.pth")
    (tmp_path / "model.py").write_text(MODEL_PY)
    loaded = load_model(tmp_path / "tiny.pth", LoadOptions(model_def=f"{tmp_path / 'model.py'}:build",
                                                           model_kwargs={"num_classes": 5},
                                                           input_shape=(3, 32, 32)))
    assert (loaded.kind, loaded.num_classes, loaded.preprocess.shape) == ("model-def", 5, (3, 32, 32))
    with pytest.raises(CheckpointError, match="mis-shaped 2: head.weight"):
        load_model(tmp_path / "tiny.pth", LoadOptions(model_def=f"{tmp_path / 'model.py'}:build",
                                                      model_kwargs={"num_classes": 3}))
    with pytest.raises(InputError, match="no callable 'nope'"):
        load_model(tmp_path / "tiny.pth", LoadOptions(model_def=f"{tmp_path / 'model.py'}:nope"))
    with pytest.raises(InputError, match="path/to/model.py:factory"):
        load_model(tmp_path / "tiny.pth", LoadOptions(model_def="model.py"))


def test_pickled_module_needs_explicit_flag(tmp_path):
    model = torchvision.models.resnet18(num_classes=3).eval()
    torch.save(model, tmp_path / "whole.pth")
    with pytest.raises(CheckpointError, match="--allow-pickle"):
        load_model(tmp_path / "whole.pth")
    loaded = load_model(tmp_path / "whole.pth", LoadOptions(allow_pickle=True))
    assert (loaded.kind, loaded.num_classes) == ("pickled-module", 3)
    _same_outputs(model, loaded.module)


def test_torchscript_and_exported_program(tmp_path):
    model = torchvision.models.resnet18(num_classes=4).eval()
    example = torch.randn(1, 3, 64, 64)
    torch.jit.trace(model, example).save(str(tmp_path / "m.ts"))
    torch.export.save(torch.export.export(model, (example,)), str(tmp_path / "m.pt2"))
    assert detect_kind(tmp_path / "m.ts") == "torchscript"
    assert detect_kind(tmp_path / "m.pt2") == "exported-program"
    with pytest.raises(CheckpointError, match="--trust-code"):  # both are code: only with the user's consent
        load_model(tmp_path / "m.ts", LoadOptions(input_shape=(3, 64, 64)))
    with pytest.raises(CheckpointError, match="--trust-code"):
        load_model(tmp_path / "m.pt2")
    script = load_model(tmp_path / "m.ts", LoadOptions(input_shape=(3, 64, 64), allow_pickle=True))
    program = load_model(tmp_path / "m.pt2", LoadOptions(allow_pickle=True))
    assert script.num_classes == program.num_classes == 4
    assert program.preprocess.shape == (3, 64, 64)  # read from the program itself
    _same_outputs(model, script.module, (3, 64, 64))


def test_deploykit_checkpoint_round_trip(tmp_path):
    spec = get_spec("lenet")
    model = spec.build(num_classes=3)
    save_checkpoint(tmp_path / "best.pth", model, arch="lenet", num_classes=3, preprocess=spec.preprocess(),
                    class_names=["a", "b", "c"], best_val_acc=0.5)
    raw = torch.load(tmp_path / "best.pth", weights_only=True)  # no code runs to read it
    assert raw["arch"] == "lenet"
    loaded = load_model(tmp_path / "best.pth")
    assert (loaded.kind, loaded.arch, loaded.class_names) == ("deploykit", "lenet", ["a", "b", "c"])
    assert loaded.preprocess.shape == (1, 28, 28)
    _same_outputs(model.eval(), loaded.module, (1, 28, 28))


def test_lenet_input_shape_override(tmp_path):
    torch.save(get_spec("lenet").build(num_classes=10).state_dict(), tmp_path / "lenet.pth")
    loaded = load_model(tmp_path / "lenet.pth", LoadOptions(input_shape=(1, 32, 32), mean=(0.5,), std=(0.5,)))
    assert loaded.preprocess.shape == (1, 32, 32) and loaded.preprocess.mean == (0.5,)


@pytest.mark.parametrize("content,match", [(b"", "empty"), (b"garbage bytes, not a checkpoint", "corrupt")])
def test_corrupt_files(tmp_path, content, match):
    (tmp_path / "bad.pth").write_bytes(content)
    with pytest.raises(CheckpointError, match=match):
        load_model(tmp_path / "bad.pth")


def test_truncated_checkpoint(tmp_path, resnet18_sd):
    data = resnet18_sd.read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_model(tmp_path / "cut.pth")


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_model(tmp_path / "nope.pth")
    with pytest.raises(InputError, match="is a folder"):
        load_model(tmp_path)


def test_safetensors_state_dict(tmp_path):
    from safetensors.torch import save_file

    model = torchvision.models.mobilenet_v2(num_classes=6).eval()
    save_file(model.state_dict(), str(tmp_path / "m.safetensors"))
    assert detect_kind(tmp_path / "m.safetensors") == "safetensors"
    loaded = load_model(tmp_path / "m.safetensors")
    assert (loaded.kind, loaded.arch, loaded.num_classes) == ("safetensors", "mobilenet_v2", 6)
    _same_outputs(model, loaded.module)
