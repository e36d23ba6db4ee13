"""Sparse labels (``ignore_label``): pixels nobody annotated count in no loss, no class balance and no score."""
import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

import ahead
from unet_fast import cli
from unet_fast.data import IGNORE, ArrayDataset, RandomTiles, default_augmentation
from unet_fast.evaluation import score_instances
from unet_fast.losses import training_loss
from unet_fast.metrics import without_ignored_objects
from unet_fast.weights import unet_weight_map

IGNORED = 255


def _instances():
    """Two touching nuclei and a third apart on 40 x 50, the lower rows not annotated."""
    label = np.zeros((40, 50), np.uint8)
    label[4:14, 4:14] = 1
    label[4:14, 14:22] = 2       # touches 1
    label[5:12, 30:40] = 3
    label[26:, :] = IGNORED
    return label


def test_targets_weights_and_objects_of_an_instance_label_with_unannotated_pixels():
    label = _instances()
    ignored = label == IGNORED
    sample = ArrayDataset([np.random.default_rng(0).random((40, 50))], [label], ignore_label=IGNORED)[0]
    assert np.all(sample.target[ignored] == IGNORE)
    assert np.all(sample.weights[ignored] == 0)
    assert np.all(sample.instances[ignored] == 0)
    # the annotated pixels are what the same objects give with the unannotated rows cut away
    cut = ArrayDataset([np.zeros((26, 50))], [label[:26]], class_weights=None)[0]
    np.testing.assert_array_equal(sample.target[:26], cut.target)
    np.testing.assert_array_equal(sample.instances[:26], cut.instances)
    assert set(np.unique(sample.instances)) == {0, 1, 2, 3}          # 255 is no object
    # balanced classes counted over the annotated pixels: each class carries half their weight
    plain = ArrayDataset([np.zeros((40, 50))], [label], ignore_label=IGNORED, w0=1e-30)[0].weights
    annotated = ~ignored
    foreground = annotated & (sample.target == 1)
    background = annotated & (sample.target == 0)
    assert plain[foreground].sum() == pytest.approx(plain[background].sum(), rel=1e-5)
    assert plain[annotated].mean() == pytest.approx(1.0, rel=1e-5)


def test_the_weight_map_of_unannotated_pixels_is_zero_batched_and_checked():
    labels = np.stack([_instances(), _instances()[::-1]]).astype(np.int32)
    ignored = labels == IGNORED
    labels[ignored] = 0
    weights = unet_weight_map(labels, ignored=ignored)
    assert np.all(weights[ignored] == 0)
    np.testing.assert_allclose(weights[0][~ignored[0]], unet_weight_map(labels[0], ignored=ignored[0])[~ignored[0]])
    tensor = unet_weight_map(torch.from_numpy(labels), ignored=torch.from_numpy(ignored))
    np.testing.assert_allclose(tensor.numpy(), weights)
    with pytest.raises(ValueError, match="ignored must be a bool mask"):
        unet_weight_map(labels, ignored=ignored[0])
    with pytest.raises(ValueError, match="ignored must be a bool mask"):
        unet_weight_map(labels, ignored=ignored.astype(np.uint8))


def test_the_label_kind_is_told_from_the_annotated_values():
    # two objects filling the annotated pixels (no 0 there): instances, as without the unannotated ones
    label = np.full((20, 20), IGNORED, np.uint8)
    label[:10, :10], label[:10, 10:] = 1, 2
    sample = ArrayDataset([np.zeros((20, 20))], [label], ignore_label=IGNORED)[0]
    assert set(np.unique(sample.instances)) == {0, 1, 2}
    assert np.all(sample.target[10:] == IGNORE)
    # a {0, 200} mask with unannotated 100s: background / foreground
    mask = np.zeros((20, 20), np.uint8)
    mask[5:9, 5:9], mask[15:, :] = 200, 100
    sample = ArrayDataset([np.zeros((20, 20))], [mask], ignore_label=100)[0]
    assert set(np.unique(sample.target)) == {IGNORE, 0, 1}
    assert np.count_nonzero(sample.target == 1) == 16
    # three classes, 9 not annotated (-1 allowed as the value, in a signed image)
    classes = np.array([[0, 1, 2, -1]] * 4, np.int16)
    sample = ArrayDataset([np.zeros((4, 4))], [classes], num_classes=3, ignore_label=-1)[0]
    np.testing.assert_array_equal(sample.target[0], [0, 1, 2, IGNORE])


def test_training_tiles_keep_unannotated_pixels_out_of_the_loss():
    rng = np.random.default_rng(1)
    label = _instances()
    data = ArrayDataset([rng.random((40, 50)), rng.random((40, 50))], [label, label[::-1].copy()],
                        ignore_label=IGNORED)
    tiles = RandomTiles(data, 44, depth=2, augment=default_augmentation(), tiles_per_epoch=6, seed=3)
    loss_fn = training_loss(dice=1.0)
    for i in range(len(tiles)):
        _, target, weights = tiles[i]
        assert set(np.unique(target.numpy())) <= {IGNORE, 0, 1}
        logits = torch.randn(2, 2, *target.shape, requires_grad=True)
        loss = loss_fn(logits, torch.stack([target, target]), torch.stack([weights, weights]))
        loss.backward()
        assert torch.isfinite(loss)
        # unannotated pixels give no gradient: the net is never taught they are background
        assert torch.all(logits.grad[:, :, target == IGNORE] == 0)


def test_a_tile_of_unannotated_pixels_only_gives_a_zero_loss():
    target = torch.full((2, 8, 8), IGNORE)
    logits = torch.randn(2, 2, 8, 8, requires_grad=True)
    loss = training_loss(dice=1.0)(logits, target, torch.zeros(2, 8, 8))
    loss.backward()
    assert float(loss.detach()) == 0.0 and torch.all(logits.grad == 0)


@pytest.mark.parametrize("value, message", [
    (0, "is the background"), (1.5, "must be an integer"), (True, "must be an integer"), ("255", "must be an integer")])
def test_bad_ignore_labels_are_refused_naming_the_argument(value, message):
    with pytest.raises(ValueError, match="ignore_label") as error:
        ArrayDataset([np.zeros((8, 8))], [np.zeros((8, 8), np.uint8)], ignore_label=value)
    assert message in str(error.value)


def test_a_class_value_is_refused_as_the_ignore_label_of_class_labels():
    with pytest.raises(ValueError, match="ignore_label=2 is one of the 3 classes"):
        ArrayDataset([np.zeros((8, 8))], [np.zeros((8, 8), np.uint8)], num_classes=3, ignore_label=2)
    with pytest.raises(ValueError, match="ignore_label=1 is one of the 2 classes"):
        ArrayDataset([np.zeros((8, 8))], [np.zeros((8, 8), np.uint8)], label_kind="semantic", ignore_label=1)


def test_a_label_annotated_nowhere_and_negative_values_are_refused_naming_the_image():
    data = ArrayDataset([np.zeros((8, 8))], [np.full((8, 8), IGNORED, np.uint8)], names=["empty"],
                        ignore_label=IGNORED)
    with pytest.raises(ValueError, match="'empty' is ignore_label=255 everywhere"):
        data[0]
    negative = np.zeros((8, 8), np.int16)
    negative[0, 0], negative[1, 1] = -1, -2
    with pytest.raises(ValueError, match=r"negative values \(e.g. -2\).*ignore_label=-1"):
        ArrayDataset([np.zeros((8, 8))], [negative], ignore_label=-1)[0]


def test_without_ignored_objects_drops_objects_mostly_unannotated_per_image():
    predicted = np.zeros((2, 10, 10), np.int32)
    predicted[0, 0:2, 0:5] = 1      # 10 px, 6 unannotated: dropped
    predicted[0, 5:7, 0:5] = 2      # 10 px, 5 unannotated: kept (not more than half)
    predicted[1, 0:2, 0:5] = 1      # the same id in the second image, all annotated: kept
    ignored = np.zeros((2, 10, 10), bool)
    ignored[0, 0:2, 0:3] = True
    ignored[0, 0, 3] = True
    ignored[0, 5:7, 0:2] = True
    ignored[0, 5, 2] = True
    kept = without_ignored_objects(torch.from_numpy(predicted), ignored)
    assert set(np.unique(kept[0])) == {0, 2} and np.count_nonzero(kept[0] == 2) == 10
    np.testing.assert_array_equal(kept[1], predicted[1])
    np.testing.assert_array_equal(without_ignored_objects(predicted, np.zeros_like(ignored)), predicted)
    with pytest.raises(ValueError, match="ignored must have the prediction's shape"):
        without_ignored_objects(predicted, ignored[0])


def test_scores_leave_unannotated_pixels_and_the_objects_in_them_out():
    truth = np.zeros((20, 20), np.int32)
    truth[2:6, 2:6] = 1
    truth[2:6, 10:14] = 2
    ignored = np.zeros((20, 20), bool)
    ignored[12:, :] = True
    predicted = np.zeros((20, 20), np.int32)
    predicted[2:6, 2:6] = 1            # right
    predicted[2:6, 10:14] = 2          # right
    predicted[14:18, 4:8] = 3          # a nucleus nobody annotated: no false positive
    predicted[10:14, 15:19] = 4        # half in annotated background: a false positive
    scores = score_instances(predicted, truth, "x", ignored)
    assert (scores.true_positives, scores.false_positives, scores.false_negatives) == (2, 1, 0)
    assert scores.iou == pytest.approx(32 / (32 + 8))   # object 4's 8 annotated pixels are the only error
    unmasked = score_instances(predicted, truth, "x")
    assert (unmasked.false_positives, unmasked.iou) == (2, pytest.approx(32 / 64))


def _folders(tmp_path, label):
    rng = np.random.default_rng(0)
    for sub in ("images", "labels"):
        (tmp_path / sub).mkdir()
    image = (rng.random((64, 64)) * 100).astype(np.uint16)
    image[label > 0] += 500
    tifffile.imwrite(tmp_path / "images" / "a.tif", image)
    tifffile.imwrite(tmp_path / "labels" / "a.tif", label)


def _label64():
    label = np.zeros((64, 64), np.uint16)
    for i, (y, x) in enumerate([(10, 10), (10, 30), (30, 12), (40, 40)], start=1):
        label[y - 5:y + 5, x - 5:x + 5] = i
    label[50:, :] = 65535
    return label


def test_train_cli_takes_ignore_label_records_it_and_refuses_another_on_resume(tmp_path, capsys):
    _folders(tmp_path, _label64())
    model = tmp_path / "m.safetensors"
    common = ["train", "--images", str(tmp_path / "images"), "--labels", str(tmp_path / "labels"), "--depth", "2",
              "--base-channels", "4", "--tiles-per-epoch", "2", "--batch-size", "2", "--no-progress"]
    assert cli.main(common + ["-o", str(model), "--epochs", "1", "--ignore-label", "65535"]) == 0
    record = json.loads((tmp_path / "m" / "training-images.json").read_text())
    assert record["ignore_label"] == 65535
    capsys.readouterr()
    resume = ["--resume", str(tmp_path / "m" / "last.safetensors"), "-o", str(tmp_path / "m2.safetensors"),
              "--work-dir", str(tmp_path / "m"), "--epochs", "2"]
    assert cli.main(common + resume) == 2
    err = capsys.readouterr().err
    assert "--ignore-label" in err and "65535" in err and "Traceback" not in err


def test_train_cli_warns_when_no_label_holds_the_ignore_label(tmp_path, capsys):
    _folders(tmp_path, _label64())
    assert cli.main(["train", "--images", str(tmp_path / "images"), "--labels", str(tmp_path / "labels"),
                     "-o", str(tmp_path / "m.safetensors"), "--ignore-label", "255", "--depth", "2",
                     "--base-channels", "4", "--tiles-per-epoch", "1", "--batch-size", "1", "--epochs", "1",
                     "--no-progress"]) == 0
    assert "no training label image holds --ignore-label 255: every pixel counts as annotated" in \
        capsys.readouterr().err


def test_the_train_command_warns_of_an_unused_ignore_label_once(tmp_path, capsys, recwarn):
    """The command says it (rank 0, of every image) and silences the training tiles' own warning of it."""
    from unet_fast.data import IgnoreLabelUnusedWarning

    _folders(tmp_path, _label64())
    assert cli.main(["train", "--images", str(tmp_path / "images"), "--labels", str(tmp_path / "labels"),
                     "-o", str(tmp_path / "m.safetensors"), "--ignore-label", "255", "--depth", "2",
                     "--base-channels", "4", "--tiles-per-epoch", "1", "--batch-size", "1", "--epochs", "1",
                     "--no-progress"]) == 0
    assert capsys.readouterr().err.count("ignore") == 1
    assert not [w for w in recwarn if issubclass(w.category, IgnoreLabelUnusedWarning)]


def test_training_tiles_warn_when_no_label_holds_the_ignore_label():
    """From Python (fit, RandomTiles) as from the command: a mistyped value (256 for 255) would train every
    unannotated pixel as background without a word. A dataset that holds it, or sets none, warns nothing."""
    import warnings

    from unet_fast.data import IgnoreLabelUnusedWarning

    label = np.zeros((30, 31), np.uint8)
    label[5:12, 5:12] = 1
    with pytest.warns(IgnoreLabelUnusedWarning, match="no label image of the dataset holds ignore_label=256"):
        RandomTiles(ArrayDataset([np.zeros((30, 31))] * 2, [label] * 2, ignore_label=256), 28, depth=2)
    sparse = label.copy()
    sparse[20:] = 255
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        RandomTiles(ArrayDataset([np.zeros((30, 31))] * 2, [label, sparse], ignore_label=255), 28, depth=2)
        RandomTiles(ArrayDataset([np.zeros((30, 31))], [label]), 28, depth=2)


def test_train_cli_refuses_ignore_label_zero_naming_the_flag(tmp_path, capsys):
    _folders(tmp_path, _label64())
    code = cli.main(["train", "--images", str(tmp_path / "images"), "--labels", str(tmp_path / "labels"),
                     "-o", str(tmp_path / "m.safetensors"), "--ignore-label", "0", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "--ignore-label" in err and "background" in err and "Traceback" not in err
    assert not (tmp_path / "m.safetensors").exists()


def test_instance_ids_beyond_int32_leave_unannotated_pixels_out_of_every_object():
    """uint64 ids int32 cannot hold are renumbered 1..n: the unannotated pixels (no 0 among the annotated values)
    stayed behind as object 1, which grew into them and cut object 2's annotated pixels off as a border."""
    huge = np.full((20, 20), 2 ** 64 - 1, np.uint64)
    huge[:10, :10], huge[:10, 10:] = 2 ** 40, 2 ** 40 + 1
    small = np.where(huge == 2 ** 64 - 1, 255, huge - 2 ** 40 + 1).astype(np.uint16)   # the same objects as 1, 2
    big = ArrayDataset([np.zeros((20, 20))], [huge], ignore_label=2 ** 64 - 1)[0]
    ref = ArrayDataset([np.zeros((20, 20))], [small], ignore_label=255)[0]
    assert np.all(big.instances[10:] == 0)
    np.testing.assert_array_equal(big.instances, ref.instances)
    np.testing.assert_array_equal(big.target, ref.target)
    np.testing.assert_allclose(big.weights, ref.weights)


def test_the_weight_map_takes_ignored_pixels_as_background_whatever_the_labels_hold_there():
    label = np.zeros((20, 20), np.int32)
    label[:4, :4] = 1
    label[10:, :] = 7                       # the raw label value of the unannotated pixels, not zeroed
    ignored = label == 7
    weights = unet_weight_map(label, ignored=ignored, w0=1e-30)
    np.testing.assert_allclose(weights, unet_weight_map(np.where(ignored, 0, label), ignored=ignored, w0=1e-30))
    assert weights[~ignored].mean() == pytest.approx(1.0, rel=1e-5)


def test_score_instances_takes_ignored_pixels_as_no_true_object_whatever_the_truth_holds_there():
    truth = np.zeros((20, 20), np.int32)
    truth[2:6, 2:6] = 1
    truth[12:, :] = 65535                   # the raw label, its unannotated value not zeroed
    ignored = truth == 65535
    predicted = np.zeros((20, 20), np.int32)
    predicted[2:6, 2:6] = 1
    scores = score_instances(predicted, truth, "x", ignored)
    assert (scores.true_positives, scores.false_positives, scores.false_negatives) == (1, 0, 0)
    assert scores.true_objects == 1 and scores.rand_error == pytest.approx(0.0)


def _threshold_images():
    from toy_models import Threshold

    label = np.zeros((32, 32), np.int16)
    label[4:10, 4:10] = 1
    label[20:, :] = -1
    image = (label > 0).astype(np.float32)
    return Threshold(), image, label


def test_evaluate_refuses_a_label_annotated_nowhere_rather_than_score_it_perfect():
    """An image nobody annotated has no truth: it scored precision, recall, F1 and AP 1.0 and raised the means."""
    from unet_fast.checks import BadArgument
    from unet_fast.evaluation import evaluate_model

    model, image, label = _threshold_images()
    with pytest.raises(BadArgument, match="'image1' are ignore_label=-1 everywhere") as error:
        evaluate_model(model, [image, image], [label, np.full_like(label, -1)], ignore_label=-1)
    assert error.value.argument == "labels"
    assert evaluate_model(model, [image], [label], ignore_label=-1).images[0].f1 == 1.0


def test_evaluate_warns_when_no_label_holds_the_ignore_label():
    """--ignore-label 255 on labels whose unannotated pixels are 65535 (or 65535 on uint8 labels, which cannot
    hold it) scored every unannotated pixel as background without a word (train warns)."""
    import warnings

    from unet_fast.evaluation import evaluate_model

    model, image, label = _threshold_images()
    with pytest.warns(UserWarning, match="no label image holds ignore_label=255"):
        evaluate_model(model, [image], [np.where(label < 0, 65535, label).astype(np.uint16)], ignore_label=255)
    with pytest.warns(UserWarning, match="no label image holds ignore_label=65535"):
        evaluate_model(model, [image], [np.where(label < 0, 255, label).astype(np.uint8)], ignore_label=65535)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        evaluate_model(model, [image], [label], ignore_label=-1)


def _evaluate_with_an_unused_ignore_label(folder):
    import sys

    import unet_fast

    folder = Path(folder)
    _folders(folder, _label64())
    unet_fast.save_model(unet_fast.UNet(depth=2, base_channels=4), folder / "m.safetensors")
    return [sys.executable, "-m", "unet_fast.cli", "evaluate", "-m", str(folder / "m.safetensors"),
            "--images", str(folder / "images"), "--labels", str(folder / "labels"),
            "--ignore-label", "255", "-o", str(folder / "eval"), "--no-progress"], {}, None


UNUSED_IGNORE_LABEL = ahead.Command("evaluate-unused-ignore-label", _evaluate_with_an_unused_ignore_label, timeout=300)


@UNUSED_IGNORE_LABEL.mark
def test_the_evaluate_command_shows_its_warning_as_one_line():
    """The warning came as Python's form: a source path, a line number and a code line."""
    done = UNUSED_IGNORE_LABEL.result().done
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if "warning" in line.lower()]
    assert lines == ["unet-fast evaluate: warning: no label image holds ignore_label=255 (--ignore-label): every "
                     "pixel counts as annotated; check the value your annotation tool wrote"], done.stderr


def test_training_tiles_of_sparse_labels_are_placed_around_annotated_pixels():
    """Drawn uniformly, 94 % of these tiles held unannotated pixels only: a zero loss, a wasted step."""
    rng = np.random.default_rng(2)
    label = np.full((300, 300), IGNORED, np.uint8)
    label[:40, 250:] = 0
    label[10:25, 260:280] = 1
    small = np.full((20, 30), IGNORED, np.uint8)           # smaller than a tile's output: centred, as before
    small[5:8, 5:8] = 0
    data = ArrayDataset([rng.random((300, 300)), rng.random((20, 30))], [label, small], ignore_label=IGNORED)
    tiles = RandomTiles(data, 44, depth=2, tiles_per_epoch=120, seed=1)
    seen = [tiles[i][1] for i in range(len(tiles))]
    assert all(bool(np.any(target.numpy() != IGNORE)) for target in seen)
    assert sum(bool(np.any(target.numpy() == 1)) for target in seen) > 30      # the nucleus is met often
    # augmented (rotations move pixels across the output's edge): still nearly all
    tiles = RandomTiles(data, 44, depth=2, tiles_per_epoch=120, augment=default_augmentation(), seed=1)
    assert sum(bool(np.any(tiles[i][1].numpy() != IGNORE)) for i in range(len(tiles))) >= 110
    # labels without unannotated pixels draw their tiles as before, whether or not ignore_label is set
    plain = [rng.random((60, 50))], [_instances().repeat(2, axis=0)[:60].copy()]
    plain[1][0][plain[1][0] == IGNORED] = 0
    before = RandomTiles(ArrayDataset(*plain), 44, depth=2, tiles_per_epoch=5, seed=4)
    after = RandomTiles(ArrayDataset(*plain, ignore_label=IGNORED), 44, depth=2, tiles_per_epoch=5, seed=4)
    for i in range(5):
        for a, b in zip(before[i], after[i]):
            assert torch.equal(a, b)
