"""Loading keeps what torch.save(model.state_dict()) keeps: _metadata (MNASNet's version), buffers, prefixes."""

from __future__ import annotations

import pytest
import torch
import torchvision

from deploykit.models.loading import LoadOptions, load_model


def _same(a, b, size=64) -> None:
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(a.eval()(x), b(x))


@pytest.fixture(scope="module")
def mnasnet():
    torch.manual_seed(0)
    return torchvision.models.mnasnet0_5(num_classes=7).eval()


@pytest.mark.parametrize("wrap", ["bare", "wrapped", "dataparallel", "safetensors", "model-def"])
def test_mnasnet_loads_with_its_metadata(mnasnet, tmp_path, wrap):
    """MNASNet's _load_from_state_dict reads its version from _metadata: lost, it raised a ValueError traceback."""
    state = mnasnet.state_dict()
    options = LoadOptions()
    path = tmp_path / "m.pth"
    if wrap == "bare":
        torch.save(state, path)
    elif wrap == "wrapped":
        torch.save({"epoch": 3, "state_dict": state}, path)
    elif wrap == "dataparallel":  # module.-prefixed keys and metadata
        torch.save({"model": torch.nn.DataParallel(mnasnet).state_dict()}, path)
    elif wrap == "safetensors":  # no _metadata in the file at all: the model's own versions are used
        from safetensors.torch import save_file

        path = tmp_path / "m.safetensors"
        save_file(dict(state), str(path))
    else:
        (tmp_path / "defs.py").write_text("import torchvision\n"
                                          "def make(): return torchvision.models.mnasnet0_5(num_classes=7)\n")
        torch.save(state, path)
        options = LoadOptions(model_def=f"{tmp_path / 'defs.py'}:make")
    loaded = load_model(path, options)
    if wrap != "model-def":
        assert (loaded.arch, loaded.num_classes) == ("mnasnet0_5", 7)
    _same(mnasnet, loaded.module)


def test_metadata_follows_stripped_prefixes(mnasnet):
    from deploykit.models.checkpoint import find_state_dict, strip_prefixes

    state = torch.nn.DataParallel(mnasnet).state_dict()
    stripped = strip_prefixes(find_state_dict({"model": state}))
    assert list(stripped) == list(mnasnet.state_dict())
    assert stripped._metadata == mnasnet.state_dict()._metadata


def test_checkpoint_without_num_batches_tracked_loads(tmp_path):
    """Checkpoints from before BatchNorm had num_batches_tracked (and without _metadata) still load."""
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=3).eval()
    torch.save({k: v for k, v in model.state_dict().items() if "num_batches_tracked" not in k}, tmp_path / "old.pth")
    loaded = load_model(tmp_path / "old.pth")
    assert (loaded.arch, loaded.num_classes) == ("resnet18", 3)
    _same(model, loaded.module)


def test_inception_with_aux_head_keeps_metadata(tmp_path):
    torch.manual_seed(0)
    model = torchvision.models.inception_v3(num_classes=5, aux_logits=True, init_weights=True).eval()
    torch.save(model.state_dict(), tmp_path / "i.pth")
    loaded = load_model(tmp_path / "i.pth")
    assert (loaded.arch, loaded.num_classes) == ("inception_v3", 5)
    model.aux_logits, model.AuxLogits = False, None
    _same(model, loaded.module, size=80)
