"""Training the paper's way: ``fit`` with SGD (momentum 0.99), large tiles, the weighted loss.

The model brings He initialisation and dropout (``UNet(dropout=...)``); the data brings the paper's
weight maps and augmentation (``unet_fast.data``). ``fit`` adds what a training run needs around
them: validation each epoch (loss, foreground IoU, object F1), atomic checkpoints that resume
exactly, a progress bar, CSV/JSON logs with a PNG of the curves, bf16 autocast, and
DistributedDataParallel under torchrun (gloo on CPU, nccl on CUDA; ranks draw disjoint tiles).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import random
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
from safetensors import safe_open
from safetensors.torch import save as save_safetensors
from scipy import ndimage
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, SequentialSampler
from tqdm.auto import tqdm

from . import geometry
from .data import RandomTiles, SegmentationDataset, default_augmentation
from .inference import predict_tiled
from .io import Normalization, atomic_path
from .losses import WeightedSoftmaxCrossEntropy
from .metrics import object_scores
from .ranks import shared_failures

__all__ = ["fit", "FitResult", "evaluate", "save_checkpoint", "load_checkpoint", "write_logs",
           "default_tile_size", "CHECKPOINT_FORMAT"]

CHECKPOINT_FORMAT = "unet_fast.checkpoint/2"     # /2: one set of RNG states per rank
READABLE_FORMATS = (CHECKPOINT_FORMAT, "unet_fast.checkpoint/1")
LR_SCHEDULES = ("constant", "cosine")
LOG_COLUMNS = ("epoch", "step", "train_loss", "val_loss", "val_iou", "val_object_f1", "lr", "seconds")


@dataclass
class FitResult:
    model: torch.nn.Module                 # the trained model (unwrapped from DDP), in eval mode
    history: list[dict] = field(default_factory=list)   # one row per epoch, LOG_COLUMNS
    checkpoint: Path | None = None         # the last checkpoint written, if any


def fit(model: torch.nn.Module, train_data, val_data: SegmentationDataset | None = None, *, epochs: int,
        tile_size: int | None = None, batch_size: int = 1, lr: float = 0.01, momentum: float = 0.99,
        weight_decay: float = 0.0, device=None, amp: bool = False, checkpoint_dir=None, resume=None,
        log_dir=None, tiles_per_epoch: int | None = None, augment: Callable | str | None = "default",
        seed: int = 0, num_workers: int = 0, loss_fn: Callable | None = None,
        lr_schedule: str = "constant", progress: bool | None = None) -> FitResult:
    """Train ``model`` for ``epochs`` epochs; returns the trained model and the per-epoch history.

    train_data: a ``SegmentationDataset`` (random tiles of ``tile_size`` are drawn from it, augmented
    by ``augment``: "default" = ``data.default_augmentation()`` (flips, rotations, the elastic
    deformation, grey values), None = none, or a callable
    ``(image, target, weights, generator=...) -> (image, target, weights)`` such as ``augment.Compose``),
    a ``RandomTiles``, or any dataset of ``(image (C, n, n), target (m, m), weights (m, m))`` tiles.
    val_data: whole labelled images, evaluated after every epoch with ``evaluate``.
    Checkpoints go to ``checkpoint_dir/last.safetensors`` after every epoch; ``resume`` (a checkpoint
    path) continues a run exactly: same weights, optimizer state, tiles and random numbers.
    lr_schedule: "constant" (the paper) or "cosine" (lr decays to 0 over all steps; a function of the
    step alone, so resuming needs no scheduler state).
    loss_fn(logits, target, weights): default the paper's weighted loss,
    ``WeightedSoftmaxCrossEntropy(crop_to_logits=True)``.
    Logs (history.csv, history.json, curves.png) go to ``log_dir``. Under torchrun every rank calls
    ``fit``; the process group is created here if it is not yet (and destroyed at the end). Each rank's
    random states go into the checkpoint and come back to the same rank on resume; a checkpoint of
    another world size resumes with a warning, not exactly. When one rank fails, every rank raises
    (``unet_fast.ranks``): a ``RankFailedError`` naming the failed rank where it did not fail.
    """
    _check_positive("epochs", epochs)
    _check_positive("batch_size", batch_size)
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    if not 0 <= momentum < 1:
        raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
    if lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, got {lr_schedule!r}")
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    distributed = _Distributed.setup(device)
    net = None
    try:
        device = distributed.device
        with shared_failures("preparing the training data and model"):   # e.g. a file unreadable on one node
            model.to(device)
            tiles = _training_tiles(model, train_data, tile_size, tiles_per_epoch, augment, seed)
            loss_fn = loss_fn or WeightedSoftmaxCrossEntropy(crop_to_logits=True)
            optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
            history: list[dict] = []
            start_epoch = 0
            if resume is not None:
                state = load_checkpoint(resume, model, optimizer)
                start_epoch, history = state["epoch"], state["history"]
                if state.get("seed") is not None and state["seed"] != seed:
                    raise ValueError(f"resume: checkpoint {str(resume)!r} was trained with seed {state['seed']}, "
                                     f"got seed={seed}; pass the same seed to continue exactly")
                _restore_rng_states(state["rng"], distributed, resume)
        net = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None) \
            if distributed.world > 1 else model
        show = distributed.rank == 0 and (sys.stderr.isatty() if progress is None else progress)
        checkpoint_path = Path(checkpoint_dir) / "last.safetensors" if checkpoint_dir is not None else None
        step = history[-1]["step"] if history else 0
        for epoch in range(start_epoch, epochs):
            started = time.perf_counter()
            if hasattr(tiles, "set_epoch"):
                tiles.set_epoch(epoch)
            sampler = (DistributedSampler(tiles, distributed.world, distributed.rank, shuffle=False)
                       if distributed.world > 1 else SequentialSampler(tiles))
            loader = DataLoader(tiles, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                                pin_memory=device.type == "cuda")
            net.train()
            loss_sum = torch.zeros((), dtype=torch.float64, device=device)
            bar = tqdm(loader, desc=f"epoch {epoch + 1}/{epochs}", disable=not show, leave=False)
            for image, target, weights in bar:
                if lr_schedule == "cosine":
                    for group in optimizer.param_groups:
                        group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / (epochs * len(loader))))
                image = image.to(device, non_blocking=True)
                target = target.to(device, non_blocking=True)
                weights = weights.to(device, non_blocking=True)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    logits = net(image)
                loss = loss_fn(logits.float(), target, weights)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                loss_sum += loss.detach()
                step += 1
                if show:
                    bar.set_postfix(loss=f"{loss.item():.4f}")
            bar.close()
            row = {"epoch": epoch + 1, "step": step,
                   "train_loss": distributed.mean(loss_sum, len(loader)),
                   "lr": optimizer.param_groups[0]["lr"]}
            if val_data is not None:
                metrics = evaluate(model, val_data, device=device, amp=amp, loss_fn=loss_fn,
                                   rank=distributed.rank, world=distributed.world)
                row.update({f"val_{key}": value for key, value in metrics.items()})
            row["seconds"] = time.perf_counter() - started
            history.append(row)
            rng_states = distributed.gather(_rng_state(device))     # every rank's, for rank 0 to save
            with shared_failures(f"writing the checkpoint and logs of epoch {epoch + 1}"):   # also a barrier
                if distributed.rank == 0:
                    if show:
                        tqdm.write(_format_row(row))
                    if checkpoint_path is not None:
                        save_checkpoint(checkpoint_path, model, optimizer, epoch=epoch + 1, history=history,
                                        seed=seed, rng_states=rng_states)
                    if log_dir is not None:
                        write_logs(log_dir, history)
        model.eval()
        return FitResult(model, history, checkpoint_path if checkpoint_path and checkpoint_path.exists() else None)
    finally:
        # DDP holds the process group: let it go, so that destroying the group closes this rank's
        # connections and ranks still in a collective with it fail now rather than at the timeout
        net = None
        distributed.teardown()


def default_tile_size(model, images: SegmentationDataset, largest: int = 572) -> int:
    """The largest legal input size up to ``largest`` whose output fits in the smallest image
    (at least the smallest legal size): the paper favours large tiles, batch 1."""
    depth, padding = model.depth, model.padding
    smallest_side = min(min(images[i].target.shape) for i in range(len(images)))
    sizes = geometry.valid_input_sizes(depth, max(largest, geometry.min_input_size(depth, padding)), padding)
    fitting = [n for n in sizes if geometry.output_size(n, depth, padding) <= smallest_side]
    return fitting[-1] if fitting else sizes[0]


def _training_tiles(model, train_data, tile_size, tiles_per_epoch, augment, seed):
    if isinstance(train_data, SegmentationDataset):
        if len(train_data) == 0:
            raise ValueError("train_data is empty: training needs at least one labelled image")
        for attr in ("depth", "padding"):
            if not hasattr(model, attr):
                raise TypeError(f"model must be a unet_fast UNet (with .depth and .padding) to draw tiles "
                                f"from a SegmentationDataset; got {type(model).__name__}. Pass RandomTiles instead.")
        if tile_size is None:
            tile_size = default_tile_size(model, train_data)
        if augment == "default":
            augment = default_augmentation()
        elif augment is not None and not callable(augment):
            raise ValueError(f"augment must be 'default', None or a callable, got {augment!r}")
        return RandomTiles(train_data, tile_size, depth=model.depth, padding=model.padding,
                           tiles_per_epoch=tiles_per_epoch, augment=augment, seed=seed)
    if isinstance(train_data, torch.utils.data.Dataset) and hasattr(train_data, "__len__"):
        if len(train_data) == 0:
            raise ValueError("train_data is empty")
        return train_data
    raise TypeError(f"train_data must be a SegmentationDataset, RandomTiles or a Dataset of "
                    f"(image, target, weights) tiles; got {type(train_data).__name__}")


class _Distributed:
    """This process's place in a torchrun job (world 1 without one)."""

    def __init__(self, rank: int, world: int, device: torch.device, owns_group: bool):
        self.rank, self.world, self.device, self.owns_group = rank, world, device, owns_group

    @classmethod
    def setup(cls, device) -> "_Distributed":
        device = torch.device(device) if device is not None else None
        wanted_world = int(os.environ.get("WORLD_SIZE", "1"))
        owns = False
        if dist.is_available() and not dist.is_initialized() and wanted_world > 1:
            cuda = (device.type == "cuda") if device is not None else torch.cuda.is_available()
            dist.init_process_group("nccl" if cuda else "gloo")
            owns = True
        if dist.is_available() and dist.is_initialized():
            rank, world = dist.get_rank(), dist.get_world_size()
        else:
            rank, world = 0, 1
        if device is None:
            device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) if world > 1
                                  else torch.cuda.current_device())
        if device.type == "cuda":
            torch.cuda.set_device(device)
        return cls(rank, world, device, owns)

    def mean(self, total: torch.Tensor, count: int) -> float:
        """Mean of a per-rank sum over ``count`` items per rank, across ranks."""
        if self.world > 1:
            total = total.clone()
            dist.all_reduce(total)
        return float(total) / max(count * self.world, 1)

    def gather(self, value) -> list | None:
        """``value`` of every rank, in rank order, on rank 0 (None on the others)."""
        if self.world == 1:
            return [value]
        gathered = [None] * self.world if self.rank == 0 else None
        dist.gather_object(value, gathered, dst=0)
        return gathered

    def teardown(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


# ---- validation ---------------------------------------------------------------------------------

@torch.no_grad()
def evaluate(model: torch.nn.Module, images: SegmentationDataset, *, device=None, amp: bool = False,
             loss_fn: Callable | None = None, rank: int = 0, world: int = 1) -> dict:
    """Whole-image validation by overlap-tile inference (``predict_tiled``): {"loss", "iou", "object_f1"}.

    loss: the weighted loss per pixel; iou: foreground IoU pooled over all pixels of all images;
    object_f1: F1 of predicted objects (connected foreground components) matched to the labelled
    instances at IoU >= 0.5 (``metrics.object_scores``), pooled over images. With ``world`` > 1 each rank takes every world-th
    image and the sums are all-reduced, so every rank returns the same numbers (or raises, if one rank failed).
    """
    loss_fn = loss_fn or WeightedSoftmaxCrossEntropy()
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    # loss sum, pixels, intersection, union, true positives, false positives, false negatives
    sums = torch.zeros(7, dtype=torch.float64)
    with shared_failures("validation") if world > 1 else contextlib.nullcontext():
        for index in range(rank, len(images), world):
            sample = images[index]
            logits = torch.from_numpy(predict_tiled(model, sample.image, layout="CYX", device=device,
                                                    dtype="bf16" if amp else None, output="logits", progress=False,
                                                    normalization=Normalization(mode="none")))
            target = torch.from_numpy(sample.target).to(device)
            weights = torch.from_numpy(sample.weights).to(device)
            pixels = target.numel()
            loss = float(loss_fn(logits[None], target[None], weights[None])) * pixels
            predicted = logits.argmax(0).cpu().numpy() > 0
            truth = sample.target > 0
            objects = object_scores(ndimage.label(predicted)[0], sample.instances)
            tp, fp, fn = objects.true_positives, objects.false_positives, objects.false_negatives
            sums += torch.tensor([loss, pixels, np.sum(predicted & truth), np.sum(predicted | truth), tp, fp, fn],
                                 dtype=torch.float64)
    if world > 1:
        sums = sums.to(device)
        dist.all_reduce(sums)
        sums = sums.cpu()
    model.to(memory_format=torch.contiguous_format)    # predict_tiled left it channels_last
    model.train(was_training)
    loss, pixels, intersection, union, tp, fp, fn = sums.tolist()
    return {"loss": loss / max(pixels, 1), "iou": intersection / union if union else 1.0,
            "object_f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0}


# ---- checkpoints ---------------------------------------------------------------------------------

def save_checkpoint(path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, *, epoch: int,
                    history: list[dict] | None = None, seed: int | None = None,
                    rng_states: list[dict] | None = None) -> Path:
    """One safetensors file: model weights, optimizer state, epoch, history and RNG states; atomic.

    rng_states: every rank's random states in rank order (``fit`` gathers them); default: this
    process's only, as one rank."""
    tensors = {f"model.{key}": value.detach().cpu().contiguous() for key, value in model.state_dict().items()}
    optimizer_state = optimizer.state_dict()
    scalars = {}
    for index, entry in optimizer_state["state"].items():
        for name, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.state.{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{index}.{name}"] = value
    if rng_states is None:
        device = torch.device("cuda") if torch.cuda.is_available() and torch.cuda.is_initialized() else None
        rng_states = [_rng_state(device or torch.device("cpu"))]
    for rank, states in enumerate(rng_states):
        tensors.update({f"rng.{rank}.{name}": value for name, value in states.items()})
    metadata = {
        "format": CHECKPOINT_FORMAT,
        "world_size": str(len(rng_states)),
        "epoch": str(epoch),
        "seed": json.dumps(seed),
        "history": json.dumps(history or []),
        "model_config": json.dumps(model.config() if hasattr(model, "config") else None),
        "optimizer.param_groups": json.dumps(optimizer_state["param_groups"]),
        "optimizer.scalars": json.dumps(scalars),
    }
    path = Path(path)
    _write_atomically(path, save_safetensors(tensors, metadata))
    return path


def load_checkpoint(path, model: torch.nn.Module | None = None,
                    optimizer: torch.optim.Optimizer | None = None) -> dict:
    """Read a checkpoint; load its weights into ``model`` and state into ``optimizer`` when given.

    Returns {"epoch", "history", "seed", "model_config", "rng" (a list: each rank's dict of random
    states), "model_state"}."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as error:
        raise ValueError(f"cannot read checkpoint {str(path)!r}: {error}") from error
    if metadata.get("format") not in READABLE_FORMATS:
        raise ValueError(f"{str(path)!r} is not a unet_fast checkpoint (format {metadata.get('format')!r}, "
                         f"expected {CHECKPOINT_FORMAT!r}); a model file is loaded with unet_fast.load_model")
    model_state = {key[len("model."):]: value for key, value in tensors.items() if key.startswith("model.")}
    if model is not None:
        model.load_state_dict(model_state)
    if optimizer is not None:
        state: dict[int, dict] = {}
        for key, value in tensors.items():
            if key.startswith("optimizer.state."):
                index, name = key[len("optimizer.state."):].split(".", 1)
                state.setdefault(int(index), {})[name] = value
        for key, value in json.loads(metadata["optimizer.scalars"]).items():
            index, name = key.split(".", 1)
            state.setdefault(int(index), {})[name] = value
        optimizer.load_state_dict({"state": state, "param_groups": json.loads(metadata["optimizer.param_groups"])})
    rng: list[dict] = [{} for _ in range(int(metadata.get("world_size", "1")))]
    for key, value in tensors.items():
        if key.startswith("rng."):      # rng.<rank>.<generator>; format /1 had one process: rng.<generator>
            rank, name = key[4:].split(".", 1) if key[4].isdigit() else ("0", key[4:])
            rng[int(rank)][name] = value
    return {"epoch": int(metadata["epoch"]), "history": json.loads(metadata["history"]),
            "seed": json.loads(metadata["seed"]), "model_config": json.loads(metadata["model_config"]),
            "rng": rng, "model_state": model_state}


def _rng_state(device: torch.device) -> dict[str, torch.Tensor]:
    """This process's random states as tensors: torch's CPU and ``device``'s CUDA generators, numpy's
    and Python's global ones (which user augmentations may draw from)."""
    _, keys, position, has_gauss, gauss = np.random.get_state()
    version, words, gauss_next = random.getstate()
    states = {"cpu": torch.get_rng_state(),
              "numpy": torch.from_numpy(keys.astype(np.int64)),
              "numpy.scalars": torch.tensor([position, has_gauss, gauss], dtype=torch.float64),
              "python": torch.tensor(words, dtype=torch.int64),
              "python.scalars": torch.tensor([version, math.nan if gauss_next is None else gauss_next],
                                             dtype=torch.float64)}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def _set_rng_state(states: dict, device: torch.device) -> None:
    torch.set_rng_state(states["cpu"])
    if "numpy" in states:
        position, has_gauss, gauss = states["numpy.scalars"].tolist()
        np.random.set_state(("MT19937", states["numpy"].numpy().astype(np.uint32), int(position), int(has_gauss),
                             gauss))
    if "python" in states:
        version, gauss_next = states["python.scalars"].tolist()
        random.setstate((int(version), tuple(states["python"].tolist()),
                         None if math.isnan(gauss_next) else gauss_next))
    cuda = states.get("cuda", states.get(f"cuda.{device.index or 0}"))     # format /1: one state per device
    if device.type == "cuda" and cuda is not None:
        torch.cuda.set_rng_state(cuda, device)


def _restore_rng_states(rng: list[dict], distributed: "_Distributed", path) -> None:
    """Each rank takes back its own random states. A checkpoint of another world size cannot continue
    exactly (each rank's share of the tiles changes too), but resuming on fewer or more GPUs is a
    normal need: warn, give the ranks both runs have their own states, and leave the others theirs."""
    if len(rng) != distributed.world and distributed.rank == 0:
        warnings.warn(f"resume: checkpoint {str(path)!r} was written by {len(rng)} process(es) and this run has "
                      f"{distributed.world}: weights, optimizer state and epoch continue, but the random numbers "
                      f"and each process's tiles differ from an uninterrupted run", stacklevel=3)
    if distributed.rank < len(rng):
        _set_rng_state(rng[distributed.rank], distributed.device)


# ---- logs ---------------------------------------------------------------------------------------

def write_logs(log_dir, history: list[dict]) -> None:
    """history.csv, history.json and curves.png in ``log_dir``, each written atomically."""
    log_dir = Path(log_dir)
    columns = [c for c in LOG_COLUMNS if any(c in row for row in history)]
    lines = [",".join(columns)] + [",".join(_csv_value(row.get(c)) for c in columns) for row in history]
    _write_atomically(log_dir / "history.csv", ("\n".join(lines) + "\n").encode())
    _write_atomically(log_dir / "history.json", json.dumps(history, indent=1).encode())
    _write_atomically(log_dir / "curves.png", _plot_curves(history))


def _plot_curves(history: list[dict]) -> bytes:
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(9, 3.5), dpi=100)
    FigureCanvasAgg(figure)
    losses, scores = figure.subplots(1, 2)
    epochs = [row["epoch"] for row in history]
    for key, axes in (("train_loss", losses), ("val_loss", losses), ("val_iou", scores), ("val_object_f1", scores)):
        values = [row.get(key) for row in history]
        if any(v is not None for v in values):
            axes.plot(epochs, [np.nan if v is None else v for v in values], marker="o", label=key)
    losses.set(xlabel="epoch", ylabel="weighted cross-entropy", title="loss")
    scores.set(xlabel="epoch", ylabel="score", title="validation", ylim=(0, 1))
    for axes in (losses, scores):
        if axes.lines:
            axes.legend()
        axes.grid(alpha=0.3)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _csv_value(value) -> str:
    if value is None:
        return ""
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _format_row(row: dict) -> str:
    return "  ".join(f"{key} {_csv_value(value)}" for key, value in row.items())


def _write_atomically(path: Path, data: bytes) -> None:
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)


def _check_positive(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
