"""The built-in example (``unet-fast demo``): train a small U-Net on synthetic nuclei, segment a
held-out image larger than one tile, score it and draw it.

Everything comes from this package: ``synthetic_nuclei`` for data, the paper's weight maps,
``train.fit`` with the "default" recipe (``unet_fast.recipes``) on the CPU, overlap-tile inference,
and the metrics. It is sized to finish in well under 3 minutes on 2 CPU cores.

The score that matters is the object F1: the paper's point is separating touching cells, and a
network that merges them can still reach a high foreground IoU. The held-out image is segmented and
scored as `unet-fast segment --output instances` and `unet-fast evaluate` do it with a user's images:
objects by the default instance rules (``unet_fast.instances``: components of the foreground, divided
where the network sees two cores, specks removed, the background it leaves between touching objects
given back), foreground IoU of that output.
"""
from __future__ import annotations

import dataclasses
import io
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .data import ArrayDataset, synthetic_nuclei
from .evaluation import score_instances
from .image_io import write_bytes_atomically, write_image
from .inference import predict_tiled
from .model import UNet
from .model_file import save_model
from .recipes import get_recipe
from .train import fit
from .training_logs import write_logs

#: the data and the length of training; everything else is the "default" recipe (``unet_fast.recipes``):
#: a depth-3 valid U-Net (base 16, no dropout), 140-pixel tiles (100-pixel outputs), batch 4, here 560 steps.
SETUP = dict(recipe="default", train_images=8, train_size=256, test_size=400, epochs=70, tiles_per_epoch=32)
#: what the full demo must reach on its held-out image (``unet-fast demo`` exits with 1 below it)
TARGETS = dict(iou=0.85, object_f1=0.8)
QUICK = dict(SETUP, train_images=2, train_size=128, test_size=160, epochs=1, tiles_per_epoch=2)
#: the files a demo writes into its folder, and the record of them it leaves there: a later demo replaces a file
#: only as that record describes it (size, modification time), never a user's file of the same name
FILES = ("demo.png", "model.safetensors", "heldout.tif", "heldout_labels.tif", "history.csv", "history.json",
         "curves.png")
RECORD = ".unet_fast-demo.json"


@dataclass
class DemoResult:
    iou: float             # foreground IoU of the held-out image
    object_f1: float       # object F1 at IoU >= 0.5 (the instance output vs the true nuclei)
    seconds: float         # wall time of the whole demo
    train_seconds: float
    figure: Path           # the PNG: image, ground truth, prediction, weight map
    model: Path            # the trained model (for `unet-fast segment`)
    history: list


def run(output_dir="demo_output", *, quick: bool = False, seed: int = 0, epochs: int | None = None,
        device=None, threads: int | None = 1, progress: bool | None = None, log=print) -> DemoResult:
    """Run the demo; writes demo.png, model.safetensors, heldout.tif (and its true nuclei, heldout_labels.tif,
    for ``unet-fast evaluate --images heldout.tif --labels heldout_labels.tif``) and the training logs into
    ``output_dir``. ``quick`` trains a few steps only (for tests: the scores are meaningless).
    ``threads``: CPU threads for torch during the demo (None: torch's default). One is the default
    because these small convolutions gain little from a second thread, and multi-threaded torch
    slows down many times over when other jobs share the cores."""
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        return _run(output_dir, quick, seed, epochs, device, progress, log)
    finally:
        torch.set_num_threads(previous_threads)


def _run(output_dir, quick, seed, epochs, device, progress, log) -> DemoResult:
    started = time.perf_counter()
    setup = dict(QUICK if quick else SETUP)
    if epochs is not None:
        setup["epochs"] = epochs
    recipe = get_recipe(setup["recipe"]).replace(epochs=setup["epochs"], tiles_per_epoch=setup["tiles_per_epoch"])
    output_dir = Path(output_dir)
    check_output_dir(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    device = torch.device(device or "cpu")

    images, labels = synthetic_nuclei(setup["train_images"], setup["train_size"], seed=seed)
    test_images, test_labels = synthetic_nuclei(1, setup["test_size"], seed=seed + 1000)
    train_data = ArrayDataset(images, labels, w0=recipe.w0, sigma=recipe.sigma, class_weights=recipe.class_weights,
                              normalization=recipe.normalization())
    log(f"training a depth-{recipe.depth} U-Net (base {recipe.base_channels}, {recipe.padding} padding) on "
        f"{len(images)} synthetic {setup['train_size']}x{setup['train_size']} images for {recipe.epochs} "
        f"epochs of {recipe.tiles_per_epoch} tiles ({recipe.tile_size} px, batch {recipe.batch_size}) "
        f"on {device}, recipe {recipe.name}: {recipe.describe()}")

    torch.manual_seed(seed)
    model = UNet(depth=recipe.depth, base_channels=recipe.base_channels, dropout=recipe.dropout,
                 padding=recipe.padding)
    tile_size = recipe.tile_for(model.depth, model.padding)
    train_started = time.perf_counter()
    result = fit(model, train_data, recipe=recipe, device=device, seed=seed, progress=progress)
    train_seconds = time.perf_counter() - train_started
    write_logs(output_dir, result.history)
    model_path = save_model(model.cpu(), output_dir / "model.safetensors", normalization=train_data.normalization,
                            class_names=["background", "nucleus"], recipe=dataclasses.asdict(recipe), demo=setup)

    # the held-out image, larger than one tile, segmented tile by tile
    test = ArrayDataset(test_images, test_labels, w0=recipe.w0, sigma=recipe.sigma,     # for its weight map
                        class_weights=recipe.class_weights)[0]
    # and scored as `unet-fast evaluate` scores a user's images: the instance output of `segment`
    prediction = predict_tiled(model, test_images[0], tile_size=tile_size, device="cpu",
                               normalization=train_data.normalization, output="instances", progress=False)
    scores = score_instances(prediction, test_labels[0])
    iou = scores.iou
    write_image(output_dir / "heldout.tif", test_images[0])
    write_image(output_dir / "heldout_labels.tif", test_labels[0].astype(np.uint16))   # to score it yourself
    figure = draw(output_dir / "demo.png", test_images[0], test_labels[0], prediction, test.weights,
                  iou, scores.f1, f"weight map (w0 {recipe.w0:g}, sigma {recipe.sigma:g} px)")
    _record(output_dir)
    seconds = time.perf_counter() - started
    log(f"held-out {setup['test_size']}x{setup['test_size']} image: foreground IoU {iou:.3f}, "
        f"object F1 {scores.f1:.3f} ({scores.true_positives} matched, {scores.false_positives} false, "
        f"{scores.false_negatives} missed)")
    log(f"trained in {train_seconds:.0f} s, {seconds:.0f} s in all; wrote {figure}, {model_path}")
    return DemoResult(iou, scores.f1, seconds, train_seconds, figure, model_path, result.history)


def _stamp(path: Path) -> list[int]:
    status = path.stat()
    return [status.st_size, status.st_mtime_ns]


def _record(output_dir: Path) -> None:
    stamps = {name: _stamp(output_dir / name) for name in FILES if (output_dir / name).is_file()}
    write_bytes_atomically(output_dir / RECORD, json.dumps(stamps).encode())


def check_output_dir(output_dir: Path) -> None:
    """BadArgument ("output") before any work where the demo would replace a file it did not write (a user's
    model.safetensors in the folder named), or the folder is a file."""
    from .checks import BadArgument

    if output_dir.exists() and not output_dir.is_dir():
        raise BadArgument("output", f"{str(output_dir)!r} is a file; the demo writes into a folder: name a new one")
    try:
        recorded = json.loads((output_dir / RECORD).read_text())
    except (OSError, ValueError):
        recorded = {}
    if not isinstance(recorded, dict):
        recorded = {}
    theirs = [name for name in FILES if (output_dir / name).exists()
              and not ((output_dir / name).is_file() and recorded.get(name) == _stamp(output_dir / name))]
    if theirs:
        raise BadArgument("output", f"{str(output_dir)!r} holds {', '.join(theirs)}, which the demo did not write "
                                    f"and would replace: name another folder (-o), or move them")


def draw(path, image, instances, prediction, weights, iou, f1, weights_title: str = "weight map") -> Path:
    """image | ground truth (``instances``) | predicted objects (``prediction``, instance labels; truth
    outlined) | weight map, side by side, as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(14, 3.8), dpi=72)
    FigureCanvasAgg(figure)
    panels = figure.subplots(1, 4)
    truth_outline = instances > 0
    panels[0].imshow(image, cmap="gray")
    panels[0].set_title("held-out synthetic image")
    panels[1].imshow(_instance_colours(instances))
    panels[1].set_title(f"ground truth: {int(instances.max())} nuclei")
    count = int(prediction.max())                           # instances are numbered 1..K: the objects the F1 counts
    panels[2].imshow(_instance_colours(prediction))
    panels[2].contour(truth_outline, levels=[0.5], colors="white", linewidths=0.4)
    panels[2].set_title(f"prediction: {count} objects, IoU {iou:.3f}, F1 {f1:.2f}")
    shown = panels[3].imshow(weights, cmap="magma")
    panels[3].set_title(weights_title)
    figure.colorbar(shown, ax=panels[3], fraction=0.046, pad=0.02)
    for axes in panels:
        axes.set_axis_off()
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return write_bytes_atomically(path, buffer.getvalue())


def _instance_colours(instances: np.ndarray) -> np.ndarray:
    """An RGB picture of instance labels, one random colour per object, black background."""
    palette = np.random.default_rng(0).uniform(0.25, 1.0, (int(instances.max()) + 1, 3))
    palette[0] = 0
    return palette[instances]
