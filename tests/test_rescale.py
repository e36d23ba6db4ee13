"""unet_fast.rescale and the object-size scale end to end: resampling against torch's, windows equal to the
whole, predict_tiled(scale=...) against the pipeline by hand and the same whatever the tiles, the
scale chosen by `unet-fast train`, stored in the model file (checked as untrusted input), used by
segment and evaluate, refused by export."""
import json
import math

import numpy as np
import pytest
import tifffile
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from safetensors.torch import save_file

import unet_fast
from unet_fast import cli, reference
from unet_fast.data import ArrayDataset
from unet_fast.inference import predict_tiled, usable_tile_sizes
from unet_fast.model_file import METADATA_KEY, ModelFileError, load_model, read_model_config, save_model
from unet_fast.normalization import Normalization
from unet_fast.recipes import get_recipe
from unet_fast.rescale import (MAX_SCALE, Resampled, check_scale, choose_scale, object_diameters, resample_image,
                               resample_labels)
from unet_fast.synthetic import synthetic_nuclei
from toy_models import Threshold

NONE = Normalization(mode="none")


# ---- resampling

@pytest.mark.parametrize("shape, size", [((37, 41), (93, 100)), ((100, 90), (40, 33)), ((64, 64), (25, 160)),
                                         ((50, 50), (50, 50)), ((5, 7), (1, 1)), ((1, 9), (4, 3))])
def test_resampling_equals_torch_bilinear_antialiased(shape, size):
    image = np.random.default_rng(0).random((2,) + shape, dtype=np.float32)
    want = F.interpolate(torch.from_numpy(image)[None], size=size, mode="bilinear", antialias=True,
                         align_corners=False)[0].numpy()
    np.testing.assert_allclose(resample_image(image, size), want, atol=1e-5)


def test_enlarging_is_plain_bilinear_and_keeps_constants():
    image = np.random.default_rng(1).random((30, 20), dtype=np.float32)
    want = F.interpolate(torch.from_numpy(image)[None, None], size=(75, 50), mode="bilinear",
                         align_corners=False)[0, 0].numpy()
    np.testing.assert_allclose(resample_image(image, (75, 50)), want, atol=1e-5)
    np.testing.assert_allclose(resample_image(np.full((13, 17), 3.5, np.float32), (5, 40)), 3.5, rtol=1e-6)


@settings(max_examples=25, deadline=None)
@given(h=st.integers(1, 40), w=st.integers(1, 40), oh=st.integers(1, 90), ow=st.integers(1, 90), data=st.data())
def test_every_window_equals_the_same_window_of_the_whole(h, w, oh, ow, data):
    image = np.random.default_rng(h * 41 + w).random((3, h, w), dtype=np.float32)[:, ::-1]   # not contiguous
    view = Resampled(image, (oh, ow))
    whole = view[...]
    y0 = data.draw(st.integers(0, oh - 1))
    y1 = data.draw(st.integers(y0 + 1, oh))
    x0 = data.draw(st.integers(0, ow - 1))
    x1 = data.draw(st.integers(x0 + 1, ow))
    np.testing.assert_array_equal(view[1, y0:y1, x0:x1], whole[1, y0:y1, x0:x1])
    assert view.shape == (3, oh, ow) and np.asarray(view).shape == (3, oh, ow)


def test_views_refuse_strided_windows():
    view = Resampled(np.zeros((10, 10), np.float32), (20, 20))
    with pytest.raises(IndexError, match="unit-step"):
        view[::2, :]
    with pytest.raises(IndexError, match="too many"):
        view[0, 0, 0]


def test_labels_take_the_nearest_pixel():
    labels = np.array([[1, 2], [3, 0]], np.uint16)
    np.testing.assert_array_equal(resample_labels(labels, (4, 4)), np.kron(labels, np.ones((2, 2), np.uint16)))
    big = np.random.default_rng(2).integers(0, 50, (40, 30)).astype(np.int32)
    small = resample_labels(big, (20, 15))
    assert small.dtype == np.int32 and set(np.unique(small)) <= set(np.unique(big))
    np.testing.assert_array_equal(small, big[1::2, 1::2])      # output pixel j's centre falls in input pixel 2j+1


# ---- the scale

def test_object_diameters_and_the_chosen_scale():
    yy, xx = np.mgrid[:200, :200]
    labels = np.zeros((200, 200), np.int32)
    for k, (cy, cx, r) in enumerate([(50, 50, 30), (150, 150, 30), (50, 150, 20)], 1):
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = k
    labels[190:194, 0:4] = 9                       # a 4 x 4 square: 16 px
    diameters = object_diameters(labels)
    np.testing.assert_allclose(sorted(diameters)[1:], [40, 60, 60], rtol=0.02)
    assert sorted(diameters)[0] == pytest.approx(2 * math.sqrt(16 / math.pi))
    assert choose_scale([48.0, 48.0, 50.0], 24.0) == pytest.approx(0.5)
    assert choose_scale([10.0], 24.0) == pytest.approx(2.4)
    assert choose_scale([20.0, 22.0, 29.0], 24.0) == 1.0          # within 1.25x: as they are
    assert choose_scale([], 24.0) == 1.0 and choose_scale([60.0], None) == 1.0
    assert choose_scale([1000.0], 24.0) == pytest.approx(1 / MAX_SCALE)
    assert choose_scale([0.5], 24.0) == MAX_SCALE


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), 100.0, True, "2", None])
def test_bad_scales_are_named(bad):
    with pytest.raises(ValueError, match="scale must be a number in"):
        check_scale(bad)
    with pytest.raises(ValueError, match="scale must be a number in"):
        predict_tiled(reference.UNet(depth=2, base_channels=2), np.zeros((8, 8), np.float32),
                      scale=bad if bad is not None else "x", progress=False)


# ---- inference

def _tiny(seed=0, **options):
    torch.manual_seed(seed)
    return unet_fast.UNet(depth=3, base_channels=4, num_classes=2, **options).eval()


@pytest.mark.parametrize("scale", [2.0, 0.5, 1.7])
def test_predict_with_a_scale_is_resample_predict_resample_back(scale):
    model = _tiny()
    image = (np.random.default_rng(3).random((57, 43)) * 1000).astype(np.uint16)
    got = predict_tiled(model, image, output="logits", scale=scale, progress=False)
    statistics = Normalization().statistics(image)
    normalised = Normalization().apply(image[None], *statistics, 0)[0]
    size = (round(57 * scale), round(43 * scale))
    logits = predict_tiled(model, resample_image(normalised, size), output="logits", normalization=NONE,
                           progress=False)
    np.testing.assert_allclose(got, resample_image(logits, (57, 43)), atol=1e-5)
    labels = predict_tiled(model, image, scale=scale, progress=False)
    probabilities = predict_tiled(model, image, scale=scale, output="probabilities", progress=False)
    assert labels.shape == (57, 43) and labels.dtype == np.uint8 and probabilities.shape == (2, 57, 43)
    np.testing.assert_array_equal(labels, got.argmax(0))
    np.testing.assert_allclose(probabilities, torch.softmax(torch.from_numpy(got), 0).numpy(), atol=1e-6)


def test_a_scaled_prediction_too_large_for_memory_goes_into_a_folder_yet_to_be_made(tmp_path, monkeypatch):
    """Its resampled logits go on disk (beside the output, or in the system's temporary folder while out's folder
    does not exist yet: making the scratch there failed), and are gone after; the labels are those of a
    prediction in memory."""
    from unet_fast import instances

    model = _tiny()
    image = (np.random.default_rng(4).random((57, 43)) * 1000).astype(np.uint16)
    expected = predict_tiled(model, image, scale=1.5, progress=False)
    monkeypatch.setattr(instances, "IN_MEMORY_PIXELS", 10)
    out = predict_tiled(model, image, scale=1.5, progress=False, out=tmp_path / "new" / "labels.tif")
    np.testing.assert_array_equal(tifffile.imread(out), expected)
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["labels.tif"]


def test_scaled_instances_too_large_for_memory_put_all_their_scratch_beside_the_output(tmp_path, monkeypatch):
    """segment --output instances --scale on a huge image: the resampled logits (8 bytes a pixel times scale^2)
    went to the system's temporary folder (often a small /tmp) while the mask went beside the output. Every
    scratch file now goes beside the output, and is gone after."""
    import tempfile
    from pathlib import Path

    from unet_fast import instances

    model = _tiny()
    image = (np.random.default_rng(5).random((2, 41, 37)) * 1000).astype(np.uint16)    # a stack: two planes
    expected = predict_tiled(model, image, output="instances", scale=1.5, progress=False)
    monkeypatch.setattr(instances, "IN_MEMORY_PIXELS", 10)
    system_tmp = tmp_path / "system_tmp"
    system_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_tmp))
    made = []
    open_memmap = np.lib.format.open_memmap
    monkeypatch.setattr(np.lib.format, "open_memmap", lambda path, *a, **k: made.append(Path(path)) or
                        open_memmap(path, *a, **k))
    (tmp_path / "out").mkdir()
    out = predict_tiled(model, image, output="instances", scale=1.5, progress=False, out=tmp_path / "out" / "i.tif")
    np.testing.assert_array_equal(tifffile.imread(out), expected)
    assert len(made) >= 3 and all(tmp_path / "out" in p.parents for p in made), made
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["i.tif"] and not any(system_tmp.iterdir())


@settings(max_examples=6, deadline=None)
@given(height=st.integers(1, 70), width=st.integers(1, 70), scale=st.sampled_from([0.4, 1.5, 2.5]),
       tile_index=st.integers(0, 2))
def test_a_scaled_prediction_is_the_same_whatever_the_tiles(height, width, scale, tile_index):
    model = _tiny()
    stack = np.random.default_rng(height * 71 + width).random((3, height, width), dtype=np.float32)
    sizes = usable_tile_sizes(3, "valid", 120)
    # sizes[1] keeps 8 px a tile: at scale 2.5 sizes[0] (4 px) cut a 70 x 70 stack into 3 x 1900 tiles, 20 s
    tile = [None, sizes[1], sizes[len(sizes) // 2]][tile_index]
    got = predict_tiled(model, stack, layout="ZYX", output="logits", scale=scale, tile_size=tile, batch_size=2,
                        progress=False)
    one = predict_tiled(model, stack, layout="ZYX", output="logits", scale=scale, tile_size=sizes[-1], progress=False)
    assert got.shape == (3, 2, height, width)
    np.testing.assert_allclose(got, one, atol=1e-5)
    instances = predict_tiled(model, stack[1], output="instances", scale=scale, tile_size=tile, progress=False)
    np.testing.assert_array_equal(instances, predict_tiled(model, stack[1], output="instances", scale=scale,
                                                           progress=False))


def test_the_models_scale_is_the_default_and_files_carry_it(tmp_path):
    model = _tiny()
    image = np.random.default_rng(4).random((2, 40, 50), dtype=np.float32)
    model.input_scale = 2.0
    want = predict_tiled(model, image[0], output="logits", scale=2.0, progress=False)
    np.testing.assert_array_equal(predict_tiled(model, image[0], output="logits", progress=False), want)
    path = save_model(model, tmp_path / "m.safetensors")
    loaded = load_model(path)
    assert loaded.input_scale == 2.0 and read_model_config(path)["input_scale"] == 2.0
    written = predict_tiled(loaded, image, layout="ZYX", out=tmp_path / "labels.tif", progress=False)
    np.testing.assert_array_equal(tifffile.imread(written)[0], want.argmax(0))
    assert load_model(save_model(_tiny(), tmp_path / "plain.safetensors")).input_scale == 1.0


@pytest.mark.parametrize("bad", [1e9, -2, "2", None, [2]])
def test_a_model_file_with_a_bad_scale_is_refused(tmp_path, bad):
    good = save_model(_tiny(), tmp_path / "good.safetensors")
    config = read_model_config(good)
    config["input_scale"] = bad
    tensors = {k: v.contiguous() for k, v in _tiny().state_dict().items()}
    save_file(tensors, str(tmp_path / "bad.safetensors"), metadata={METADATA_KEY: json.dumps(config)})
    with pytest.raises(ModelFileError, match="bad.safetensors.*input_scale must be a number"):
        load_model(tmp_path / "bad.safetensors")


# ---- training

def _big_nuclei(count=2, size=96, zoom=2.5, seed=0):
    """Synthetic nuclei (about 21 px across) enlarged ``zoom`` times: about 53 px across."""
    images, labels = synthetic_nuclei(count, size, seed=seed)
    out = (round(size * zoom),) * 2
    return ([resample_image(image, out) for image in images],
            [resample_labels(label, out) for label in labels])


def test_datasets_resample_images_and_labels_before_the_weight_maps():
    images, labels = _big_nuclei()
    plain = ArrayDataset(images, labels)
    scale = choose_scale(plain.object_diameters(), 24.0)
    assert 0.35 < scale < 0.55
    scaled = ArrayDataset(images, labels, scale=scale)
    item = scaled[1]
    side = round(240 * scale)
    assert item.image.shape == (1, side, side) and item.target.shape == item.weights.shape == (side, side)
    assert 0.8 < np.median(object_diameters(item.instances)) * 1.0 / (np.median(plain.object_diameters()) * scale) < 1.2
    with pytest.raises(ValueError, match="scale must be a number"):
        ArrayDataset(images, labels, scale=0)


def test_train_resamples_big_objects_and_segment_evaluate_use_the_scale(tmp_path, capsys):
    images, labels = _big_nuclei()
    for folder in ("im", "lb"):
        (tmp_path / folder).mkdir()
    for i, (image, label) in enumerate(zip(images, labels)):
        tifffile.imwrite(tmp_path / "im" / f"n{i}.tif", (image * 255).astype(np.uint8))
        tifffile.imwrite(tmp_path / "lb" / f"n{i}.tif", label.astype(np.uint16))
    common = ["--images", str(tmp_path / "im"), "--labels", str(tmp_path / "lb"), "--depth", "2", "--base-channels",
              "2", "--tiles-per-epoch", "1", "--batch-size", "1", "--epochs", "1", "--no-progress"]
    assert cli.main(["train", *common, "-o", str(tmp_path / "m.safetensors"), "--work-dir", str(tmp_path / "r")]) == 0
    out = capsys.readouterr().out
    assert "every image resampled by 0.4" in out and "objects of 24.0 px" in out
    model = load_model(tmp_path / "m.safetensors")
    assert 0.35 < model.input_scale < 0.55
    assert cli.main(["train", *common, "-o", str(tmp_path / "n.safetensors"), "--work-dir", str(tmp_path / "s"),
                     "--object-size", "0"]) == 0
    assert load_model(tmp_path / "n.safetensors").input_scale == 1.0
    assert cli.main(["segment", "-i", str(tmp_path / "im"), "-o", str(tmp_path / "seg"), "-m",
                     str(tmp_path / "m.safetensors"), "--no-progress"]) == 0
    got = tifffile.imread(tmp_path / "seg" / "n0.tif")
    want = predict_tiled(model, tifffile.imread(tmp_path / "im" / "n0.tif"), progress=False)
    assert got.shape == (240, 240) and np.array_equal(got, want)
    assert cli.main(["evaluate", "-m", str(tmp_path / "m.safetensors"), "--images", str(tmp_path / "im"),
                     "--labels", str(tmp_path / "lb"), "-o", str(tmp_path / "ev"), "--no-progress"]) == 0
    # export cannot record the scale: refused unless asked
    capsys.readouterr()
    assert cli.main(["export", str(tmp_path / "m.safetensors"), "--format", "torchscript", "-o",
                     str(tmp_path / "m.pt")]) == 2
    assert "resamples images by 0.4" in capsys.readouterr().err and not (tmp_path / "m.pt").exists()
    assert cli.main(["export", str(tmp_path / "m.safetensors"), "--format", "torchscript", "-o",
                     str(tmp_path / "m.pt"), "--ignore-scale"]) == 0


@pytest.mark.parametrize("value", ["-1", "inf", "nan", "big"])
def test_bad_object_sizes_are_usage_errors(tmp_path, capsys, value):
    with pytest.raises(SystemExit) as stop:
        cli.main(["train", "--images", str(tmp_path), "--labels", str(tmp_path), "-o", str(tmp_path / "m.safetensors"),
                  "--object-size", value])
    assert stop.value.code == 2 and "--object-size" in capsys.readouterr().err
    with pytest.raises(ValueError, match="object_size"):
        get_recipe("default").replace(object_size=float(value) if value != "big" else -3.0)


def test_recipes_object_sizes():
    assert get_recipe("default").object_size == 24.0 and get_recipe("paper").object_size == 0.0


def test_segment_and_evaluate_scale_flags_override_the_models(tmp_path, capsys):
    model = _tiny()
    path = save_model(model, tmp_path / "m.safetensors")
    (tmp_path / "im").mkdir()
    (tmp_path / "lb").mkdir()
    images, labels = synthetic_nuclei(1, 64, seed=5)
    tifffile.imwrite(tmp_path / "im" / "a.tif", (images[0] * 255).astype(np.uint8))
    tifffile.imwrite(tmp_path / "lb" / "a.tif", labels[0].astype(np.uint16))
    assert cli.main(["segment", "-i", str(tmp_path / "im"), "-o", str(tmp_path / "seg"), "-m", str(path),
                     "--output", "probabilities", "--scale", "1.5", "--tta", "--no-progress"]) == 0
    assert "images resampled by 1.5; test-time augmentation" in capsys.readouterr().out
    want = predict_tiled(model, tifffile.imread(tmp_path / "im" / "a.tif"), output="probabilities", scale=1.5,
                         tta=True, progress=False)
    np.testing.assert_array_equal(np.moveaxis(tifffile.imread(tmp_path / "seg" / "a.tif"), -1, 0), want)
    assert cli.main(["evaluate", "-m", str(path), "--images", str(tmp_path / "im"), "--labels", str(tmp_path / "lb"),
                     "-o", str(tmp_path / "ev"), "--scale", "0.5", "--no-progress"]) == 0
    for bad in ("0", "17", "x"):
        with pytest.raises(SystemExit) as stop:
            cli.main(["segment", "-i", str(tmp_path / "im"), "-o", str(tmp_path / "s2"), "-m", str(path),
                      "--scale", bad])
        assert stop.value.code == 2 and "--scale" in capsys.readouterr().err
    with pytest.raises(ValueError, match="scale must be a number"):
        unet_fast.segment.run([str(tmp_path / "im")], tmp_path / "s3", model, scale=-1.0)


def test_a_magnifying_model_segments_instances_with_its_smoothing_scaled_down_to_none(tmp_path, capsys):
    """At scale 16 the default Gaussian (1.5 network px) is under 0.1 image px: off, not an error (it was one)."""
    model = _tiny()
    path = save_model(model, tmp_path / "m.safetensors")
    (tmp_path / "im").mkdir()
    image = (synthetic_nuclei(1, 24, seed=2)[0][0] * 255).astype(np.uint8)
    tifffile.imwrite(tmp_path / "im" / "a.tif", image)
    assert cli.main(["segment", "-i", str(tmp_path / "im"), "-o", str(tmp_path / "seg"), "-m", str(path),
                     "--output", "instances", "--scale", "16", "--no-progress"]) == 0
    want = predict_tiled(model, image, output="instances", scale=16.0, progress=False)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "seg" / "a.tif"), want)


def test_the_pixel_limit_counts_the_resampled_pixels(tmp_path, capsys):
    model = _tiny()
    model.input_scale = 4.0
    path = save_model(model, tmp_path / "m.safetensors")
    (tmp_path / "im").mkdir()
    tifffile.imwrite(tmp_path / "im" / "a.tif", np.zeros((60, 50), np.uint8))
    assert cli.main(["segment", "-i", str(tmp_path / "im"), "-o", str(tmp_path / "seg"), "-m", str(path),
                     "--max-pixels", "20000", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "3,000 pixels resampled by 4 (the model's input_scale, or --scale) make 48,000" in err
    assert not (tmp_path / "seg" / "a.tif").exists()
    assert cli.main(["segment", "-i", str(tmp_path / "im"), "-o", str(tmp_path / "seg"), "-m", str(path),
                     "--max-pixels", "20000", "--scale", "2", "--no-progress"]) == 0


# ---- the review's cases

def test_tta_logits_stay_finite_for_a_confident_model_and_resample():
    image = np.random.default_rng(8).random((40, 50), dtype=np.float32)
    logits = predict_tiled(Threshold(gain=120.0), image, output="logits", tta=True, scale=0.5, normalization=NONE,
                           progress=False)
    assert np.isfinite(logits).all()
    np.testing.assert_array_equal(
        predict_tiled(Threshold(gain=120.0), image, tta=True, scale=0.5, normalization=NONE, progress=False),
        predict_tiled(Threshold(gain=120.0), image, scale=0.5, normalization=NONE, progress=False))


def test_object_diameters_of_huge_ids_need_no_huge_table():
    labels = np.zeros((20, 20), np.int64)
    labels[2:6, 2:6] = 2_000_000_000
    labels[10:12, 10:12] = 7
    np.testing.assert_allclose(sorted(object_diameters(labels)), [2 * math.sqrt(4 / math.pi),
                                                                   2 * math.sqrt(16 / math.pi)])


def test_masks_are_not_measured_as_objects(tmp_path, capsys):
    """A binary mask's regions are touching cells or tissue, not objects: no resampling from them."""
    images, labels = _big_nuclei(count=1)
    mask = (labels[0] > 0).astype(np.uint8) * 255
    assert ArrayDataset(images, [mask]).object_diameters().size == 0
    assert ArrayDataset(images, [labels[0]], label_kind="semantic", num_classes=2).object_diameters().size == 0
    (tmp_path / "im").mkdir()
    (tmp_path / "lb").mkdir()
    tifffile.imwrite(tmp_path / "im" / "a.tif", (images[0] * 255).astype(np.uint8))
    tifffile.imwrite(tmp_path / "lb" / "a.tif", mask)
    assert cli.main(["train", "--images", str(tmp_path / "im"), "--labels", str(tmp_path / "lb"), "-o",
                     str(tmp_path / "m.safetensors"), "--depth", "2", "--base-channels", "2", "--tiles-per-epoch", "1",
                     "--batch-size", "1", "--epochs", "1", "--no-progress"]) == 0
    assert "none measured" in capsys.readouterr().out
    assert load_model(tmp_path / "m.safetensors").input_scale == 1.0


def test_tiny_objects_that_would_blow_up_the_training_images_are_refused(tmp_path, capsys):
    (tmp_path / "im").mkdir()
    (tmp_path / "lb").mkdir()
    labels = np.zeros((1500, 1500), np.uint16)
    labels[::4, ::4] = np.arange(1, 375 * 375 + 1, dtype=np.uint32).reshape(375, 375) % 60000 + 1   # 1-px specks
    tifffile.imwrite(tmp_path / "im" / "a.tif", np.zeros((1500, 1500), np.uint8))
    tifffile.imwrite(tmp_path / "lb" / "a.tif", labels)
    assert cli.main(["train", "--images", str(tmp_path / "im"), "--labels", str(tmp_path / "lb"), "-o",
                     str(tmp_path / "m.safetensors"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "--object-size" in err and "training pixels" in err and not (tmp_path / "m.safetensors").exists()


def test_a_datasets_scale_drops_what_was_read_and_subsets_follow_it():
    images, labels = synthetic_nuclei(3, 48, seed=2)
    data = ArrayDataset(images, labels)
    assert data.in_channels == 1                  # reads image 0 at scale 1
    data.scale = 2.0
    assert {data[i].image.shape for i in range(3)} == {(1, 96, 96)}
    from unet_fast.data import split_dataset

    train, val = split_dataset(data, 0.34)
    data.scale = 0.5
    assert train.scale == val.scale == 0.5 and train[0].image.shape == (1, 24, 24)
    with pytest.raises(AttributeError):
        train.scale = 3.0


def test_fit_checks_the_scales_and_gives_the_model_its_scale(tmp_path):
    from unet_fast.train import fit

    images, labels = synthetic_nuclei(3, 48, seed=2)
    train, val = ArrayDataset(images[:2], labels[:2], scale=2.0), ArrayDataset(images[2:], labels[2:])
    model = unet_fast.UNet(depth=2, base_channels=2)
    with pytest.raises(ValueError, match="val_data's scale"):
        fit(model, train, val, epochs=1, tile_size=44, tiles_per_epoch=1, batch_size=1)
    val.scale = 2.0
    result = fit(model, train, val, epochs=1, tile_size=44, tiles_per_epoch=1, batch_size=1, checkpoint_dir=tmp_path)
    assert result.model.input_scale == 2.0 and load_model(result.best).input_scale == 2.0
    assert load_model(save_model(result.model, tmp_path / "m.safetensors")).input_scale == 2.0


def test_training_normalises_before_resampling_as_inference_does():
    images, labels = synthetic_nuclei(1, 64, seed=4)
    raw = (images[0] * 1000 + 50).astype(np.uint16)
    item = ArrayDataset([raw], labels, scale=0.5)[0]
    statistics = Normalization().statistics(raw)
    want = resample_image(Normalization().apply(raw[None], *statistics, 0), (32, 32))
    np.testing.assert_allclose(item.image, want, atol=1e-6)


def test_the_pixel_size_warning_takes_the_scale_given():
    from unet_fast.pixel_size import PixelSize, scale_warning

    model = _tiny()
    model.metadata = {"pixel_size": PixelSize(0.5, 0.5).to_dict()}
    coarse = PixelSize(2.0, 2.0)
    assert "pass --scale 4" in scale_warning(model, coarse, "a.tif")
    assert scale_warning(model, coarse, "a.tif", scale=4.0) is None
    assert "pass --scale 4" in scale_warning(model, coarse, "a.tif", scale=1.0)
    assert "too far" in scale_warning(model, PixelSize(20.0, 20.0), "a.tif")


def test_the_class_by_class_argmax_equals_argmax_ties_included():
    from unet_fast.inference import argmax_classes

    scores = torch.randn(5, 30, 40, generator=torch.Generator().manual_seed(0))
    scores[1, 0, 0] = scores[3, 0, 0] = 50.0          # a tie: the first class wins, as in argmax
    scores[:, 1, 1] = 0.0
    assert torch.equal(argmax_classes(scores), scores.argmax(0))


def test_instance_rules_are_measured_in_the_networks_pixels():
    """min_size, border and core_size are in the pixels the network sees: a model that resamples by 0.5
    removes objects under 15 of its pixels, 60 of the image's (a speck of 49 image px, which the same rules
    in image pixels kept)."""
    from unet_fast.instances import InstanceOptions

    options = InstanceOptions()
    assert options.in_image_pixels(1.0) is options
    assert options.in_image_pixels(0.4) == InstanceOptions(min_size=94, border=5, core_size=31, smoothing=3.75)
    assert options.in_image_pixels(2.0) == InstanceOptions(min_size=4, border=1, core_size=1, smoothing=0.75)
    assert InstanceOptions(smoothing=40).in_image_pixels(0.25).smoothing == 64     # at most MAX_SMOOTHING
    # a magnifying model narrows the Gaussian on the image's grid; under MIN_SMOOTHING (the identity) it is off
    assert options.in_image_pixels(15.0).smoothing == 0.1 and options.in_image_pixels(16.0).smoothing == 0.0
    assert InstanceOptions(smoothing=0.3).in_image_pixels(4.0).smoothing == 0.0
    image = np.zeros((64, 64), np.float32)
    image[4:44, 4:44] = 1.0      # an object of 1600 px
    image[52:59, 52:59] = 1.0    # a speck of 49 px: 12 of the network's pixels at scale 0.5
    model = Threshold()
    model.input_scale = 0.5
    rules = dict(output="instances", normalization=NONE, progress=False,
                 instance_options=InstanceOptions(split=None, smoothing=0))   # square corners stay square

    def areas(labels):  # the resampling round trip rounds the square's corners by a few pixels
        return [int(round(area, -1)) for area in sorted(np.bincount(labels.ravel())[1:])]

    assert areas(predict_tiled(model, image, **rules)) == [1600]
    assert areas(predict_tiled(model, image, scale=1.0, **rules)) == [50, 1600]
    (found,) = unet_fast.inference.predict_images(model, [image], **rules)
    assert areas(found) == [1600]


class _ReadSpy:
    """An array-like that records how many pixels each read takes."""

    def __init__(self, array):
        self.array, self.shape, self.dtype, self.reads = array, array.shape, array.dtype, []

    def __getitem__(self, key):
        block = np.asarray(self.array[key])
        self.reads.append(block.size)
        return block


def test_a_window_reads_its_input_in_bounded_bands(monkeypatch):
    """Shrinking by 16, each pixel of a window reads 256 of the input: a 2048 px tile read 2^30 input pixels at once
    (4 GiB as float32, more for the normalisation), and a band of logits resampled back from an image enlarged 16
    times as many. The rows are read in bands of about READ_PIXELS, with the same result bit for bit."""
    from unet_fast import rescale

    image = np.random.default_rng(5).random((2, 512, 520), dtype=np.float32)
    want = Resampled(image, (32, 33))[...]
    monkeypatch.setattr(rescale, "READ_PIXELS", 2 ** 16)
    spy = _ReadSpy(image)
    np.testing.assert_array_equal(Resampled(spy, (32, 33))[...], want)
    np.testing.assert_array_equal(Resampled(spy, (32, 33))[1, 3:20, 5:9], want[1, 3:20, 5:9])
    assert max(spy.reads) <= 2 ** 16 < image.size
    spy.reads.clear()     # predict_tiled's tiles of the image shrunk by 16 too
    model = Threshold()
    got = predict_tiled(model, spy, layout="ZYX", output="logits", scale=1 / 16,
                        normalization=NONE, progress=False)
    assert got.shape == (2, 2, 512, 520) and max(spy.reads) <= 2 ** 16
