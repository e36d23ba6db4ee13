"""The built-in example in its quick mode, and the train/demo command lines (tiny runs)."""
import csv

import numpy as np
import pytest
import tifffile
from PIL import Image

from unet_fast import cli, demo, load_model
from unet_fast.demo import DemoResult, run
from unet_fast.synthetic import synthetic_nuclei
from optional_deps import needs_zarr


def test_demo_quick_writes_picture_and_model(tmp_path):
    result = run(tmp_path, quick=True, progress=False, log=lambda *_: None)
    assert 0 <= result.iou <= 1 and 0 <= result.object_f1 <= 1
    with Image.open(result.figure) as picture:
        assert picture.format == "PNG" and picture.width > 3 * picture.height
    model = load_model(result.model)
    assert model.depth == 3 and model.class_names == ["background", "nucleus"]
    assert (tmp_path / "heldout.tif").is_file() and (tmp_path / "history.csv").is_file()


def test_the_demo_held_out_image_scores_with_evaluate_as_the_demo_scored_it(tmp_path, capsys):
    """The demo printed its F1 "as unet-fast evaluate scores your own images", but wrote no labels to do so."""
    result = run(tmp_path, quick=True, progress=False, log=lambda *_: None)
    assert cli.main(["evaluate", "-m", str(result.model), "--images", str(tmp_path / "heldout.tif"), "--labels",
                     str(tmp_path / "heldout_labels.tif"), "-o", str(tmp_path / "eval"), "--no-progress"]) == 0
    row = next(csv.DictReader(open(tmp_path / "eval" / "evaluation.csv")))
    assert float(row["iou"]) == pytest.approx(result.iou, abs=1e-6)
    assert float(row["f1"]) == pytest.approx(result.object_f1, abs=1e-6)
    _, truth = synthetic_nuclei(1, demo.QUICK["test_size"], seed=1000)          # the held-out nuclei, all of them
    assert int(row["true_objects"]) == len(np.unique(truth[truth > 0])) > 5


def test_cli_demo_quick(tmp_path, capsys):
    assert cli.main(["demo", "--quick", "-o", str(tmp_path), "--no-progress"]) == 0
    assert "foreground IoU" in capsys.readouterr().out
    assert (tmp_path / "demo.png").is_file()


@pytest.mark.parametrize("iou, f1, status, messages", [
    (0.90, 0.90, 0, []),
    (0.90, 0.50, 1, ["object F1 0.500 is below the demo's target of 0.8"]),
    (0.80, 0.50, 1, ["foreground IoU 0.800 is below the demo's target of 0.85", "object F1 0.500"]),
])
def test_cli_demo_fails_below_its_targets(tmp_path, capsys, monkeypatch, iou, f1, status, messages):
    scored = DemoResult(iou, f1, 1.0, 1.0, tmp_path / "demo.png", tmp_path / "model.safetensors", [])
    monkeypatch.setattr(demo, "run", lambda *args, **kwargs: scored)
    assert cli.main(["demo", "-o", str(tmp_path), "--no-progress"]) == status
    err = capsys.readouterr().err
    assert all(message in err for message in messages) and (messages or "below" not in err)


@needs_zarr
def test_cli_train_folder_then_resume(tmp_path, capsys):
    images, labels = synthetic_nuclei(3, 48, seed=0)
    (tmp_path / "im").mkdir()
    (tmp_path / "lb").mkdir()
    for i in range(3):
        tifffile.imwrite(tmp_path / "im" / f"n{i}.tif", (images[i] * 255).astype(np.uint8))
        tifffile.imwrite(tmp_path / "lb" / f"n{i}.tif", labels[i].astype(np.uint16))
    common = ["train", "--images", str(tmp_path / "im"), "--labels", str(tmp_path / "lb"), "--depth", "2",
              "--base-channels", "4", "--tile-size", "44", "--tiles-per-epoch", "2", "--val-fraction", "0.34",
              "--no-progress", "--work-dir", str(tmp_path / "run")]
    assert cli.main(common + ["-o", str(tmp_path / "a.safetensors"), "--epochs", "1"]) == 0
    assert cli.main(common + ["-o", str(tmp_path / "b.safetensors"), "--epochs", "2",
                              "--resume", str(tmp_path / "run" / "last.safetensors")]) == 0
    out = capsys.readouterr().out
    assert "val_iou" in out
    model = load_model(tmp_path / "b.safetensors")
    assert model.depth == 2 and model.base_channels == 4
    assert (tmp_path / "run" / "history.csv").read_text().count("\n") == 3     # header + 2 epochs
    # the model file is what `unet-fast segment` reads
    assert cli.main(["segment", "-i", str(tmp_path / "im" / "n0.tif"), "-o", str(tmp_path / "seg"),
                     "-m", str(tmp_path / "b.safetensors"), "--no-progress"]) == 0
    assert tifffile.imread(next((tmp_path / "seg").iterdir())).shape == (48, 48)


def test_the_demo_replaces_only_files_an_earlier_demo_wrote(tmp_path, capsys):
    """unet-fast demo -o DIR replaced a user's model.safetensors or heldout.tif of the same name (exit 0): refused
    (exit 2) before any work, the file as it was; a folder the demo wrote is written again."""
    from unet_fast import cli

    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"my own model")
    assert cli.main(["demo", "--quick", "-o", str(folder), "--no-progress"]) == 2
    assert "holds model.safetensors, which the demo did not write" in capsys.readouterr().err
    assert (folder / "model.safetensors").read_bytes() == b"my own model"
    assert sorted(p.name for p in folder.iterdir()) == ["model.safetensors"]
    demo_dir = tmp_path / "demo"
    assert cli.main(["demo", "--quick", "-o", str(demo_dir), "--no-progress"]) == 0
    assert cli.main(["demo", "--quick", "-o", str(demo_dir), "--no-progress"]) == 0      # its own files: replaced
    (demo_dir / "heldout.tif").write_bytes(b"replaced by the user since")
    assert cli.main(["demo", "--quick", "-o", str(demo_dir), "--no-progress"]) == 2
    assert (demo_dir / "heldout.tif").read_bytes() == b"replaced by the user since"
    (tmp_path / "file").write_text("x")
    assert cli.main(["demo", "--quick", "-o", str(tmp_path / "file"), "--no-progress"]) == 2
