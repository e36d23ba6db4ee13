"""training_logs: history.csv/.json and curves.png; no empty validation panel without validation."""
import io

import numpy as np
from PIL import Image

from unet_fast.training_logs import write_logs


def test_curves_have_a_validation_panel_only_with_validation(tmp_path):
    history = [{"epoch": e, "step": 2 * e, "train_loss": 1.0 / e, "lr": 0.01, "seconds": 1.0} for e in (1, 2, 3)]
    write_logs(tmp_path / "train", history)
    write_logs(tmp_path / "val", [dict(row, val_loss=0.5, val_iou=0.8, val_object_f1=0.7) for row in history])
    width = {name: Image.open(io.BytesIO((tmp_path / name / "curves.png").read_bytes())).size[0]
             for name in ("train", "val")}
    assert width["train"] < 0.6 * width["val"]           # one panel, not two with an empty one
    lines = (tmp_path / "train" / "history.csv").read_text().splitlines()
    assert lines[0] == "epoch,step,train_loss,lr,seconds" and len(lines) == 4
    assert np.isclose(float(lines[1].split(",")[2]), 1.0)


def test_the_progress_bar_reads_the_loss_without_a_warning():
    """On a terminal (the bar) the loss of a step, a tensor that requires grad, was read with float(): torch
    warned on every run of unet-fast demo and train ("Converting a tensor with requires_grad=True to a scalar")."""
    import io
    import warnings

    import torch

    from unet_fast.training_logs import Progress

    stream = io.StringIO()
    progress = Progress(True, bar=True, stream=stream)
    progress.start("training", total=3, done=0)
    weight = torch.ones((), requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for step in (1, 2, 3):
            progress.step(step, 1, weight * 0.25, 0.1)
    progress.bar.close()
    assert "loss=0.2500" in stream.getvalue()
