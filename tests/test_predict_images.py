"""predict_images: many images of one shape through shared batches, each result equal to predict_tiled's."""
import numpy as np
import pytest
import tifffile
import torch

import unet_fast
from unet_fast import checks
from unet_fast.inference import NonFiniteOutputError, predict_images, predict_tiled
from unet_fast.normalization import NonFiniteInputError
from unet_fast.instances import InstanceOptions
from unet_fast.pixel_size import PixelSize, read_pixel_size
from unet_fast.sinks import read_provenance


def _model(in_channels=1, num_classes=2, padding="valid"):
    torch.manual_seed(0)
    return unet_fast.UNet(in_channels=in_channels, num_classes=num_classes, depth=2, base_channels=4,
                          padding=padding).eval()


def _images(count, shape, seed=0):
    """Integer images of very different ranges: each must be normalised with its own statistics."""
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 50 + 400 * i, shape).astype(np.uint16) for i in range(count)]


@pytest.mark.parametrize("output", ["labels", "probabilities", "logits", "instances"])
@pytest.mark.parametrize("padding", ["valid", "same"])
def test_each_result_is_predict_tiled_on_that_image(output, padding):
    model = _model(padding=padding)
    images = _images(3, (37, 45))
    images[1] = np.ascontiguousarray(np.pad(images[1], 1))[1:-1, 1:-1]     # a strided view
    images[2] = np.asfortranarray(images[2])                           # not C-contiguous
    got = predict_images(model, images, output=output, tile_size=28 if padding == "valid" else 24, progress=False)
    for image, result in zip(images, got):
        _assert_same(result, predict_tiled(model, image, output=output, progress=False))


def _assert_same(result, expected):
    """Labels exactly; floats to the last bits, which depend on how the tiles are batched."""
    assert result.dtype == expected.dtype and result.shape == expected.shape
    if result.dtype.kind == "f":
        np.testing.assert_allclose(result, expected, rtol=1e-5, atol=1e-6)
    else:
        np.testing.assert_array_equal(result, expected)


def test_tiles_of_several_images_in_one_batch():
    model = _model()
    images = _images(5, (41, 38), seed=2)
    for output in ("labels", "probabilities"):
        got = predict_images(model, images, output=output, batch_size=4, tile_size=28, progress=False)
        for image, result in zip(images, got):
            _assert_same(result, predict_tiled(model, image, output=output, progress=False))


def test_multichannel_scale_tta_and_instance_rules():
    model = _model(in_channels=2)
    images = [np.random.default_rng(i).normal(10 * i, 1 + i, (2, 33, 29)).astype(np.float32) for i in range(3)]
    for kwargs in ({"scale": 0.7}, {"tta": True}, {"output": "instances",
                                                  "instance_options": InstanceOptions(threshold=0.4, min_size=3)}):
        got = predict_images(model, images, progress=False, **kwargs)
        for image, result in zip(images, got):
            _assert_same(result, predict_tiled(model, image, progress=False, **kwargs))


def test_files_with_their_own_pixel_sizes_and_provenance(tmp_path):
    model = _model()
    images = _images(2, (30, 31))
    sizes = [PixelSize(0.5, 0.5), PixelSize(0.25, 0.25)]
    outs = [tmp_path / "a.tif", tmp_path / "b.ome.zarr"]
    pytest.importorskip("zarr")
    got = predict_images(model, images, outs=outs, pixel_sizes=sizes, output="instances", provenance={"run": 1},
                         progress=False)
    assert got == outs
    for image, out, size in zip(images, outs, sizes):
        expected = predict_tiled(model, image, output="instances", progress=False)
        if out.suffix == ".tif":
            written = tifffile.imread(out)
        else:
            import zarr
            written = zarr.open_group(str(out), mode="r")["0"][...]
        np.testing.assert_array_equal(written, expected)
        assert read_pixel_size(out).y == size.y and read_provenance(out) == {"run": 1}
    arrays = [np.zeros((30, 31), np.uint8), np.zeros((30, 31), np.uint8)]
    assert predict_images(model, images, outs=arrays, progress=False) == arrays
    np.testing.assert_array_equal(arrays[1], predict_tiled(model, images[1], progress=False))


def test_bad_inputs_are_named(tmp_path):
    model = _model()
    images = _images(2, (30, 31))
    assert predict_images(model, [], progress=False) == []
    with pytest.raises(ValueError, match=r"images\[1\] has shape \(30, 32\)"):
        predict_images(model, [images[0], np.zeros((30, 32), np.uint16)])
    with pytest.raises(ValueError, match="stack"):
        predict_images(model, [np.zeros((2, 30, 31), np.uint16)])
    with pytest.raises(ValueError, match="layout must be"):
        predict_images(model, images, layout="ZYX")
    with pytest.raises(ValueError, match="outs must have one entry per image"):
        predict_images(model, images, outs=[None])
    with pytest.raises(ValueError, match="pixel_sizes must have one entry per image"):
        predict_images(model, images, pixel_sizes=[None] * 3)
    with pytest.raises(ValueError, match=r"outs\[0\] has shape"):
        predict_images(model, images, outs=[np.zeros((3, 3), np.uint8), None])
    with pytest.raises(ValueError, match="2 classes"):
        predict_images(_model(num_classes=3), images, output="instances")
    with pytest.raises(ValueError, match="instances' only"):
        predict_images(model, images, instance_options=InstanceOptions())
    with pytest.raises(ValueError, match="in_channels=2"):
        predict_images(_model(in_channels=2), images)
    source = tmp_path / "in.tif"
    tifffile.imwrite(source, images[0])
    lazy = tifffile.memmap(source)
    with pytest.raises(checks.BadArgument, match="would overwrite"):
        predict_images(model, [lazy, images[1]], outs=[source, None])
    with pytest.raises(checks.BadArgument, match="would overwrite"):
        predict_images(model, [lazy, images[1]], outs=[None, source])
    with pytest.raises(checks.BadArgument, match="must end in"):
        predict_images(model, images, outs=[tmp_path / "x.png", None])
    with pytest.raises(NonFiniteInputError, match=r"^images\[1\]: image holds NaN"):
        predict_images(model, [images[0].astype(np.float32), np.full((30, 31), np.nan, np.float32)])
    with pytest.raises(ValueError, match=r"^images\[1\]: image has 2 channel"):
        predict_images(model, [images[0][None], np.zeros((2, 30, 31))], layout="CYX")
    for bad, argument in (({"images": images[0]}, "images"), ({"images": None}, "images"),
                          ({"outs": str(tmp_path / "a.tif")}, "outs"), ({"pixel_sizes": PixelSize(1, 1)}, "pixel_sizes"),
                          ({"outs": [tmp_path / "a.tif", tmp_path / "." / "a.tif"]}, "outs"),
                          ({"outs": [np.zeros((30, 31), np.float32), None]}, "outs")):
        with pytest.raises(ValueError, match=rf"^{argument}"):
            predict_images(model, **{"images": images, **bad})
    assert list(tmp_path.iterdir()) == [source]      # nothing written by any of them


def test_an_image_whose_output_is_not_finite_is_named_and_no_out_is_written(tmp_path):
    """float16 activations that overflow on the bright image only: the error names it (images[1], not the slice of
    the stack its tiles went through) and the fix, and none of the outs is written."""
    model = _model()
    with torch.no_grad():
        model.encoder[0]["conv1"].weight.mul_(1e4)
    rng = np.random.default_rng(5)
    images = [rng.random((30, 31), dtype=np.float32) * scale for scale in (1e-3, 1.0, 1e-3)]
    none = unet_fast.Normalization(mode="none")
    assert all(np.isfinite(p).all() for p in predict_images(model, images, dtype="bf16", normalization=none,
                                                            output="probabilities", progress=False))
    outs = [tmp_path / f"{i}.tif" for i in range(3)]
    with pytest.raises(NonFiniteOutputError, match=r"^images\[1\]: the network's output holds NaN or infinite "
                                                   r"values \(in the tile of output rows 0\.\.30, columns 0\.\.31\).*"
                                                   r"use dtype 'bf16'") as error:
        predict_images(model, images, outs=outs, dtype="fp16", normalization=none, progress=False)
    assert error.value.plane == 1 and list(tmp_path.iterdir()) == []


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_on_a_gpu_each_result_is_its_own_up_to_rounding(dtype):
    """On a GPU the planner batches tiles of several images, where cuDNN and the kernels may round otherwise
    than for one image: probabilities within the precision's tolerance, labels the same but at near-ties."""
    model = _model().cuda()
    images = _images(6, (150, 170), seed=7)
    together = predict_images(model, images, output="probabilities", dtype=dtype, batch_size=4, progress=False)
    for image, result in zip(images, together):
        alone = predict_tiled(model, image, output="probabilities", dtype=dtype, progress=False)
        tolerance = 2e-3 if dtype == "fp32" else 2e-2     # fp32 convolutions may run in TF32 on a GPU
        np.testing.assert_allclose(result.astype(np.float32), alone.astype(np.float32), atol=tolerance)
        flipped = (result.argmax(0) != alone.argmax(0)) & (np.abs(alone[1] - alone[0]) > 2 * tolerance)
        assert not flipped.any()


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_instances_in_half_precision_are_predict_tiled_s(dtype):
    """The instance rules read float32 probabilities in both (float16 ones, what half precision stores by
    default, moved a few smoothed outline pixels: segment's batches of small files disagreed with one file)."""
    model = _model()
    images = _images(3, (60, 70))
    logits = predict_tiled(model, images[0], output="logits", progress=False)
    with torch.no_grad():      # a random net's smoothed foreground is all or nothing but near its 70th percentile
        model.head.bias[1] -= float(np.percentile(logits[1] - logits[0], 70))
    got = predict_images(model, images, output="instances", dtype=dtype, progress=False)
    for image, result in zip(images, got):
        expected = predict_tiled(model, image, output="instances", dtype=dtype, progress=False)
        assert expected.max() > 2
        np.testing.assert_array_equal(result, expected)
