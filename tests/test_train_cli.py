"""`unet-fast train`: every recipe value reaches fit through its own flag; validation sets, the time
limit and the best model; bad combinations of options."""
import numpy as np
import pytest
import tifffile

from unet_fast import Normalization, cli, load_model, train
from unet_fast.synthetic import synthetic_nuclei


@pytest.fixture
def folders(tmp_path):
    images, labels = synthetic_nuclei(3, 48, seed=0)
    for name, indices in (("train", [0, 1]), ("val", [2])):
        for kind in ("im", "lb"):
            (tmp_path / f"{name}_{kind}").mkdir()
        for i in indices:
            tifffile.imwrite(tmp_path / f"{name}_im" / f"n{i}.tif", (images[i] * 255).astype(np.uint8))
            tifffile.imwrite(tmp_path / f"{name}_lb" / f"n{i}.tif", labels[i].astype(np.uint16))
    return tmp_path


def _args(folders, *more):
    return ["train", "--images", str(folders / "train_im"), "--labels", str(folders / "train_lb"),
            "-o", str(folders / "model.safetensors"), "--work-dir", str(folders / "run"), *more]


def test_flags_override_the_recipe(folders, monkeypatch):
    seen = {}

    def fake_fit(model, train_data, val_data, **kwargs):
        seen.update(kwargs, model=model, val=val_data)
        return train.FitResult(model, [{"epoch": 1, "step": 3, "train_loss": 0.5}])

    monkeypatch.setattr(train, "fit", fake_fit)
    assert cli.main(_args(folders, "--recipe", "paper", "--optimizer", "adamw", "--lr", "0.003", "--warmup", "7",
                          "--lr-schedule", "cosine", "--weight-decay", "0.01", "--momentum", "0.8", "--epochs", "9",
                          "--tiles-per-epoch", "12", "--batch-size", "3", "--no-flips", "--rotation", "90",
                          "--elastic", "0", "--no-grey-values", "--noise", "0.05", "--depth", "2",
                          "--base-channels", "4", "--dropout", "0.1", "--w0", "5", "--sigma", "3",
                          "--time-limit", "0.5", "--percentiles", "2", "99", "--clip",
                          "--val-images", str(folders / "val_im"), "--val-labels", str(folders / "val_lb"),
                          "--best-metric", "iou", "--tile-size", "44")) == 0
    recipe = seen["recipe"]
    assert (recipe.name, recipe.optimizer, recipe.lr, recipe.warmup_steps, recipe.lr_schedule, recipe.weight_decay,
            recipe.momentum, recipe.epochs, recipe.tiles_per_epoch, recipe.batch_size) == \
        ("paper", "adamw", 0.003, 7, "cosine", 0.01, 0.8, 9, 12, 3)
    assert (recipe.flips, recipe.rotation, recipe.elastic_sigma, recipe.grey_values, recipe.noise) == \
        (False, "90", 0.0, False, 0.05)
    assert seen["model"].config()["depth"] == 2 and seen["model"].config()["dropout"] == 0.1
    assert seen["val"].weight_params["w0"] == 5.0 and seen["val"].weight_params["sigma"] == 3.0
    assert seen["val"].normalization == Normalization(low=2.0, high=99.0, clip=True) == recipe.normalization()
    assert load_model(folders / "model.safetensors").normalization == recipe.normalization()
    assert (seen["time_limit"], seen["best_metric"], seen["tile_size"], seen["augment"]) == (30.0, "iou", 44, "recipe")
    assert load_model(folders / "model.safetensors").metadata["recipe"]["optimizer"] == "adamw"


def test_default_recipe_end_to_end_with_validation_and_a_time_limit(folders, capsys):
    assert cli.main(_args(folders, "--depth", "2", "--base-channels", "4", "--tiles-per-epoch", "4",
                          "--epochs", "1000", "--time-limit", "0.01", "--val-images", str(folders / "val_im"),
                          "--val-labels", str(folders / "val_lb"))) == 0
    out, err = capsys.readouterr()
    assert err.startswith("preparing 2 training image(s)") and "\ntraining U-Net depth 2, base 4, valid padding" in err
    assert "on 2 image(s)" in err
    assert "validation on 1 image(s)" in err and "recipe default: adam" in err and "time limit 0.01 min" in err
    assert "step 1/1000 (epoch 1)" in err and "time limit of 0.01 min reached" in err
    assert "stopped by the time limit" in out and "best model" in out
    model = load_model(folders / "run" / "best.safetensors")
    assert model.depth == 2 and model.metadata["best_metric"] == "f1"
    assert load_model(folders / "model.safetensors").metadata["recipe"]["name"] == "default"


@pytest.mark.parametrize("more, message", [
    (["--val-images", "x"], "--val-images and --val-labels go together"),
    (["--val-images", "x", "--val-labels", "y", "--val-fraction", "0.5"], "exclude each other"),
    (["--time-limit", "-1"], "argument --time-limit: must be a number in (0, inf), got '-1'"),
    (["--lr", "0"], "argument --lr: must be a number in (0, inf), got '0'"),
    (["--warmup", "-3"], "argument --warmup: must be an integer >= 0, got '-3'"),
    (["--dropout", "1.5"], "argument --dropout: must be a number in [0, 1), got '1.5'"),
    (["--momentum", "1"], "argument --momentum: must be a number in [0, 1), got '1'"),
    (["--optimizer", "rmsprop"], "invalid choice"),
    (["--percentiles", "50", "20"], "argument --percentiles: percentiles must be (low, high)"),
    (["--percentiles", "1", "101"], "argument --percentiles: percentiles must be (low, high)"),
])
def test_bad_options_exit_with_usage(folders, capsys, more, message):
    """A usage error: exit status 2 (argparse's own errors exit, a BadArgument is main's return value)
    and one line naming the problem; nothing written."""
    try:
        status = cli.main(_args(folders, *more))
    except SystemExit as stop:
        status = stop.code
    err = capsys.readouterr().err
    assert status == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (folders / "run").exists() and not (folders / "model.safetensors").exists()
