"""unet_fast.save_model / load_model: model files, and PyTorch state_dicts read without unpickling code."""
import os
import pickle

import numpy as np
import pytest
import torch

import unet_fast
from unet_fast import reference
from unet_fast.model_file import read_model_config
from unet_fast.normalization import Normalization


def _tiny(**kw):
    torch.manual_seed(0)
    return unet_fast.UNet(in_channels=2, num_classes=3, depth=3, base_channels=4, **kw)


def test_save_and_load_model_round_trip(tmp_path):
    model = _tiny()
    norm = Normalization(mode="fixed", low=0, high=1000)
    path = unet_fast.save_model(model, tmp_path / "m.safetensors", normalization=norm,
                                class_names=["bg", "cell", "edge"], epochs=3)
    assert os.listdir(tmp_path) == ["m.safetensors"]
    config = read_model_config(path)
    assert config["architecture"]["depth"] == 3 and config["unet_fast_version"] == unet_fast.__version__
    loaded = unet_fast.load_model(path)
    assert loaded.normalization == norm and loaded.class_names == ["bg", "cell", "edge"]
    assert loaded.metadata == {"epochs": 3} and not loaded.training
    x = torch.randn(1, 2, 52, 52)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_reference_model_loads_as_unet_fast_unet(tmp_path):
    """A file saved from the oracle loads as unet_fast.UNet (the fused kernels), with the same weights."""
    torch.manual_seed(0)
    model = reference.UNet(depth=2, base_channels=2, padding="same")
    loaded = unet_fast.load_model(unet_fast.save_model(model, tmp_path / "r.safetensors"))
    assert type(loaded) is unet_fast.UNet and loaded.padding == "same" and loaded.backend == "auto"
    x = torch.randn(1, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert unet_fast.load_model(tmp_path / "r.safetensors", backend="torch").backend == "torch"


def test_save_model_validates(tmp_path):
    with pytest.raises(ValueError, match=".safetensors"):
        unet_fast.save_model(_tiny(), tmp_path / "m.bin")
    with pytest.raises(ValueError, match="class_names has 1 names"):
        unet_fast.save_model(_tiny(), tmp_path / "m.safetensors", class_names=["a"])
    with pytest.raises(TypeError, match="JSON"):
        unet_fast.save_model(_tiny(), tmp_path / "m.safetensors", when=object())
    assert not list(tmp_path.iterdir())


class _Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {_Exploit.marker}",))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    _Exploit.marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"encoder.0.conv1.weight": _Exploit()}, f)
    with pytest.raises(pickle.UnpicklingError):
        unet_fast.load_model(path)
    torch.save({"x": _Exploit()}, tmp_path / "evil2.pt")
    with pytest.raises(pickle.UnpicklingError):
        unet_fast.load_model(tmp_path / "evil2.pt")
    assert not _Exploit.marker.exists()


def test_plain_state_dict_pt_loads(tmp_path):
    model = _tiny()
    torch.save(model.state_dict(), tmp_path / "w.pt")
    loaded = unet_fast.load_model(tmp_path / "w.pt")
    assert type(loaded) is unet_fast.UNet and loaded.config()["in_channels"] == 2 and loaded.depth == 3


@pytest.mark.parametrize("wrap", [
    lambda s: {"state_dict": s, "epoch": 7},
    lambda s: {"model": s, "optimizer": {"state": {}, "param_groups": []}},
    lambda s: {"model_state_dict": s, "optimizer_state_dict": {}, "loss": 0.25},
    lambda s: {f"module.{k}": v for k, v in s.items()},                            # DDP
    lambda s: {f"_orig_mod.{k}": v for k, v in s.items()},                         # torch.compile
    lambda s: {"state_dict": {f"module._orig_mod.{k}": v for k, v in s.items()}},  # both, in a checkpoint
], ids=["state_dict", "model", "model_state_dict", "module.", "_orig_mod.", "nested"])
def test_wrapped_state_dict_pt_loads(tmp_path, wrap):
    model = _tiny()
    torch.save(wrap(model.state_dict()), tmp_path / "w.pt")
    loaded = unet_fast.load_model(tmp_path / "w.pt")
    assert loaded.depth == 3
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_unrecognised_pt_names_its_keys(tmp_path):
    torch.save({"epoch": 3, "weights": _tiny().state_dict()}, tmp_path / "w.pt")
    with pytest.raises(ValueError, match=r"top-level keys \['epoch', 'weights'\].*'state_dict'"):
        unet_fast.load_model(tmp_path / "w.pt")
    torch.save([torch.zeros(1)], tmp_path / "l.pt")
    with pytest.raises(ValueError, match="found a list; expected a state_dict"):
        unet_fast.load_model(tmp_path / "l.pt")


def test_checkpoint_with_non_tensor_objects_is_refused_with_the_way_out(tmp_path):
    """A training checkpoint holding a numpy scalar cannot load weights_only: say so, and what to do instead."""
    torch.save({"state_dict": _tiny().state_dict(), "best_score": np.float64(0.5)}, tmp_path / "c.pt")
    with pytest.raises(pickle.UnpicklingError, match=r"c\.pt: refused.*Unsupported global.*numpy.*save its weights"):
        unet_fast.load_model(tmp_path / "c.pt")


def test_a_training_checkpoint_given_as_a_model_is_named_as_one(tmp_path):
    """segment -m work/last.safetensors said "not a unet_fast model file ... write it with save_model"."""
    from unet_fast.checkpoint import save_checkpoint
    from unet_fast.model_file import ModelFileError

    model = unet_fast.UNet(depth=2, base_channels=4)
    path = save_checkpoint(tmp_path / "last.safetensors", model, torch.optim.SGD(model.parameters(), lr=0.1), epoch=1)
    with pytest.raises(ModelFileError, match="a training checkpoint of unet-fast train .* best.safetensors"):
        unet_fast.load_model(path)


def test_a_torchscript_export_given_as_a_model_is_named_as_one_without_weights_only_false(tmp_path):
    """load_model (segment -m, the napari widget) of what `unet-fast export --format torchscript` writes showed
    torch's advice that weights_only=False "will likely succeed": that would run the file's code."""
    from unet_fast.export import export_torchscript
    from unet_fast.model_file import ModelFileError

    path = export_torchscript(unet_fast.UNet(depth=2, base_channels=2), tmp_path / "model.pt")
    with pytest.raises(ModelFileError) as caught:
        unet_fast.load_model(path)
    message = str(caught.value)
    assert "TorchScript export" in message and ".safetensors model files" in message and "state_dict" in message
    assert "weights_only" not in message
    with open(path, "rb") as f:   # a package's weights come as a file object: the same error, the position kept
        f.seek(0)
        with pytest.raises(ModelFileError, match="TorchScript export"):
            unet_fast.model_file.load_weights_only(f, path)
        assert f.tell() == 0


@pytest.mark.parametrize("wrap", [torch.compile, torch.nn.DataParallel, lambda m: torch.nn.DataParallel(torch.compile(m))],
                         ids=["compile", "DataParallel", "both"])
def test_save_model_of_a_wrapped_model_writes_the_network(tmp_path, wrap):
    """save_model(torch.compile(model)) wrote '_orig_mod.'-prefixed names, a file load_model then refused;
    save_model(DataParallel(model)) raised that the model has no config()."""
    model = _tiny()
    loaded = unet_fast.load_model(unet_fast.save_model(wrap(model), tmp_path / "m.safetensors"))
    assert loaded.config() == model.config()
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_a_pt_file_of_meta_tensors_is_refused_by_name(tmp_path):
    """A state_dict of a model built on the 'meta' device gave "Tensor.item() cannot be called on meta tensors"."""
    from unet_fast.model_file import ModelFileError

    torch.save({k: torch.empty_like(v, device="meta") for k, v in _tiny().state_dict().items()}, tmp_path / "w.pt")
    with pytest.raises(ModelFileError, match=r"w\.pt: tensor encoder\.0\.conv1\.weight is a meta tensor"):
        unet_fast.load_model(tmp_path / "w.pt")
