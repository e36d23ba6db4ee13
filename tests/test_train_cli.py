"""`unet-fast train`: every recipe value reaches fit through its own flag; validation sets, the time
limit and the best model; bad combinations of options."""
import json
import shutil

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
                          "--elastic", "0", "--no-grey-values", "--noise", "0.05", "--imaging", "--zoom", "0.9", "1.2",
                          "--depth", "2",
                          "--base-channels", "4", "--dropout", "0.1", "--w0", "5", "--sigma", "3",
                          "--time-limit", "0.5", "--percentiles", "2", "99", "--clip",
                          "--val-images", str(folders / "val_im"), "--val-labels", str(folders / "val_lb"),
                          "--best-metric", "iou", "--tile-size", "44", "--class-weights", "none", "--dice", "0.5")) == 0
    recipe = seen["recipe"]
    assert (recipe.name, recipe.optimizer, recipe.lr, recipe.warmup_steps, recipe.lr_schedule, recipe.weight_decay,
            recipe.momentum, recipe.epochs, recipe.tiles_per_epoch, recipe.batch_size) == \
        ("paper", "adamw", 0.003, 7, "cosine", 0.01, 0.8, 9, 12, 3)
    assert (recipe.flips, recipe.rotation, recipe.elastic_sigma, recipe.grey_values, recipe.noise, recipe.dice,
            recipe.imaging) == (False, "90", 0.0, False, 0.05, 0.5, True)
    assert seen["model"].config()["depth"] == 2 and seen["model"].config()["dropout"] == 0.1
    assert seen["val"].weight_params["w0"] == 5.0 and seen["val"].weight_params["sigma"] == 3.0
    assert recipe.class_weights is None and seen["val"].weight_params["class_weights"] is None   # not dropped
    assert seen["val"].normalization == Normalization(low=2.0, high=99.0, clip=True) == recipe.normalization()
    assert load_model(folders / "model.safetensors").normalization == recipe.normalization()
    assert (seen["time_limit"], seen["best_metric"], seen["tile_size"], seen["augment"]) == (30.0, "iou", 44, "recipe")
    saved = load_model(folders / "model.safetensors").metadata["recipe"]
    assert (saved["optimizer"], saved["tile_size"], saved["dice"]) == ("adamw", 44, 0.5)  # the tile trained on
    assert (saved["imaging"], saved["gamma"], saved["zoom"]) == (True, [0.7, 1.4], [0.9, 1.2])
    assert recipe.zoom == (0.9, 1.2)
    assert cli.main(_args(folders, "--no-grey-values", "--gamma", "0.9", "1.2")) == 2   # a range nothing uses
    assert cli.main(_args(folders, "--gamma", "0.9", "1.2", "--epochs", "1", "--depth", "2", "--base-channels", "4",
                          "--tiles-per-epoch", "1", "--tile-size", "44", "--no-progress",
                          "-o", str(folders / "gamma.safetensors"))) == 0
    assert seen["recipe"].gamma == (0.9, 1.2)
    assert load_model(folders / "gamma.safetensors").metadata["recipe"]["gamma"] == [0.9, 1.2]


def test_default_recipe_end_to_end_with_validation_and_a_time_limit(folders, capsys):
    assert cli.main(_args(folders, "--depth", "2", "--base-channels", "4", "--tiles-per-epoch", "4",
                          "--epochs", "1000", "--time-limit", "0.01", "--val-images", str(folders / "val_im"),
                          "--val-labels", str(folders / "val_lb"))) == 0
    out, err = capsys.readouterr()
    assert err.startswith("preparing 2 training image(s)") and "\ntraining U-Net depth 2, base 4, valid padding" in err
    assert "on 2 image(s)" in err and "loss: weighted cross-entropy + 1 x soft Dice" in err
    assert "validation on 1 image(s)" in err and "recipe default: adam" in err and "time limit 0.01 min" in err
    assert "step 1/1000 (epoch 1)" in err and "time limit of 0.01 min reached" in err
    assert "stopped by the time limit" in out and "best model" in out
    model = load_model(folders / "run" / "best.safetensors")
    assert model.depth == 2 and model.metadata["best_metric"] == "f1"
    assert load_model(folders / "model.safetensors").metadata["recipe"]["name"] == "default"


def test_the_recorded_recipe_holds_the_tile_trained_on(folders):
    """--depth 5 makes the default recipe's 140 px tile illegal: training takes 188 px, and says so in the file."""
    assert cli.main(_args(folders, "--depth", "5", "--base-channels", "2", "--tiles-per-epoch", "1", "--batch-size",
                          "1", "--epochs", "1", "--no-progress")) == 0
    recorded = load_model(folders / "model.safetensors").metadata["recipe"]
    assert (recorded["depth"], recorded["tile_size"]) == (5, 188)


@pytest.mark.parametrize("more, message", [
    (["--val-images", "x"], "--val-images and --val-labels go together"),
    (["--val-images", "x", "--val-labels", "y", "--val-fraction", "0.5"], "exclude each other"),
    (["--time-limit", "-1"], "argument --time-limit: must be a number in (0, 1e+07), got '-1'"),
    (["--time-limit", "1e308"], "argument --time-limit: must be a number in (0, 1e+07), got '1e308'"),
    (["--lr", "0"], "argument --lr: must be a number in (0, 1000), got '0'"),
    (["--lr", "1e308"], "argument --lr: must be a number in (0, 1000), got '1e308'"),
    (["--w0", "1e308"], "argument --w0: must be a number in [0, 1e+06), got '1e308'"),
    (["--threads", "100000"], "argument --threads: must be an integer in [1, 1024], got '100000'"),
    (["--workers", "100000"], "argument --workers: must be an integer in [0, 256], got '100000'"),
    (["--tile-size", "100000"], "argument --tile-size: must be an integer in [1, 16384], got '100000'"),
    (["--warmup", "-3"], "argument --warmup: must be an integer >= 0, got '-3'"),
    (["--dropout", "1.5"], "argument --dropout: must be a number in [0, 1), got '1.5'"),
    (["--momentum", "1"], "argument --momentum: must be a number in [0, 1), got '1'"),
    (["--optimizer", "rmsprop"], "invalid choice"),
    (["--dice", "-1"], "argument --dice: must be a number in [0, 1e+06), got '-1'"),
    (["--dice", "nan"], "argument --dice: must be a number in [0, 1e+06), got 'nan'"),
    (["--percentiles", "50", "20"], "argument --percentiles: percentiles must be (low, high)"),
    (["--percentiles", "1", "101"], "argument --percentiles: percentiles must be (low, high)"),
    (["--zoom", "1.25", "0.8"], "argument --zoom: zoom must be a range of magnifications"),
    (["--zoom", "0", "1"], "argument --zoom: zoom must be a range of magnifications"),
    (["--no-augment", "--zoom", "0.8", "1.25"], "argument --zoom: sets an augmentation, which --no-augment turns off"),
    (["--no-augment", "--imaging"], "argument --imaging/--no-imaging: sets an augmentation, which --no-augment"),
    (["--no-augment", "--gamma", "0.5", "2"], "argument --gamma: sets an augmentation, which --no-augment turns off"),
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


# ---- resume, the work dir, the data checked up front (defects of a review)

def _tiny(folders, *more):
    return _args(folders, "--depth", "2", "--base-channels", "2", "--tiles-per-epoch", "1", "--batch-size", "1",
                 "--tile-size", "44", "--no-progress", *more)


def _rewrite_metadata(path, change):
    """Rewrite a checkpoint's metadata with ``change(metadata)``, as an older version would have written it."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as handle:
        metadata = dict(handle.metadata())
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    save_file(tensors, str(path), change(metadata))


def _rewrite_recipe(path, change):
    """Rewrite the recipe a checkpoint records: ``change(recipe)`` edits the dict in place."""
    import json

    def rewrite(metadata):
        recipe = json.loads(metadata["recipe"])
        change(recipe)
        return {**metadata, "recipe": json.dumps(recipe)}
    _rewrite_metadata(path, rewrite)


def _augmentations_built(monkeypatch) -> list:
    """The augmentation (a Compose, or None) each training run of this test builds from its recipe."""
    seen = []
    original = train._training_tiles
    monkeypatch.setattr(train, "_training_tiles", lambda model, data, recipe, *rest: seen.append(recipe.augmentation())
                        or original(model, data, recipe, *rest))
    return seen


def test_a_mistyped_resume_path_is_named_as_missing_not_as_another_runs(folders, capsys):
    """With the run's checkpoint in the work dir, a mistyped --resume said the work dir held "the checkpoint of
    another run"; a work dir given to --resume said nothing of the checkpoint in it."""
    assert cli.main(_tiny(folders, "--epochs", "1")) == 0
    capsys.readouterr()
    assert cli.main(_tiny(folders, "--epochs", "2", "--resume", str(folders / "run" / "lats.safetensors"))) == 2
    err = capsys.readouterr().err
    assert "--resume: " in err and "lats.safetensors" in err and "no such file" in err and "another run" not in err
    assert cli.main(_tiny(folders, "--epochs", "2", "--resume", str(folders / "run"))) == 2
    assert f"the checkpoint in it is '{folders / 'run' / 'last.safetensors'}'" in capsys.readouterr().err
    assert cli.main(_tiny(folders, "--epochs", "2", "--resume", str(folders / "train_im"))) == 2
    assert "a folder, not a checkpoint" in capsys.readouterr().err


def test_labels_that_look_like_intensity_images_are_warned_of(folders, capsys):
    """--images and --labels swapped trained every grey value as an object without a word."""
    assert cli.main(_tiny(folders, "--epochs", "1")) == 0
    assert "intensity images" not in capsys.readouterr().err
    swapped = ["train", "--images", str(folders / "train_lb"), "--labels", str(folders / "train_im"),
               "-o", str(folders / "swapped.safetensors"), "--work-dir", str(folders / "run2"), "--depth", "2",
               "--base-channels", "2", "--tiles-per-epoch", "1", "--batch-size", "1", "--tile-size", "44",
               "--no-progress", "--epochs", "1"]
    assert cli.main(swapped) == 0
    err = capsys.readouterr().err
    assert "train: warning: 2 training label image(s) look like intensity images, not labels: 'n0'" in err
    assert "fill a median" in err and "--images and --labels are not swapped" in err


def test_resume_takes_the_runs_recipe_and_network(folders, capsys):
    """The run's values come from the checkpoint: the saved model's recipe and normalisation are the run's,
    not the flags' defaults (a resume without --depth/--percentiles used to record depth 3, percentiles 1 99.8)."""
    assert cli.main(_tiny(folders, "--epochs", "1", "--percentiles", "2", "99", "--clip", "--optimizer", "sgd",
                          "--seed", "7")) == 0
    state = train.load_checkpoint(folders / "run" / "last.safetensors")
    assert state["recipe"]["optimizer"] == "sgd" and state["recipe"]["percentiles"] == [2.0, 99.0]
    assert state["num_classes"] == 2 and state["tile_size"] == 44 and state["seed"] == 7
    assert cli.main(["train", "--images", str(folders / "train_im"), "--labels", str(folders / "train_lb"),
                     "-o", str(folders / "model.safetensors"), "--work-dir", str(folders / "run"), "--no-progress",
                     "--resume", str(folders / "run" / "last.safetensors"), "--epochs", "2"]) == 0
    assert "(2 epochs, 2 steps" in capsys.readouterr().out
    model = load_model(folders / "model.safetensors")
    recipe = model.metadata["recipe"]
    assert (recipe["depth"], recipe["base_channels"], recipe["optimizer"], recipe["percentiles"], recipe["clip"],
            recipe["epochs"]) == (2, 2, "sgd", [2.0, 99.0], True, 2)
    assert model.depth == 2 and model.normalization == Normalization(low=2.0, high=99.0, clip=True)
    assert train.load_checkpoint(folders / "run" / "last.safetensors")["epoch"] == 2


def test_resume_takes_the_runs_amp_and_refuses_adding_it(folders, capsys, monkeypatch):
    """--amp is the run's own on --resume, as every other value: a resume of an --amp run without the flag trains
    on in bf16 autocast (it was refused by fit, or before amp was recorded went on in float32), and --amp on a run
    without it is refused naming the flag."""
    amps = []
    fit = train.fit
    monkeypatch.setattr(train, "fit", lambda *args, **kwargs: amps.append(kwargs["amp"]) or fit(*args, **kwargs))
    resume = ["--resume", str(folders / "run" / "last.safetensors"), "--epochs", "2"]
    assert cli.main(_tiny(folders, "--epochs", "1", "--amp")) == 0
    assert cli.main(_args(folders, "--no-progress", *resume)) == 0
    assert amps == [True, True] and train.load_checkpoint(folders / "run" / "last.safetensors")["amp"] is True
    plain = folders / "plain"
    assert cli.main(_tiny(folders, "--epochs", "1", "--work-dir", str(plain))) == 0
    capsys.readouterr()
    again = ["--resume", str(plain / "last.safetensors"), "--epochs", "2", "--work-dir", str(plain)]
    assert cli.main(_args(folders, "--no-progress", "--amp", *again)) == 2
    assert "trained with --amp False, got True" in capsys.readouterr().err
    assert train.load_checkpoint(plain / "last.safetensors")["epoch"] == 1


def test_resume_takes_the_runs_time_limit(folders, monkeypatch):
    """--time-limit is the run's own on --resume: without the flag a run that used its limit trains nothing (fit
    refuses none, where the rate would rise again to that of its step count); a larger one extends it."""
    limits = []
    fit = train.fit
    monkeypatch.setattr(train, "fit", lambda *args, **kwargs: limits.append(kwargs["time_limit"])
                        or fit(*args, **kwargs))
    resume = ["--resume", str(folders / "run" / "last.safetensors"), "--epochs", "1000"]
    assert cli.main(_tiny(folders, "--epochs", "1000", "--time-limit", "0.001")) == 0
    history = train.load_checkpoint(folders / "run" / "last.safetensors")["history"]
    assert cli.main(_args(folders, "--no-progress", *resume)) == 0
    assert limits == [0.06, 0.06] and train.load_checkpoint(folders / "run" / "last.safetensors")["history"] == history
    longer = resume[:2] + ["--epochs", str(len(history) + 1), "--time-limit", "10"]     # one epoch more
    assert cli.main(_args(folders, "--no-progress", *longer)) == 0
    assert limits[-1] == 600 and train.load_checkpoint(folders / "run" / "last.safetensors")["history"][:-1] == history


def test_resume_refuses_another_best_metric_naming_the_flag(folders, capsys):
    val = ["--val-images", str(folders / "val_im"), "--val-labels", str(folders / "val_lb")]
    assert cli.main(_tiny(folders, "--epochs", "1", "--best-metric", "iou", *val)) == 0
    capsys.readouterr()
    resume = ["--resume", str(folders / "run" / "last.safetensors"), "--epochs", "2", *val]
    assert cli.main(_args(folders, "--no-progress", "--best-metric", "loss", *resume)) == 2
    assert "trained with --best-metric 'iou', got 'loss'" in capsys.readouterr().err
    assert cli.main(_args(folders, "--no-progress", *resume)) == 0          # none given: the run's own
    assert load_model(folders / "run" / "best.safetensors").metadata["best_metric"] == "iou"


def test_resume_reads_checkpoints_without_a_recipe(folders):
    """Checkpoints written before the recipe was recorded still resume (the flags' recipe, the network's
    values from the checkpoint's model)."""
    assert cli.main(_tiny(folders, "--epochs", "1")) == 0
    path = folders / "run" / "last.safetensors"
    _rewrite_metadata(path, lambda metadata: {k: v for k, v in metadata.items()
                                              if k not in ("recipe", "num_classes", "tile_size")})
    assert train.load_checkpoint(path)["recipe"] is None
    assert cli.main(_args(folders, "--no-progress", "--tiles-per-epoch", "1", "--batch-size", "1", "--tile-size", "44",
                          "--resume", str(path), "--epochs", "2")) == 0
    assert load_model(folders / "model.safetensors").metadata["recipe"]["depth"] == 2


def test_resume_of_a_run_from_before_object_size_dice_and_imaging_refuses_them(folders, capsys):
    """Such a run trained on the images as they are, with cross-entropy alone, the first grey values and no
    imaging conditions: an --object-size, a --dice or --imaging would change it, so they are refused, not
    silently dropped; 0 (its own) is accepted, and the run goes on without a Dice term or imaging conditions
    although the default recipe has them."""
    assert cli.main(_tiny(folders, "--epochs", "1")) == 0
    path = folders / "run" / "last.safetensors"

    def before_these_fields(recipe):
        for name in ("object_size", "dice", "gamma", "imaging", "zoom"):
            del recipe[name]
    _rewrite_recipe(path, before_these_fields)
    capsys.readouterr()
    assert cli.main(_args(folders, "--no-progress", "--resume", str(path), "--epochs", "2", "--imaging")) == 2
    assert "argument --imaging/--no-imaging:" in capsys.readouterr().err      # the run trained without: refused
    assert cli.main(_args(folders, "--no-progress", "--resume", str(path), "--epochs", "2", "--zoom", "0.8",
                          "1.25")) == 2
    assert "argument --zoom:" in capsys.readouterr().err
    assert cli.main(_args(folders, "--no-progress", "--resume", str(path), "--epochs", "2", "--object-size", "30")) == 2
    assert "--object-size" in capsys.readouterr().err
    assert cli.main(_args(folders, "--no-progress", "--resume", str(path), "--epochs", "2", "--dice", "1")) == 2
    assert "argument --dice:" in capsys.readouterr().err
    assert cli.main(_args(folders, "--no-progress", "--resume", str(path), "--epochs", "2", "--object-size", "0",
                          "--dice", "0")) == 0
    resumed = load_model(folders / "model.safetensors").metadata["recipe"]
    assert (resumed["dice"], resumed["imaging"], resumed["gamma"], resumed["zoom"]) == \
        (0.0, False, [0.7, 1.4], [1.0, 1.0])


def test_no_augment_is_recorded_and_resumed_as_no_augmentation(folders, capsys, monkeypatch):
    """--no-augment trains on the tiles as they are, and the model file and checkpoint say so: a resume without
    the flag goes on without augmentation (it used to switch the recipe's back on), and a run trained with
    augmentation is not resumed without it."""
    seen = _augmentations_built(monkeypatch)
    assert cli.main(_tiny(folders, "--epochs", "1", "--no-augment")) == 0
    recorded = load_model(folders / "model.safetensors").metadata["recipe"]
    assert (recorded["flips"], recorded["rotation"], recorded["zoom"], recorded["elastic_sigma"],
            recorded["grey_values"], recorded["imaging"], recorded["noise"]) == \
        (False, "none", [1.0, 1.0], 0.0, False, False, 0.0)
    assert cli.main(_tiny(folders, "--epochs", "2", "--resume", str(folders / "run" / "last.safetensors"))) == 0
    assert seen == [None, None]
    assert load_model(folders / "model.safetensors").metadata["recipe"]["flips"] is False
    other = ["--work-dir", str(folders / "other"), "-o", str(folders / "other.safetensors")]
    assert cli.main(_tiny(folders, "--epochs", "1", *other)) == 0 and seen[-1] is not None
    capsys.readouterr()
    assert cli.main(_tiny(folders, "--epochs", "2", "--no-augment", *other,
                          "--resume", str(folders / "other" / "last.safetensors"))) == 2
    err = capsys.readouterr().err
    assert "argument --no-augment:" in err and "trained with augmentation" in err and len(err.strip().splitlines()) == 1


def test_a_no_augment_run_from_before_the_zoom_field_resumes_with_no_augment(folders, capsys, monkeypatch):
    """Such checkpoints recorded the recipe's augmentation although the run had none: with --no-augment the
    run goes on as it was (the flag is believed), without it as recorded."""
    seen = _augmentations_built(monkeypatch)
    assert cli.main(_tiny(folders, "--epochs", "1", "--no-augment")) == 0
    path = folders / "run" / "last.safetensors"

    def as_recorded_then(recipe):      # the recipe's augmentation, and no zoom field
        recipe.update(flips=True, rotation="90", elastic_sigma=7.0, grey_values=True)
        del recipe["zoom"]
    _rewrite_recipe(path, as_recorded_then)
    assert cli.main(_tiny(folders, "--epochs", "2", "--no-augment", "--resume", str(path))) == 0
    assert seen[-1] is None and load_model(folders / "model.safetensors").metadata["recipe"]["flips"] is False


def test_training_again_into_a_work_dir_with_a_checkpoint_needs_resume(folders, capsys):
    assert cli.main(_tiny(folders, "--epochs", "1")) == 0
    before = (folders / "run" / "last.safetensors").read_bytes()
    capsys.readouterr()
    assert cli.main(_tiny(folders, "--epochs", "1")) == 2
    err = capsys.readouterr().err
    assert "argument --work-dir:" in err and "pass --resume" in err and len(err.strip().splitlines()) == 1
    assert (folders / "run" / "last.safetensors").read_bytes() == before
    assert cli.main(_tiny(folders, "--epochs", "2", "--resume", str(folders / "run" / "last.safetensors"))) == 0


def test_a_new_run_never_replaces_the_files_a_work_dir_holds(folders, capsys):
    """-o the work dir's best model (replaced each epoch), or a work dir holding logs or a best model: refused."""
    (folders / "run").mkdir()
    arguments = _tiny(folders, "--epochs", "1")
    best = str(folders / "run" / "best.safetensors")
    assert cli.main([best if a == str(folders / "model.safetensors") else a for a in arguments]) == 2
    assert "argument -o/--output:" in capsys.readouterr().err and not (folders / "run" / "best.safetensors").exists()
    (folders / "run" / "history.csv").write_text("my own notes\n")
    assert cli.main(arguments) == 2
    err = capsys.readouterr().err
    assert "argument --work-dir:" in err and "holds history.csv, which this run would replace" in err
    assert (folders / "run" / "history.csv").read_text() == "my own notes\n"
    (folders / "run" / "history.csv").unlink()
    (folders / "model.safetensors").write_bytes(b"not a model, but someone's file")
    assert cli.main(arguments) == 2
    assert "exists and is no unet_fast model file" in capsys.readouterr().err
    (folders / "model.safetensors").unlink()
    assert cli.main(arguments) == 0
    shutil.rmtree(folders / "run")
    assert cli.main(arguments) == 0          # a model file of an earlier run is replaced


def test_a_resume_on_other_images_or_another_split_is_refused(folders, capsys):
    """Leaving out --val-fraction on resume trained on the held-out images (and stopped validating): refused."""
    for i in range(2, 4):                                   # four training images, one held out
        tifffile.imwrite(folders / "train_im" / f"m{i}.tif", tifffile.imread(folders / "train_im" / "n0.tif"))
        tifffile.imwrite(folders / "train_lb" / f"m{i}.tif", tifffile.imread(folders / "train_lb" / "n0.tif"))
    assert cli.main(_tiny(folders, "--epochs", "1", "--val-fraction", "0.25")) == 0
    recorded = json.loads((folders / "run" / "training-images.json").read_text())
    assert len(recorded["training"]) == 3 and len(recorded["validation"]) == 1
    resume = ["--epochs", "2", "--resume", str(folders / "run" / "last.safetensors")]
    assert cli.main(_tiny(folders, *resume)) == 2
    err = capsys.readouterr().err
    assert "argument --resume:" in err and "training: 1 added, 0 left out; validation: 0 added, 1 left out" in err
    assert cli.main(_tiny(folders, *resume, "--val-fraction", "0.25")) == 0


@pytest.mark.parametrize("key, value, named", [
    ("world_size", "300000000", "world_size"), ("world_size", "-1", "world_size"), ("epoch", "-3", "epoch"),
    ("history", "{}", "history"), ("tile_size", "1e3", "tile_size"), ("seed", '"x"', "seed"),
    ("recipe", "[1]", "recipe"), ("epoch", "not json", "JSONDecodeError")])
def test_a_crafted_checkpoint_is_refused_before_it_is_used(folders, capsys, key, value, named):
    """A checkpoint is untrusted input: a world_size of 3e8 made a list of 3e8 dicts (7 GB), epoch -3 trained
    6 epochs, a history {} failed after a whole epoch; each is now one line naming the value, before any work."""
    assert cli.main(_tiny(folders, "--epochs", "1")) == 0
    last = folders / "run" / "last.safetensors"
    _rewrite_metadata(last, lambda metadata: {**metadata, key: value})
    with pytest.raises(ValueError, match=f"is damaged or was not written by unet_fast: .*{named}"):
        train.load_checkpoint(last)
    capsys.readouterr()
    assert cli.main(_tiny(folders, "--epochs", "2", "--resume", str(last))) == 2
    assert "argument --resume:" in capsys.readouterr().err


@pytest.mark.parametrize("field, value, message", [
    ("lr", "x", "lr must be a number, got 'x'"), ("flips", 1, "flips must be True or False, got 1"),
    ("sigma", None, "sigma must be a number, got None")])
def test_a_checkpoint_recipe_of_the_wrong_types_is_refused_naming_the_field(folders, capsys, field, value, message):
    """lr "x" in a checkpoint's recipe gave "argument --resume: '>' not supported between instances of 'str' and
    'int'", naming neither the file's field nor what it must be."""
    assert cli.main(_tiny(folders, "--epochs", "1")) == 0
    last = folders / "run" / "last.safetensors"
    _rewrite_recipe(last, lambda recipe: recipe.update({field: value}))
    capsys.readouterr()
    assert cli.main(_tiny(folders, "--epochs", "2", "--resume", str(last))) == 2
    err = capsys.readouterr().err
    assert "argument --resume:" in err and message in err


def test_labels_without_background_anywhere_warn(folders, capsys):
    """Background saved as 1 (objects 2, 3, ...): every pixel is an object, and the network learns no background;
    one crop filled by objects is fine, every label image without a 0 is not."""
    assert cli.main(_tiny(folders, "--epochs", "1")) == 0
    assert "holds background" not in capsys.readouterr().err
    for path in (folders / "train_lb").iterdir():
        tifffile.imwrite(path, tifffile.imread(path) + 1)
    assert cli.main(_tiny(folders, "--epochs", "1", "--work-dir", str(folders / "other"))) == 0
    assert "no training label image holds background (0) anywhere" in capsys.readouterr().err


def test_fit_refuses_to_resume_with_another_optimizer(folders):
    """In Python too: another optimizer is a clear ValueError, not a KeyError from the optimizer's state."""
    from unet_fast import UNet
    from unet_fast.data import ImageFolderDataset

    data = ImageFolderDataset(folders / "train_im", folders / "train_lb")
    options = dict(recipe="default", epochs=1, tile_size=44, tiles_per_epoch=1, batch_size=1,
                   checkpoint_dir=folders / "run", progress=False)
    train.fit(UNet(depth=2, base_channels=2), data, **options)
    with pytest.raises(ValueError, match="optimizer 'adam' -> 'sgd'.*same run"):
        train.fit(UNet(depth=2, base_channels=2), data, **{**options, "epochs": 2},
                  resume=folders / "run" / "last.safetensors", optimizer="sgd")


def test_a_run_resumed_into_another_work_dir_starts_with_its_best_model(folders, monkeypatch, capsys):
    """The new work dir had no best model until the score improved; a resumed run that never improved ended
    naming none, while its best model sat in the first work dir."""
    val = ["--val-images", str(folders / "val_im"), "--val-labels", str(folders / "val_lb")]
    assert cli.main(_tiny(folders, "--epochs", "2", *val)) == 0
    first = (folders / "run" / "best.safetensors").read_bytes()
    monkeypatch.setattr(train, "_is_best", lambda history, metric: False)     # the resumed epochs never improve
    capsys.readouterr()
    assert cli.main(_tiny(folders, "--epochs", "3", *val, "--resume", str(folders / "run" / "last.safetensors"),
                          "--work-dir", str(folders / "run2"))) == 0
    assert (folders / "run2" / "best.safetensors").read_bytes() == first
    assert f"best model {folders / 'run2' / 'best.safetensors'}" in capsys.readouterr().out
    # a best model of an epoch the checkpoint does not hold (killed between the two writes) is not this run's
    _rewrite_metadata(folders / "run" / "best.safetensors", lambda metadata: {
        **metadata, "unet_fast": metadata["unet_fast"].replace('"epoch": ', '"epoch": 1', 1)})   # epoch 1x
    assert cli.main(_tiny(folders, "--epochs", "3", *val, "--resume", str(folders / "run" / "last.safetensors"),
                          "--work-dir", str(folders / "run3"))) == 0
    assert not (folders / "run3" / "best.safetensors").exists()


def test_labels_without_objects_warn(folders, monkeypatch, capsys):
    tifffile.imwrite(folders / "train_lb" / "n1.tif", np.zeros((48, 48), np.uint16))
    tifffile.imwrite(folders / "val_lb" / "n2.tif", np.zeros((48, 48), np.uint16))
    monkeypatch.setattr(train, "fit", lambda model, *a, **k: train.FitResult(model, []))
    assert cli.main(_tiny(folders, "--val-images", str(folders / "val_im"), "--val-labels",
                          str(folders / "val_lb"))) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 2
    assert "1 training label image(s) hold no object: n1" in warnings[0]
    assert "1 validation label image(s) hold no object: n2" in warnings[1] and "NaN" in warnings[1]


@pytest.mark.parametrize("bad, message", [
    (lambda label: label.astype(np.int32) - 1, "negative values"),
    (lambda label: label.astype(np.float32) / 2, "non-integer values"),
    (lambda label: np.where(label > 0, np.inf, 0).astype(np.float32), "non-integer values (e.g. inf)"),
    (lambda label: label.astype(np.complex64), "complex64"),
])
def test_labels_that_cannot_train_are_refused_before_their_objects_are_measured(folders, capsys, bad, message):
    """The object-size line ("objects in the labels: median diameter ...") measured labels the run then refused:
    the refusal now comes first, and alone."""
    tifffile.imwrite(folders / "train_lb" / "n1.tif", bad(tifffile.imread(folders / "train_lb" / "n1.tif")))
    assert cli.main(_args(folders, "--epochs", "1")) == 2
    out, err = capsys.readouterr()
    assert "objects in the labels" not in out and message in err and "label of 'n1'" in err
    assert not (folders / "model.safetensors").exists()


def test_validation_of_images_without_objects_is_nan_not_perfect():
    """An image with no true and no predicted object scores nothing (not IoU and F1 1.0): left out of the
    pooled counts; with no object anywhere, IoU and F1 are NaN."""
    import math

    import torch

    from unet_fast import UNet
    from unet_fast.data import ArrayDataset
    from unet_fast.validation import evaluate

    model = UNet(depth=2, base_channels=2)
    with torch.no_grad():
        model.head.bias.copy_(torch.tensor([20.0, -20.0]))       # predicts background everywhere
    images, labels = synthetic_nuclei(1, 48, seed=0)
    empty = ArrayDataset([images[0]], [np.zeros((48, 48), np.int32)])
    scores = evaluate(model, empty)
    assert math.isnan(scores["iou"]) and math.isnan(scores["object_f1"])
    alone = evaluate(model, ArrayDataset([images[0]], [labels[0]]))
    both = evaluate(model, ArrayDataset([images[0], images[0]], [labels[0], np.zeros((48, 48), np.int32)]))
    assert (alone["iou"], alone["object_f1"]) == (both["iou"], both["object_f1"]) == (0.0, 0.0)


def test_validation_scores_the_objects_evaluate_scores():
    """fit's validation (best.safetensors is chosen by it) makes objects by the same rules, smoothing included,
    as ``evaluate_model`` and ``segment --output instances``: the same pooled IoU and object F1."""
    import torch

    from unet_fast import UNet
    from unet_fast.inference import predict_tiled
    from unet_fast.data import ArrayDataset
    from unet_fast.evaluation import evaluate_model
    from unet_fast.instances import InstanceOptions
    from unet_fast.normalization import Normalization
    from unet_fast.validation import evaluate

    torch.manual_seed(1)
    model = UNet(depth=2, base_channels=4)
    images, labels = synthetic_nuclei(2, 60, seed=4)
    images = [image.astype(np.float32) for image in images]
    none = Normalization(mode="none")
    logits = predict_tiled(model, images[0], output="logits", progress=False, normalization=none)
    with torch.no_grad():                       # about half the pixels foreground
        model.head.bias[1] -= float(np.median(logits[1] - logits[0]))
    model.normalization = none
    data = ArrayDataset(images, labels, normalization=none)
    for options in (None, InstanceOptions(smoothing=0), InstanceOptions(smoothing=3, split=None)):
        scores = evaluate(model, data, instance_options=options)
        pooled = evaluate_model(model, images, labels, instance_options=options)
        predicted = [predict_tiled(model, image, output="instances", instance_options=options,
                                             progress=False) for image in images]
        union = sum(np.sum((p > 0) | (t > 0)) for p, t in zip(predicted, labels))
        assert scores["iou"] == pytest.approx(sum(np.sum((p > 0) & (t > 0)) for p, t in zip(predicted, labels)) / union)
        assert scores["object_f1"] == pytest.approx(pooled.pooled.f1)
    assert evaluate(model, data)["iou"] != evaluate(model, data, instance_options=InstanceOptions(smoothing=0))["iou"]


def test_a_val_fraction_of_one_image_is_refused_before_the_labels_are_read(folders, capsys):
    """It was refused only after every label was read and its objects measured (and that line printed)."""
    code = cli.main(["train", "--images", str(folders / "val_im"), "--labels", str(folders / "val_lb"), "-o",
                     str(folders / "one.safetensors"), "--val-fraction", "0.2", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 2 and "argument --val-fraction: --val-fraction 0.2 needs at least 2 labelled images to split, " \
                         "got 1" in captured.err
    assert "objects in the labels" not in captured.out + captured.err


def test_a_second_run_into_a_work_dir_in_use_is_refused(folders, capsys):
    """Two runs started together into one work dir both found it free of checkpoints and logs, then wrote their
    checkpoints, logs and image records over each other's (the model too); now the first holds the folder and the
    second is refused, writing nothing."""
    import fcntl
    import os

    work_dir = folders / "run"
    work_dir.mkdir()
    running = os.open(work_dir, os.O_RDONLY)       # what the first run holds while it trains
    try:
        fcntl.flock(running, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert cli.main(_tiny(folders, "--epochs", "1")) == 2
        err = capsys.readouterr().err
        assert "argument --work-dir: " in err and "is the work dir of another unet-fast train, which is running" in err
        assert list(work_dir.iterdir()) == [] and not (folders / "model.safetensors").exists()
    finally:
        os.close(running)
    assert cli.main(_tiny(folders, "--epochs", "1")) == 0     # held no longer: and a run lets it go when it ends
    assert cli.main(_tiny(folders, "--epochs", "2", "--resume", str(work_dir / "last.safetensors"))) == 0


def test_a_resume_into_another_runs_work_dir_is_refused_and_into_a_new_one_records_its_images(folders, capsys):
    """--resume A/last.safetensors with a work dir B holding another run replaced B's checkpoint and logs, and
    called B's best model (trained on other images) this run's best; a resume into a new work dir recorded no
    images there, so resuming from it again was not checked."""
    val = ["--val-images", str(folders / "val_im"), "--val-labels", str(folders / "val_lb")]
    assert cli.main(_tiny(folders, "--epochs", "1", *val)) == 0
    other = ["--work-dir", str(folders / "other"), "-o", str(folders / "other.safetensors")]
    assert cli.main(_tiny(folders, "--epochs", "1", *other)) == 0
    before = {path.name: path.read_bytes() for path in (folders / "other").iterdir()}
    capsys.readouterr()
    resume = ["--resume", str(folders / "run" / "last.safetensors")]
    assert cli.main(_tiny(folders, "--epochs", "2", *val, *resume, *other)) == 2
    err = capsys.readouterr().err
    assert "argument --work-dir: " in err and "is the checkpoint of another run than --resume's" in err
    assert {path.name: path.read_bytes() for path in (folders / "other").iterdir()} == before
    fork = ["--work-dir", str(folders / "fork"), "-o", str(folders / "fork.safetensors")]
    assert cli.main(_tiny(folders, "--epochs", "2", *val, *resume, *fork)) == 0
    assert json.loads((folders / "fork" / "training-images.json").read_text()) == \
        json.loads((folders / "run" / "training-images.json").read_text())
    assert cli.main(_tiny(folders, "--epochs", "3", *fork, "--resume", str(folders / "fork" / "last.safetensors"))) == 2
    err = capsys.readouterr().err
    assert "argument --resume: " in err and "validation: 0 added, 1 left out" in err
