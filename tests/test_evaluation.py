"""unet_fast.evaluation and `unet-fast evaluate`; unet_fast.overlays; `unet-fast segment --output
instances --overlay`."""
import csv
import io
import os

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image
from scipy import ndimage

import unet_fast
from unet_fast import cli, image_io, metrics, overlays
from unet_fast.evaluation import (Evaluation, _instances_of as evaluation_instances, evaluate_model, labelled_files,
                                  score_instances)
from unet_fast.inference import predict_tiled
from unet_fast.instances import InstanceOptions
from unet_fast.normalization import Normalization
from unet_fast.synthetic import synthetic_nuclei
from toy_models import Threshold
from optional_deps import needs_zarr


@pytest.fixture
def nuclei(tmp_path):
    """Two synthetic images (their own separated labels as pixels, so the threshold model is near perfect)
    written as folders: images/, labels/ (instances), masks/ (0/255)."""
    _, labels = synthetic_nuclei(2, 64, seed=3)
    for folder in ("images", "labels", "masks"):
        (tmp_path / folder).mkdir()
    for i, label in enumerate(labels):
        image = (unet_fast.separate_touching(label) > 0).astype(np.float32)
        tifffile.imwrite(tmp_path / "images" / f"n{i}.tif", image)
        tifffile.imwrite(tmp_path / "labels" / f"n{i}.tif", label.astype(np.uint16))
        Image.fromarray(((label > 0) * 255).astype(np.uint8)).save(tmp_path / "masks" / f"n{i}_mask.png")
    return tmp_path, labels


def test_scores_of_one_image_by_hand():
    truth = np.zeros((20, 20), int)
    truth[0:4, 0:4] = 1
    truth[10:13, 10:13] = 2
    predicted = np.zeros_like(truth)
    predicted[0:4, 1:5] = 7           # IoU 0.6
    predicted[10:13, 10:13] = 3       # exact
    predicted[16:18, 16:18] = 4       # spurious
    s = score_instances(predicted, truth, "x")
    assert (s.true_positives, s.false_positives, s.false_negatives, s.true_objects, s.predicted_objects) == \
        (2, 1, 0, 2, 3)
    assert s.f1 == pytest.approx(0.8) and s.iou == pytest.approx(21 / 33) and s.dice == pytest.approx(42 / 54)
    assert s.ap_50_95 == pytest.approx(metrics.average_precision(predicted, truth))
    assert s.rand_error == pytest.approx(metrics.rand_error(predicted, truth))
    evaluation = Evaluation([s, score_instances(truth, truth, "y")])
    assert evaluation.mean["f1"] == pytest.approx(0.9) and evaluation.pooled.f1 == pytest.approx(8 / 9)
    rows = list(csv.reader(io.StringIO(evaluation.csv())))
    assert rows[0][:6] == ["name", "iou", "dice", "precision", "recall", "f1"] and [r[0] for r in rows[1:]] == \
        ["x", "y", "mean"]
    assert rows[-1][rows[0].index("true_positives")] == "4"
    assert "mean of 2" in evaluation.summary() and "2 matched" not in evaluation.summary()


def test_evaluate_model_on_folders_masks_and_arrays(nuclei, tmp_path, monkeypatch):
    folder, labels = nuclei
    model = Threshold()
    model.normalization = Normalization(mode="none")
    options = InstanceOptions(min_size=0, smoothing=0)    # the labels themselves, to the pixel
    by_folders = evaluate_model(model, folder / "images", folder / "labels", instance_options=options,
                                overlay_dir=tmp_path / "overlays")
    assert [s.name for s in by_folders.images] == ["n0", "n1"]
    assert all(s.f1 == 1.0 and s.iou > 0.95 for s in by_folders.images)
    images = [tifffile.imread(folder / "images" / f"n{i}.tif") for i in range(2)]
    by_arrays = evaluate_model(model, images, list(labels), instance_options=options)
    assert [s.f1 for s in by_arrays.images] == [s.f1 for s in by_folders.images]
    masks = evaluate_model(model, folder / "images", folder / "masks", label_suffix="_mask", instance_options=options)
    assert masks.images[0].iou == pytest.approx(by_folders.images[0].iou)     # 0/255 masks: components as objects
    # beyond HELD_BYTES the files checked are not kept but read again to be scored: the same scores
    import unet_fast.evaluation as evaluation_module

    checked = evaluation_module.check_labelled(evaluation_module.labelled_files(folder / "images", folder / "labels"),
                                               in_channels=1, keep_bytes=1)
    assert all(isinstance(image, evaluation_module.Unread) and isinstance(truth, evaluation_module.Unread)
               and image.shape == truth.shape == (64, 64) for _, image, truth in checked)
    monkeypatch.setattr(evaluation_module, "HELD_BYTES", 1)
    reread = evaluate_model(model, folder / "images", folder / "labels", instance_options=options)
    assert [(s.name, s.iou, s.f1) for s in reread.images] == [(s.name, s.iou, s.f1) for s in by_folders.images]
    with Image.open(tmp_path / "overlays" / "n0.png") as picture:
        pixels = np.asarray(picture)
    assert pixels.shape == (512, 512, 3) and (pixels == overlays.BOTH).all(-1).any()     # enlarged 8 times


def test_evaluate_stacks_and_bad_inputs(nuclei, tmp_path):
    folder, labels = nuclei
    stack = np.stack([tifffile.imread(folder / "images" / f"n{i}.tif") for i in range(2)])
    tifffile.imwrite(tmp_path / "im.tif", stack)
    tifffile.imwrite(tmp_path / "lb.tif", labels.astype(np.uint16))
    assert [name for name, _, _ in labelled_files(tmp_path / "im.tif", tmp_path / "lb.tif")] == ["im[0]", "im[1]"]
    three = unet_fast.UNet(num_classes=3, depth=2, base_channels=2)
    with pytest.raises(ValueError, match="needs a model of 2 classes"):
        evaluate_model(three, tmp_path / "im.tif", tmp_path / "lb.tif")
    with pytest.raises(ValueError, match="no label in"):
        evaluate_model(Threshold(), folder / "images", folder / "masks")
    with pytest.raises(ValueError, match="2 pages but labels"):
        evaluate_model(Threshold(), tmp_path / "im.tif", folder / "labels" / "n0.tif")
    with pytest.raises(TypeError, match="both be paths"):
        labelled_files(folder / "images", [labels[0]])


@pytest.fixture
def model_file(nuclei, tmp_path):
    torch.manual_seed(0)
    model = unet_fast.UNet(depth=2, base_channels=4)
    image = tifffile.imread(nuclei[0] / "images" / "n0.tif")
    logits = predict_tiled(model, image, output="logits", progress=False, normalization=Normalization(mode="none"))
    with torch.no_grad():                       # about half the pixels foreground
        model.head.bias[1] -= float(np.median(logits[1] - logits[0]))
    return unet_fast.save_model(model, tmp_path / "model.safetensors", normalization=Normalization(mode="none"))


def test_cli_evaluate(nuclei, model_file, capsys):
    folder, _ = nuclei
    assert cli.main(["evaluate", "-m", str(model_file), "--images", str(folder / "images"), "--labels",
                     str(folder / "labels"), "-o", str(folder / "eval"), "--overlay", "--min-size", "3",
                     "--split", "0.9", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "foreground probability smoothed (Gaussian of 1.5 px) above 0.5, split at cores above 0.9, min size 3 px, " \
           "holes filled, borders 2 px; images resampled by 1" in out and "mean of 2" in out and "pooled" in out
    rows = list(csv.reader(open(folder / "eval" / "evaluation.csv")))
    assert len(rows) == 4 and all(0 <= float(r[1]) <= 1 for r in rows[1:])
    assert sorted(p.name for p in (folder / "eval" / "overlays").iterdir()) == ["n0.png", "n1.png"]


def test_cli_evaluate_warns_of_labels_that_look_like_an_intensity_image(nuclei, model_file, tmp_path, recwarn):
    """--images and --labels swapped (here: microscope-like grey images given as labels) scored every grey value
    as an object without a word; instance labels give none."""
    folder, _ = nuclei
    grey, _ = synthetic_nuclei(2, 64, seed=3)
    (tmp_path / "grey").mkdir()
    for i, image in enumerate(grey):
        tifffile.imwrite(tmp_path / "grey" / f"n{i}.tif", (image * 255).astype(np.uint8))
    for labels, warned in (("grey", True), ("labels", False)):
        assert cli.main(["evaluate", "-m", str(model_file), "--images", str(folder / "images"), "--labels",
                         str(tmp_path / labels if labels == "grey" else folder / labels), "-o",
                         str(tmp_path / f"eval_{labels}"), "--no-progress"]) == 0
        said = [str(warning.message) for warning in recwarn]
        recwarn.clear()
        assert any("labels of 'n0' look like an intensity image" in text and "fill a median" in text and
                   "--images and --labels are not swapped" in text for text in said) == warned, said


def test_cli_evaluate_with_an_ignore_label_scores_the_annotated_pixels_only(nuclei, model_file, tmp_path, capsys):
    """Nucleus 1 of each image and 2 px around it not annotated (65535): predicted objects mostly there are no
    false positives, and those pixels count in no IoU (the known answer by hand, from predict_tiled's objects)."""
    folder, labels = nuclei
    sparse = tmp_path / "sparse"
    sparse.mkdir()
    unannotated = [ndimage.binary_dilation(label == 1, iterations=2) & (label != 2) for label in labels]
    for i, label in enumerate(labels):
        tifffile.imwrite(sparse / f"n{i}.tif", np.where(unannotated[i], 65535, label).astype(np.uint16))
    assert cli.main(["evaluate", "-m", str(model_file), "--images", str(folder / "images"), "--labels", str(sparse),
                     "-o", str(tmp_path / "eval"), "--ignore-label", "65535", "--no-progress"]) == 0
    rows = {row["name"]: row for row in csv.DictReader(open(tmp_path / "eval" / "evaluation.csv"))}
    model = unet_fast.load_model(model_file)
    for i, label in enumerate(labels):
        predicted = predict_tiled(model, tifffile.imread(folder / "images" / f"n{i}.tif"), output="instances",
                                  progress=False)
        annotated = ~unannotated[i]
        for value in np.unique(predicted[predicted > 0]):          # mostly unannotated: left out
            if np.count_nonzero((predicted == value) & ~annotated) * 2 > np.count_nonzero(predicted == value):
                predicted[predicted == value] = 0
        truth = np.where(annotated, label, 0)
        p, t = (predicted > 0) & annotated, truth > 0
        assert float(rows[f"n{i}"]["iou"]) == pytest.approx(np.sum(p & t) / np.sum(p | t), abs=1e-6)
        assert int(rows[f"n{i}"]["predicted_objects"]) == len(np.unique(predicted[predicted > 0]))
        assert int(rows[f"n{i}"]["true_objects"]) == len(np.unique(truth[truth > 0]))
    # a near-perfect model: every object found; those nobody annotated are no false positives
    scored = evaluate_model(Threshold(), folder / "images", sparse, ignore_label=65535)
    assert scored.pooled.false_positives == 0 and scored.pooled.false_negatives == 0
    naive = [np.where(mask, 0, label) for mask, label in zip(unannotated, labels)]   # unannotated as background
    images = [tifffile.imread(folder / "images" / f"n{i}.tif") for i in range(len(labels))]
    assert evaluate_model(Threshold(), images, naive).pooled.false_positives == 2
    code, err = _usage_error(["evaluate", "-m", str(model_file), "--images", str(folder / "images"), "--labels",
                              str(sparse), "-o", str(tmp_path / "eval3"), "--ignore-label", "0"], capsys)
    assert code == 2 and "--ignore-label" in err and "background" in err


@needs_zarr
def test_cli_segment_instances_with_overlays(nuclei, model_file, capsys):
    import zarr

    folder, _ = nuclei
    model = unet_fast.load_model(model_file)
    for fmt in ("tif", "ome.zarr"):
        assert cli.main(["segment", "-i", str(folder / "images"), "-o", str(folder / fmt), "-m", str(model_file),
                         "--output", "instances", "--format", fmt, "--overlay", "--border", "1", "--no-progress"]) == 0
    image = tifffile.imread(folder / "images" / "n0.tif")
    want = predict_tiled(model, image, output="instances", instance_options=InstanceOptions(border=1), progress=False)
    got = tifffile.imread(folder / "tif" / "n0.tif")
    assert got.dtype == np.uint16 and np.array_equal(got, want) and want.max() >= 1
    group = zarr.open_group(str(folder / "ome.zarr" / "n0.ome.zarr"), mode="r")
    assert "image-label" in group.attrs and np.array_equal(group["0"][:], want)
    for fmt in ("tif", "ome.zarr"):
        with Image.open(folder / fmt / "overlays" / "n0.png") as picture:
            drawn = np.asarray(picture)
        assert drawn.shape == (512, 512, 3)
        enlarged = np.kron(want, np.ones((8, 8), want.dtype))
        assert np.array_equal((drawn == overlays.PREDICTED).all(-1), overlays.outlines(enlarged))


def test_cli_smoothing_segments_and_scores_as_predict_tiled(nuclei, model_file, capsys):
    folder, labels = nuclei
    model = unet_fast.load_model(model_file)
    image = tifffile.imread(folder / "images" / "n0.tif")
    for given, sigma in ((["--smoothing", "0"], 0.0), ([], 1.5), (["--smoothing", "3"], 3.0),
                         (["--no-split"], 0.0)):      # off without the split it needs
        out = folder / f"smoothing{sigma:g}{'-no-split' if given == ['--no-split'] else ''}"
        assert cli.main(["segment", "-i", str(folder / "images"), "-o", str(out), "-m", str(model_file), "--output",
                         "instances", "--no-progress", *given]) == 0
        options = InstanceOptions(split=None) if "--no-split" in given else InstanceOptions(smoothing=sigma)
        want = predict_tiled(model, image, output="instances", instance_options=options, progress=False)
        assert np.array_equal(tifffile.imread(out / "n0.tif"), want)
        assert cli.main(["evaluate", "-m", str(model_file), "--images", str(folder / "images"), "--labels",
                         str(folder / "labels"), "-o", str(out / "eval"), "--no-progress", *given]) == 0
        printed = capsys.readouterr().out
        assert ("foreground probability above 0.5" if sigma == 0 else
                f"foreground probability smoothed (Gaussian of {sigma:g} px) above 0.5") in printed
        row = next(csv.DictReader(open(out / "eval" / "evaluation.csv")))
        assert float(row["iou"]) == pytest.approx(score_instances(want, labels[0]).iou, abs=1e-5)
    assert not np.array_equal(tifffile.imread(folder / "smoothing0" / "n0.tif"),
                              tifffile.imread(folder / "smoothing3" / "n0.tif"))


def test_cli_tta_segments_and_scores_as_predict_tiled(nuclei, model_file, capsys):
    folder, labels = nuclei
    model = unet_fast.load_model(model_file)
    assert cli.main(["segment", "-i", str(folder / "images"), "-o", str(folder / "tta"), "-m", str(model_file),
                     "--output", "instances", "--tta", "--no-progress"]) == 0
    image = tifffile.imread(folder / "images" / "n1.tif")
    want = predict_tiled(model, image, output="instances", tta=True, progress=False)
    assert not np.array_equal(want, predict_tiled(model, image, output="instances", progress=False))
    assert np.array_equal(tifffile.imread(folder / "tta" / "n1.tif"), want)
    assert cli.main(["evaluate", "-m", str(model_file), "--images", str(folder / "images"), "--labels",
                     str(folder / "labels"), "-o", str(folder / "eval"), "--tta", "--no-progress"]) == 0
    assert "images resampled by 1; test-time augmentation" in capsys.readouterr().out
    rows = list(csv.DictReader(open(folder / "eval" / "evaluation.csv")))
    scored = [row for row in rows if row["name"] == "n1"][0]
    assert float(scored["iou"]) == pytest.approx(score_instances(want, labels[1]).iou, abs=1e-5)
    with pytest.raises(ValueError, match="tta must be True or False"):
        evaluate_model(model, folder / "images", folder / "labels", tta="on")


def _usage_error(argv, capsys):
    """The exit status and stderr of a command line refused: a BadArgument's status is main's return
    value, argparse's own errors exit; either way 2 and one line."""
    try:
        status = cli.main(argv)
    except SystemExit as stop:
        status = stop.code
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return status, err


@pytest.mark.parametrize("argv, message", [
    (["--output", "instances", "--min-size", "-1"], "argument --min-size: must be an integer >= 0, got '-1'"),
    (["--output", "labels", "--min-size", "5"], "go with --output instances"),
    (["--output", "probabilities", "--overlay"], "argument --overlay: --overlay outlines labels or instances, not "
                                                 "probabilities"),
    (["--output", "instances", "--border", "x"], "argument --border: must be an integer >= 0, got 'x'"),
    (["--output", "instances", "--threshold", "1"], "argument --threshold: must be a number in (0, 1), got '1'"),
    (["--output", "instances", "--threshold", "0.7", "--split", "0.6"],
     "argument --split: --split 0.6 must be above --threshold 0.7"),
    (["--output", "instances", "--threshold", "0.97"],     # the default --split 0.95, which the user never gave
     "argument --threshold: --threshold 0.97 is at or above the default --split 0.95"),
    (["--output", "instances", "--split", "0.8", "--no-split"], "exclude each other"),
    (["--output", "instances", "--smoothing", "-1"], "argument --smoothing: must be a number in [0, 64], got '-1'"),
    (["--output", "instances", "--smoothing", "inf"], "argument --smoothing: must be a number in [0, 64], got 'inf'"),
    (["--output", "labels", "--smoothing", "2"], "--threshold, --smoothing, --split and --no-split go with --output "
                                                 "instances"),
])
def test_cli_segment_bad_instance_options(nuclei, model_file, capsys, argv, message):
    folder, _ = nuclei
    status, err = _usage_error(["segment", "-i", str(folder / "images"), "-o", str(folder / "out"), "-m",
                                str(model_file), *argv], capsys)
    assert status == 2 and message in err, err
    assert not (folder / "out").exists()


def test_cli_instances_with_a_3_class_model(nuclei, tmp_path, capsys):
    folder, _ = nuclei
    path = unet_fast.save_model(unet_fast.UNet(num_classes=3, depth=2, base_channels=2), tmp_path / "three.safetensors")
    for argv, named in ((["segment", "-i", str(folder / "images"), "-o", str(tmp_path / "out"), "-m", str(path),
                          "--output", "instances"], "argument --output:"),
                        (["evaluate", "-m", str(path), "--images", str(folder / "images"), "--labels",
                          str(folder / "labels"), "-o", str(tmp_path / "evaluation")], "argument -m/--model:")):
        status, err = _usage_error(argv, capsys)
        assert status == 2 and named in err and "needs a model of 2 classes" in err and "has 3" in err, err
    assert not (tmp_path / "out").exists() and not (tmp_path / "evaluation").exists()


def test_overlay_outlines_and_subsampling():
    labels = np.zeros((6, 7), int)
    labels[1:4, 1:5] = 3
    labels[4, 1:5] = 4
    edge = overlays.outlines(labels)
    assert edge[1, 1] and edge[3, 2] and not edge[2, 2] and edge[4, 3] and not edge[0, 0]
    image = np.random.default_rng(0).random((3, 2000, 900)).astype(np.float32)
    picture = overlays.render_overlay(image, np.zeros((2000, 900), np.uint16), max_side=500)
    assert picture.shape == (500, 225, 3) and picture.dtype == np.uint8
    with pytest.raises(ValueError, match="same height and width"):
        overlays.render_overlay(image, np.zeros((20, 9), int))
    with pytest.raises(ValueError, match="max_side"):
        overlays.render_overlay(image[0], np.zeros((2000, 900), int), max_side=3)
    assert image_io.IMAGE_SUFFIXES    # overlays are PNGs that the image readers read back
    assert ndimage.label(edge)[1] >= 1


# ---- evaluate: every usage error before the first image is scored (exit 2, one line naming the flag)

def _tif(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, array)
    return path


def _copy_labels(folder, name, change):
    """labels/ copied to <name>/, n1's labels replaced by change(labels): n0 would be scored first."""
    target = folder / name
    target.mkdir()
    for i in range(2):
        label = tifffile.imread(folder / "labels" / f"n{i}.tif")
        tifffile.imwrite(target / f"n{i}.tif", change(label) if i == 1 else label, photometric="minisblack")
    return target


def _stack(folder):
    return _tif(folder / "stack.tif", np.stack([tifffile.imread(folder / "images" / f"n{i}.tif") for i in range(2)]))


def _duplicate_image(folder):
    dup = folder / "dup_images"
    dup.mkdir()
    for i in range(2):
        (dup / f"n{i}.tif").write_bytes((folder / "images" / f"n{i}.tif").read_bytes())
    image = tifffile.imread(folder / "images" / "n0.tif")
    Image.fromarray((image * 255).astype(np.uint8)).save(dup / "n0.png")
    return dup


def _duplicate_label(folder):
    dup = _copy_labels(folder, "dup_labels", lambda label: label)
    Image.fromarray((tifffile.imread(dup / "n0.tif") > 0).astype(np.uint8) * 255).save(dup / "n0.png")
    return dup


def _nan_images(folder):
    nan = folder / "nan_images"
    nan.mkdir()
    for i in range(2):
        image = tifffile.imread(folder / "images" / f"n{i}.tif")
        if i == 1:
            image[3, 4] = np.nan
        tifffile.imwrite(nan / f"n{i}.tif", image)
    return nan


def _csv_linked_to_an_input(folder):
    out = folder / "linked"
    out.mkdir()
    os.symlink(folder / "labels" / "n0.tif", out / "evaluation.csv")
    return {"-o": out}


EVALUATE_REFUSALS = [
    # (id, what to change: {flag: value} made from the nuclei folder, flag named, text in the message)
    ("labels of other names", lambda f: {"--labels": _tif(f / "other" / "m0.tif", np.zeros((64, 64), np.uint16)).parent},
     "argument --labels:", "no label in"),
    ("--label-suffix matching nothing", lambda f: {"--label-suffix": "_nope"}, "argument --labels and --label-suffix:",
     "'_nope'"),
    ("a label of another size", lambda f: {"--labels": _copy_labels(f, "small", lambda label: label[:50])},
     "argument --labels:", "(50, 64)"),
    ("a 3-D label", lambda f: {"--labels": _copy_labels(f, "thick", lambda label: np.stack([label, label, label]))},
     "argument --labels:", "2-D"),
    ("negative labels", lambda f: {"--labels": _copy_labels(f, "negative", lambda label: label.astype(np.int16) - 1)},
     "argument --labels:", "negative"),
    ("fractional labels", lambda f: {"--labels": _copy_labels(f, "fraction", lambda label: label / 2.0)},
     "argument --labels:", "non-integer"),
    ("--labels the images folder", lambda f: {"--labels": f / "images"}, "argument --labels:", "itself"),
    ("a stack with a folder", lambda f: {"--images": _stack(f)}, "argument --labels:", "is a file (a TIFF stack)"),
    ("a folder with a stack", lambda f: {"--labels": _stack(f)}, "argument --labels:", "is a folder"),
    ("--tile-size 7", lambda f: {"--tile-size": "7"}, "argument --tile-size:", "7"),
    ("a NaN image", lambda f: {"--images": _nan_images(f)}, "argument --images:", "--nonfinite zero"),
    ("two images of one base name", lambda f: {"--images": _duplicate_image(f)}, "argument --images:",
     "n0.png"),
    ("two labels of one base name", lambda f: {"--labels": _duplicate_label(f)}, "argument --labels:", "n0.png"),
    ("evaluation.csv a link to an input", _csv_linked_to_an_input, "argument -o/--output-dir:", "would overwrite"),
    ("--threshold above the default --split", lambda f: {"--threshold": "0.95"}, "argument --threshold:",
     "--no-split"),
]


@pytest.mark.parametrize("change, named, text", [pytest.param(*case[1:], id=case[0]) for case in EVALUATE_REFUSALS])
def test_cli_evaluate_refuses_before_scoring(nuclei, model_file, capsys, change, named, text):
    folder, _ = nuclei
    flags = {"-m": model_file, "--images": folder / "images", "--labels": folder / "labels",
             "-o": folder / "eval"}
    flags.update(change(folder))
    argv = ["evaluate", "--overlay", "--no-progress"] + [str(item) for pair in flags.items() for item in pair]
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    status, err = _usage_error(argv, capsys)
    assert status == 2 and named in err and text in err, err
    assert not (folder / "eval").exists()                       # nothing scored, no overlay written
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before


def test_cli_evaluate_nonfinite_zero_scores_a_nan_image(nuclei, model_file, capsys):
    folder, _ = nuclei
    assert cli.main(["evaluate", "-m", str(model_file), "--images", str(_nan_images(folder)), "--labels",
                     str(folder / "labels"), "-o", str(folder / "eval"), "--nonfinite", "zero", "--no-progress"]) == 0
    assert "mean of 2" in capsys.readouterr().out


def test_cli_evaluate_never_overwrites_an_input_with_an_overlay(nuclei, model_file, capsys):
    """The reviewer's case: evaluating the PNGs of q/overlays into q would replace them by their overlays;
    and an overlay path that is a hard link of an input image."""
    folder, _ = nuclei
    q = folder / "q"
    (q / "overlays").mkdir(parents=True)
    for i in range(2):
        image = tifffile.imread(folder / "images" / f"n{i}.tif")
        Image.fromarray((image * 255).astype(np.uint8)).save(q / "overlays" / f"n{i}.png")
    linked = folder / "linked"
    (linked / "overlays").mkdir(parents=True)
    os.link(folder / "images" / "n1.tif", linked / "overlays" / "n1.png")
    for images, out in ((q / "overlays", q), (folder / "images", linked)):
        before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
        status, err = _usage_error(["evaluate", "-m", str(model_file), "--images", str(images), "--labels",
                                    str(folder / "labels"), "-o", str(out), "--overlay", "--no-progress"], capsys)
        assert status == 2 and "argument -o/--output-dir:" in err and "would overwrite" in err, err
        assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before
        assert not (out / "evaluation.csv").exists()


def test_evaluate_replaces_only_overlays_unet_fast_wrote(nuclei, model_file, tmp_path, capsys, monkeypatch):
    """evaluate --overlay used to replace OUTDIR/overlays/<name>.png whatever it was: now an overlay without the
    marker (a user's PNG, folder or symlink) is refused before the first image is scored, by the API too."""
    from unet_fast import inference
    from unet_fast.checks import BadArgument

    folder, _ = nuclei
    out = folder / "eval"
    argv = ["evaluate", "-m", str(model_file), "--images", str(folder / "images"), "--labels", str(folder / "labels"),
            "-o", str(out), "--overlay", "--no-progress"]
    assert cli.main(argv) == 0
    drawn = out / "overlays" / "n1.png"
    before = drawn.stat().st_ino
    assert cli.main(argv) == 0 and drawn.stat().st_ino != before       # its own overlays: replaced, atomically
    capsys.readouterr()
    mine = tmp_path / "mine.png"
    Image.fromarray(np.full((8, 8), 7, np.uint8)).save(mine)
    for what, place in [("a file", lambda: drawn.write_bytes(mine.read_bytes())), ("a folder", drawn.mkdir),
                        ("a symlink", lambda: drawn.symlink_to(mine))]:
        drawn.unlink() if drawn.is_symlink() or drawn.is_file() else drawn.rmdir()
        place()
        written = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in tmp_path.rglob("*") if p.is_file()}
        status, err = _usage_error(argv, capsys)
        assert status == 2 and "argument -o/--output-dir: the overlay" in err and f"would replace {what}" in err, err
        assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in tmp_path.rglob("*") if p.is_file()} == written
    for name in ("predict_tiled", "predict_images"):
        monkeypatch.setattr(inference, name, lambda *a, **k: pytest.fail("scored before the check"))
    with pytest.raises(BadArgument, match="would replace a symlink") as caught:
        evaluate_model(Threshold(), folder / "images", folder / "labels", overlay_dir=out / "overlays")
    assert caught.value.argument == "overlay_dir" and drawn.is_symlink() and mine.read_bytes() == written[mine][0]


def test_only_overlays_carry_the_marker(tmp_path):
    """segment and evaluate replace a PNG only when it carries overlays.MARKER (write_overlay's text chunk)."""
    labels = np.zeros((20, 30), np.uint16)
    labels[5:10, 5:12] = 1
    overlays.write_overlay(tmp_path / "ours.png", labels.astype(np.float32), labels, max_side=64)
    assert overlays.written_by_unet_fast(tmp_path / "ours.png")
    Image.open(tmp_path / "ours.png").save(tmp_path / "resaved.png")      # the same pixels, without the marker
    (tmp_path / "folder.png").mkdir()
    (tmp_path / "text.png").write_text(overlays.MARKER)
    (tmp_path / "link.png").symlink_to(tmp_path / "ours.png")
    for name in ("resaved.png", "folder.png", "text.png", "link.png", "absent.png"):
        assert not overlays.written_by_unet_fast(tmp_path / name), name
    overlays.check_replaceable([tmp_path / "ours.png", tmp_path / "absent.png"], "here")     # nothing to refuse


def test_evaluate_model_checks_every_pair_first(nuclei, tmp_path, monkeypatch):
    """The API: BadArgument naming the argument, raised before predict_tiled runs once."""
    from unet_fast import inference
    from unet_fast.checks import BadArgument

    folder, labels = nuclei
    calls = []
    monkeypatch.setattr(inference, "predict_tiled", lambda *a, **k: calls.append(1))
    model = Threshold()
    images = [tifffile.imread(folder / "images" / f"n{i}.tif") for i in range(2)]
    for bad_labels, match in (([labels[0], labels[1][:10]], "same size"), ([labels[0], -labels[1]], "negative"),
                              ([labels[0], labels[1] + 0.5], "non-integer")):
        with pytest.raises(BadArgument, match=match) as caught:
            evaluate_model(model, images, bad_labels)
        assert caught.value.argument == "labels"
    with pytest.raises(BadArgument, match="channel") as caught:
        evaluate_model(model, [images[0], np.stack([images[1]] * 3)], list(labels))
    assert caught.value.argument == "images"
    (tmp_path / "ov").mkdir()
    os.link(folder / "labels" / "n1.tif", tmp_path / "ov" / "n1.png")
    with pytest.raises(BadArgument, match="overwrite") as caught:
        evaluate_model(model, folder / "images", folder / "labels", overlay_dir=tmp_path / "ov")
    assert caught.value.argument == "overlay_dir"
    with pytest.raises(BadArgument) as caught:
        evaluate_model(unet_fast.UNet(depth=2, base_channels=2), images, list(labels), tile_size=7)
    assert caught.value.argument == "tile_size"
    assert calls == []


def test_small_images_of_one_shape_are_scored_together_as_each_alone():
    torch.manual_seed(0)
    model = unet_fast.UNet(depth=2, base_channels=4).eval()
    images, labels = synthetic_nuclei(4, 48, seed=5)
    images = [image * (1 + i) for i, image in enumerate(images)]        # their own normalisation each
    other, other_labels = synthetic_nuclei(1, 40, seed=6)
    images, labels = images[:2] + [other[0]] + images[2:], list(labels[:2]) + [other_labels[0]] + list(labels[2:])
    lines = []
    together = evaluate_model(model, images, labels, log=lines.append)
    assert sum("in a batch of 2 images" in line for line in lines) == 4 and len(lines) == 5
    for image, truth, scored in zip(images, labels, together.images):
        alone = score_instances(predict_tiled(model, image, output="instances", progress=False),
                                evaluation_instances(truth))
        assert (scored.iou, scored.f1, scored.true_positives, scored.predicted_objects) == \
            (alone.iou, alone.f1, alone.true_positives, alone.predicted_objects)


def test_labels_beyond_int64_are_ids_and_infinite_ones_are_refused_first(monkeypatch):
    """uint64 ids above 2^63 - 1 are objects like any other (not negative numbers half-way through scoring);
    float labels holding inf are refused before anything is predicted, as fractions are."""
    from unet_fast import inference
    from unet_fast.checks import BadArgument

    truth = np.zeros((32, 32), np.uint64)
    truth[2:12, 2:12], truth[16:28, 4:14], truth[18:26, 20:30] = 2 ** 63 + 1, 5, 2 ** 64 - 1
    image = (truth > 0).astype(np.float32)
    scores = evaluate_model(Threshold(), [image], [truth]).images[0]
    assert (scores.true_positives, scores.false_positives, scores.false_negatives) == (3, 0, 0)
    small = np.unique(truth, return_inverse=True)[1].reshape(truth.shape)        # the same objects, ids 0..3
    same = evaluate_model(Threshold(), [image], [small]).images[0]
    assert (scores.rand_error, scores.ap_50_95, scores.iou) == (same.rand_error, same.ap_50_95, same.iou)
    calls = []
    monkeypatch.setattr(inference, "predict_tiled", lambda *a, **k: calls.append(1))
    infinite = truth.astype(np.float64)
    infinite[0, 0] = np.inf
    with pytest.raises(BadArgument, match="non-integer") as caught:
        evaluate_model(Threshold(), [image], [infinite])
    assert caught.value.argument == "labels" and calls == []


@pytest.mark.parametrize("ids", [(1, 2), (3, 7)])
def test_two_ids_without_background_are_two_objects_not_one_mask(ids):
    """A crop of two touching cells that fills the image holds two ids and no 0: two objects (as `auto`
    trains on them), where it was read as a mask and scored as one object covering the image."""
    truth = np.full((10, 12), ids[0], np.uint16)
    truth[:, 6:] = ids[1]
    objects = evaluation_instances(truth)
    assert len(np.unique(objects)) == 2 and len(np.unique(objects[:, :6])) == 1 and objects[0, 0] != objects[0, -1]
    mask = np.where(truth == ids[1], 255, 0).astype(np.uint8)          # a {0, v} mask: its components
    mask[:, 9] = 0
    np.testing.assert_array_equal(evaluation_instances(mask), ndimage.label(mask > 0)[0])
    np.testing.assert_array_equal(evaluation_instances(np.full((3, 4), 5)), np.ones((3, 4)))  # one value: one object


def test_an_image_whose_output_is_not_finite_is_refused_by_its_name(tmp_path):
    """float16 activations that overflow on one image of a group scored together: the error names that image
    (not its place in the group) and the fix."""
    from unet_fast.inference import NonFiniteOutputError
    torch.manual_seed(0)
    model = unet_fast.UNet(depth=2, base_channels=4).eval()
    with torch.no_grad():
        model.encoder[0]["conv1"].weight.mul_(1e4)
    images, labels = synthetic_nuclei(3, 48, seed=5)
    images = [image.astype(np.float32) * scale for image, scale in zip(images, (1e-3, 1.0, 1e-3))]
    for i, (image, label) in enumerate(zip(images, labels)):
        for folder, array in (("images", image), ("labels", label.astype(np.uint16))):
            (tmp_path / folder).mkdir(exist_ok=True)
            tifffile.imwrite(tmp_path / folder / f"n{i}.tif", array)
    with pytest.raises(NonFiniteOutputError, match=r"^image 'n1': the network's output holds NaN or infinite values "
                                                   r"\(in the tile of output rows 0\.\.48, columns 0\.\.48\).*'bf16'"):
        evaluate_model(model, tmp_path / "images", tmp_path / "labels", dtype="fp16")
    assert len(evaluate_model(model, tmp_path / "images", tmp_path / "labels", dtype="bf16").images) == 3


def test_the_rand_error_of_sparse_labels_leaves_the_unannotated_pixels_out():
    """As the IoU does: by hand (see test_metrics), a 4-pixel nucleus half found, in a 10 x 10 image whose lower
    half is not annotated: recall (4 + 2/50) / 16, precision 1; n = 100 pixels would give (4 + 2/100) / 16."""
    truth = np.zeros((10, 10), np.uint16)
    truth[:2, :2] = 1
    truth[5:] = 65535
    predicted = np.zeros((10, 10), np.int32)
    predicted[0, :2] = 1
    recall = (4 + 2 / 50) / 16
    scores = score_instances(predicted, truth, "x", truth == 65535)
    assert scores.rand_error == pytest.approx(1 - 2 * recall / (1 + recall), rel=1e-12)


def test_overlays_hatch_the_pixels_nobody_annotated():
    """The unannotated pixels are dimmed to half and hatched (a magenta diagonal every 6 px), under the outlines;
    the annotated ones are drawn as without sparse labels."""
    image = np.random.default_rng(0).random((40, 40)).astype(np.float32)
    predicted = np.zeros((40, 40), np.int32)
    predicted[22:30, 22:30] = 1                    # an object in the unannotated corner: outlined on the hatching
    ignored = np.zeros((40, 40), bool)
    ignored[20:, 20:] = True
    plain = overlays.render_overlay(image, predicted, max_side=80)
    hatched = overlays.render_overlay(image, predicted, ignored=ignored, max_side=80)
    assert hatched.shape == plain.shape == (40, 40, 3)
    rows, cols = np.indices((40, 40))
    line = (rows + cols) % 6 == 0
    edge = overlays.outlines(predicted)
    np.testing.assert_array_equal(hatched[~ignored], plain[~ignored])
    assert (hatched[ignored & line & ~edge] == overlays.HATCH).all() and np.count_nonzero(ignored & line) == 67
    np.testing.assert_array_equal(hatched[ignored & ~line & ~edge], plain[ignored & ~line & ~edge] // 2)
    assert (hatched[edge] == overlays.PREDICTED).all()
    with pytest.raises(ValueError, match="ignored"):
        overlays.render_overlay(image, predicted, ignored=ignored[:30])


def test_evaluate_overlays_show_where_the_labels_are_not_annotated(nuclei, tmp_path):
    """evaluate --overlay --ignore-label: the hatching covers the unannotated pixels, only them (the overlay of a
    64 px image is enlarged 8 times)."""
    folder, labels = nuclei
    sparse = tmp_path / "sparse"
    sparse.mkdir()
    unannotated = [np.zeros(label.shape, bool) for label in labels]
    for i, label in enumerate(labels):
        unannotated[i][:, 40:] = True
        tifffile.imwrite(sparse / f"n{i}.tif", np.where(unannotated[i], 65535, label).astype(np.uint16))
    evaluate_model(Threshold(), folder / "images", sparse, ignore_label=65535, overlay_dir=tmp_path / "overlays")
    for i in range(2):
        picture = np.asarray(Image.open(tmp_path / "overlays" / f"n{i}.png").convert("RGB"))
        assert picture.shape == (512, 512, 3)
        magenta = (picture == overlays.HATCH).all(-1)
        assert not magenta[:, :320].any() and magenta[:, 320:].mean() > 0.1
    evaluate_model(Threshold(), folder / "images", folder / "labels", overlay_dir=tmp_path / "dense")
    assert not (np.asarray(Image.open(tmp_path / "dense" / "n0.png").convert("RGB")) == overlays.HATCH).all(-1).any()


def test_uint64_label_files_are_scored(tmp_path):
    """tifffile reads uint64 labels as numpy.ulonglong, which torch refused: `unet-fast evaluate` failed with
    "can't convert np.ndarray of type numpy.ulonglong" on label files holding ids beyond 2^32."""
    truth = np.zeros((32, 32), np.uint64)
    truth[2:12, 2:12], truth[16:28, 4:14], truth[18:26, 20:30] = 2 ** 63 + 1, 5, 2 ** 40
    image = (truth > 0).astype(np.float32)
    image[18:26, 20:30] = 0                                  # one object missed
    _tif(tmp_path / "images" / "a.tif", image)
    _tif(tmp_path / "labels" / "a.tif", truth)
    scores = evaluate_model(Threshold(), tmp_path / "images", tmp_path / "labels").images[0]
    assert (scores.true_positives, scores.false_positives, scores.false_negatives) == (2, 0, 1)


def test_images_without_true_objects_have_no_mean_rand_error_and_no_warning():
    """Labels with no object (a blank field): the Rand error is undefined, and its mean NaN; numpy's
    "Mean of empty slice" warning reached the user as `unet-fast evaluate: warning: Mean of empty slice`."""
    import warnings

    truth = np.zeros((16, 16), np.uint16)
    predicted = np.zeros((16, 16), np.int32)
    predicted[2:6, 2:6] = 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        evaluation = Evaluation([score_instances(predicted, truth, "a"), score_instances(truth, truth, "b")])
        mean = evaluation.mean
        evaluation.summary()
    assert np.isnan(mean["rand_error"]) and mean["f1"] == pytest.approx(0.5) and mean["precision"] == 0.5
    assert np.isnan(Evaluation([]).mean["iou"])


def test_cli_evaluate_into_the_images_folder_runs_again(nuclei, model_file, capsys):
    """-o the images folder: the second run refused, saying that the first run's evaluation.csv "would overwrite
    the input" (every file in the folder was taken for an input, not only its images); an image file there is
    still never replaced."""
    folder, _ = nuclei
    argv = ["evaluate", "-m", str(model_file), "--images", str(folder / "images"), "--labels", str(folder / "labels"),
            "-o", str(folder / "images"), "--no-progress"]
    assert cli.main(argv) == 0
    first = [row[:-1] for row in csv.reader(open(folder / "images" / "evaluation.csv"))]   # all but the seconds
    (folder / "images" / "evaluation.csv").write_text(",".join(first[0]) + "\nstale\n")  # an earlier evaluate table
    assert cli.main(argv) == 0
    assert [row[:-1] for row in csv.reader(open(folder / "images" / "evaluation.csv"))] == first
    capsys.readouterr()
    (folder / "images" / "evaluation.csv").unlink()
    os.link(folder / "images" / "n1.tif", folder / "images" / "evaluation.csv")
    status, err = _usage_error(argv, capsys)
    assert status == 2 and "would overwrite the input" in err


def test_cli_evaluate_keeps_a_users_table_of_ious(nuclei, model_file, tmp_path, capsys):
    """An evaluation.csv of the user's own whose columns start "name,iou," was taken for evaluate's and replaced
    (only the first two column names were compared)."""
    folder, _ = nuclei
    (tmp_path / "mine").mkdir()
    table = tmp_path / "mine" / "evaluation.csv"
    table.write_text("name,iou,notes\nn0,0.81,by hand\n")
    status, err = _usage_error(["evaluate", "-m", str(model_file), "--images", str(folder / "images"), "--labels",
                                str(folder / "labels"), "-o", str(tmp_path / "mine"), "--no-progress"], capsys)
    assert status == 2 and "no table unet-fast evaluate wrote" in err
    assert table.read_text() == "name,iou,notes\nn0,0.81,by hand\n"


class _RGBThreshold(Threshold):
    in_channels = 3

    def forward(self, x):
        return super().forward(x[:, :1])


def test_an_rgb_tiff_and_its_labels_given_as_files_are_one_pair(tmp_path):
    """--images and --labels two files: an RGB TIFF (Y, X, samples) was read as Y pages of (X, 3), refused as
    "holds 64 pages but labels ... has shape (1, 64, 48)"; its samples are its channels, a stack of RGB pages too.
    The scores are those of the same arrays given channels first."""
    truth = np.zeros((64, 48), np.uint16)
    truth[4:20, 4:20], truth[30:50, 10:40] = 1, 2
    rgb = np.repeat((truth > 0)[..., None], 3, axis=-1).astype(np.uint8) * 255
    rgb[45:50, 10:40] = 0                                       # object 2 found in part
    rgb[55:62, 2:9] = 255                                       # a false one
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    tifffile.imwrite(tmp_path / "labels.tif", truth)
    model = _RGBThreshold()
    model.normalization = Normalization(mode="none")
    [scores] = evaluate_model(model, tmp_path / "rgb.tif", tmp_path / "labels.tif").images
    [expected] = evaluate_model(model, [np.moveaxis(rgb, -1, 0)], [truth]).images
    assert scores.name == "rgb[0]" and (scores.true_positives, scores.false_positives, scores.false_negatives) == \
        (2, 1, 0) and (scores.iou, scores.ap_50_95) == (expected.iou, expected.ap_50_95)
    tifffile.imwrite(tmp_path / "rgbs.tif", np.stack([rgb, rgb]), photometric="rgb")
    tifffile.imwrite(tmp_path / "labelss.tif", np.stack([truth, truth]))
    assert [s.iou for s in evaluate_model(model, tmp_path / "rgbs.tif", tmp_path / "labelss.tif").images] == \
        [expected.iou] * 2
