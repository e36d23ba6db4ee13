"""unet_fast.io (reading, normalisation, atomic and streaming writes) and model files."""
import os
import pickle

import numpy as np
import pytest
import tifffile
import torch

import unet_fast
from unet_fast import io, reference
from unet_fast.io import Normalization
from unet_fast.model_file import read_model_config
from optional_deps import needs_zarr


# ----------------------------------------------------------------------------- normalisation

def test_percentile_normalization_maps_percentiles_to_0_and_1():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 4096, (2, 64, 80)).astype(np.uint16)
    image[1] //= 16
    norm = Normalization(mode="percentile", low=1.0, high=99.0)
    out = norm(image, channel_axis=0)
    assert out.dtype == np.float32
    for c in range(2):
        lo, hi = np.percentile(image[c], [1.0, 99.0])
        np.testing.assert_allclose(out[c], (image[c] - lo) / (hi - lo), rtol=1e-5, atol=1e-5)


def test_percentile_statistics_on_a_subsample_are_close():
    rng = np.random.default_rng(1)
    image = rng.normal(100, 10, (300, 400)).astype(np.float32)
    exact = Normalization(sample_pixels=10 ** 9).statistics(image)
    sampled = Normalization(sample_pixels=5000).statistics(image)
    np.testing.assert_allclose(sampled[0], exact[0], rtol=0.02)


@pytest.mark.parametrize("dtype, top", [(np.uint8, 255), (np.uint16, 65535)])
def test_dtype_and_fixed_normalization(dtype, top):
    image = np.array([[0, 1], [top // 2, top]], dtype=dtype)
    np.testing.assert_allclose(Normalization(mode="dtype")(image), image / top, rtol=1e-6)
    fixed = Normalization(mode="fixed", low=1, high=top, clip=True)(image)
    np.testing.assert_allclose(fixed, np.clip((image.astype(np.float64) - 1) / (top - 1), 0, 1), rtol=1e-6)


def test_normalization_round_trips_and_validates():
    norm = Normalization(mode="fixed", low=0, high=4095, clip=True)
    assert Normalization.from_dict(norm.to_dict()) == norm
    with pytest.raises(ValueError, match="mode"):
        Normalization(mode="zscore")
    with pytest.raises(ValueError, match="high > low"):
        Normalization(mode="fixed", low=5, high=5)
    with pytest.raises(ValueError, match="unknown Normalization fields"):
        Normalization.from_dict({"mode": "none", "gain": 2})


# ----------------------------------------------------------------------------- reading

def test_tiff_multipage_bigtiff_is_read_lazily(tmp_path):
    zarr = pytest.importorskip("zarr")
    rng = np.random.default_rng(2)
    stack = rng.integers(0, 65535, (3, 100, 130)).astype(np.uint16)
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, stack, bigtiff=True, tile=(32, 32), photometric="minisblack")
    array, info = io.read_image(path)
    assert isinstance(array, zarr.Array)
    assert info.shape == (3, 100, 130) and info.axes == "QYX" and info.dtype == np.uint16 and info.streamable
    np.testing.assert_array_equal(array[1, 10:50, 20:33], stack[1, 10:50, 20:33])


@needs_zarr
def test_ome_tiff_and_rgb_samples_come_channels_first(tmp_path):
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 255, (40, 50, 3)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "rgb.ome.tif", rgb, photometric="rgb", ome=True)
    array, info = io.read_image(tmp_path / "rgb.ome.tif")
    assert info.axes == "CYX" and array.shape == (3, 40, 50)
    np.testing.assert_array_equal(np.asarray(array[:, 5:9, 7:20]), np.moveaxis(rgb, -1, 0)[:, 5:9, 7:20])
    np.testing.assert_array_equal(array[2], rgb[..., 2])


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_png_jpeg(tmp_path, suffix):
    image = (np.arange(30 * 20) % 251).astype(np.uint8).reshape(30, 20)
    io.write_image(tmp_path / f"a{suffix}", image)
    array, info = io.read_image(tmp_path / f"a{suffix}")
    assert info.shape == (30, 20) and array.shape == (30, 20)
    if suffix == ".png":
        np.testing.assert_array_equal(array, image)


def test_pixel_limit_is_checked_before_decoding(tmp_path):
    path = tmp_path / "big.png"
    io.write_image(path, np.zeros((200, 300), np.uint8))
    with pytest.raises(io.ImageTooLargeError, match="60000 pixels"):
        io.read_image(path, max_pixels=1000)
    # A TIFF in small strips can be streamed, so the limit does not apply to it.
    pytest.importorskip("zarr")  # (streamed: read lazily, through zarr)
    tifffile.imwrite(tmp_path / "big.tif", np.zeros((200, 300), np.uint8), rowsperstrip=8)
    io.read_image(tmp_path / "big.tif", max_pixels=1000)


def test_unsupported_and_corrupt_files(tmp_path):
    (tmp_path / "x.bmp").write_bytes(b"BM")
    with pytest.raises(ValueError, match="unsupported image type"):
        io.read_image(tmp_path / "x.bmp")
    (tmp_path / "bad.tif").write_bytes(b"II*\x00garbage")
    with pytest.raises(Exception):
        io.read_image(tmp_path / "bad.tif")


# ----------------------------------------------------------------------------- writing

def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.tif"
    with pytest.raises(RuntimeError):
        with io.atomic_path(target) as temporary:
            temporary.write_bytes(b"half")
            raise RuntimeError("interrupted")
    assert os.listdir(tmp_path) == []
    with io.atomic_path(target) as temporary:
        temporary.write_bytes(b"whole")
        assert not target.exists()
    assert target.read_bytes() == b"whole" and os.listdir(tmp_path) == ["out.tif"]


@pytest.mark.parametrize("suffix", [".tif", ".zarr"])
@pytest.mark.parametrize("shape, channels", [((300, 517), False), ((2, 130, 70), False),
                                              ((3, 260, 300), True), ((2, 2, 130, 70), True)])
def test_streaming_writers_accept_blocks_in_tile_order(tmp_path, suffix, shape, channels):
    if suffix == ".zarr":
        pytest.importorskip("zarr")
    rng = np.random.default_rng(4)
    image = rng.integers(0, 255, shape).astype(np.uint8)
    writer = io.open_streaming_writer(tmp_path / f"o{suffix}", shape, np.uint8, channels=channels)
    planes = shape[0] if len(shape) - channels == 3 else 1
    for p in range(planes):
        plane = image[p] if planes > 1 or len(shape) - channels == 3 else image
        for y in range(0, shape[-2], 100):
            for x in range(0, shape[-1], 90):
                writer.write(p, y, x, plane[..., y:y + 100, x:x + 90])
        assert not (tmp_path / f"o{suffix}").exists()
    writer.close()
    if suffix == ".tif":
        back = tifffile.imread(tmp_path / "o.tif")
        back = np.moveaxis(back, -1, -3) if channels else back
    else:
        back = __import__("zarr").open_group(str(tmp_path / "o.zarr"), mode="r")["0"][...]
    np.testing.assert_array_equal(back, image)
    assert sorted(os.listdir(tmp_path)) == [f"o{suffix}"]


def test_streaming_writer_refuses_an_incomplete_image(tmp_path):
    writer = io.open_streaming_writer(tmp_path / "o.tif", (64, 64), np.uint8)
    writer.write(0, 0, 0, np.ones((32, 64), np.uint8))
    with pytest.raises(RuntimeError, match="before every pixel"):
        writer.close()
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------- model files

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


def test_reference_model_round_trips(tmp_path):
    torch.manual_seed(0)
    model = reference.UNet(depth=2, base_channels=2, padding="same")
    loaded = unet_fast.load_model(unet_fast.save_model(model, tmp_path / "r.safetensors"))
    assert type(loaded) is reference.UNet and loaded.padding == "same"


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
    assert loaded.config()["in_channels"] == 2 and loaded.depth == 3


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
