"""Training the paper's way: ``fit`` with SGD (momentum 0.99), large tiles, the weighted loss.

The model brings He initialisation and dropout (``UNet(dropout=...)``); the data brings the paper's
weight maps and augmentation (``unet_fast.data``). ``fit`` adds what a training run needs around
them: validation each epoch (loss, foreground IoU, object F1), atomic checkpoints that resume
exactly, a progress bar, CSV/JSON logs with a PNG of the curves, bf16 autocast, and
DistributedDataParallel under torchrun (gloo on CPU, nccl on CUDA; ranks draw disjoint tiles).
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, SequentialSampler
from tqdm.auto import tqdm

from . import geometry
from .checks import check_device
from .checkpoint import CHECKPOINT_FORMAT, load_checkpoint, restore_rng_state, rng_state, save_checkpoint
from .data import RandomTiles, SegmentationDataset, default_augmentation
from .losses import WeightedSoftmaxCrossEntropy
from .ops.weighted_cross_entropy import check_pending
from .ranks import shared_failures
from .torchrun import Torchrun
from .training_logs import format_row, write_logs
from .validation import evaluate

# evaluate, the checkpoint format and the logs have modules of their own; importable from here as before
__all__ = ["fit", "FitResult", "evaluate", "save_checkpoint", "load_checkpoint", "write_logs",
           "default_tile_size", "CHECKPOINT_FORMAT"]

LR_SCHEDULES = ("constant", "cosine")


@dataclass
class FitResult:
    model: torch.nn.Module                 # the trained model (unwrapped from DDP), in eval mode
    history: list[dict] = field(default_factory=list)   # one row per epoch, training_logs.LOG_COLUMNS
    checkpoint: Path | None = None         # the last checkpoint written, if any


@dataclass
class _Run:
    """What a training run carries from epoch to epoch."""

    tiles: torch.utils.data.Dataset
    loss_fn: Callable
    optimizer: torch.optim.Optimizer
    history: list[dict]
    start_epoch: int
    net: torch.nn.Module | None = None   # the model, in DDP under torchrun; only the run refers to it (see fit)

    @property
    def step(self) -> int:
        return self.history[-1]["step"] if self.history else 0


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
    _check_fit_arguments(model, epochs, batch_size, lr, momentum, lr_schedule)
    check_device(device)
    job = Torchrun.join(device)
    run = None
    try:
        with shared_failures("preparing the training data and model"):   # e.g. a file unreadable on one node
            run = _prepare(model, train_data, job, tile_size=tile_size, tiles_per_epoch=tiles_per_epoch,
                           augment=augment, seed=seed, loss_fn=loss_fn, lr=lr, momentum=momentum,
                           weight_decay=weight_decay, resume=resume)
        run.net = DistributedDataParallel(model, device_ids=[job.device] if job.device.type == "cuda" else None) \
            if job.world > 1 else model
        show = job.rank == 0 and (sys.stderr.isatty() if progress is None else progress)
        checkpoint_path = Path(checkpoint_dir) / "last.safetensors" if checkpoint_dir is not None else None
        for epoch in range(run.start_epoch, epochs):
            started = time.perf_counter()
            row = _train_epoch(run, job, epoch, epochs, batch_size=batch_size, num_workers=num_workers,
                               amp=amp, lr=lr, lr_schedule=lr_schedule, show=show)
            if val_data is not None:
                metrics = evaluate(model, val_data, device=job.device, amp=amp, loss_fn=run.loss_fn,
                                   rank=job.rank, world=job.world)
                row.update({f"val_{key}": value for key, value in metrics.items()})
            row["seconds"] = time.perf_counter() - started
            run.history.append(row)
            _save_epoch(model, run, job, epoch, checkpoint_path=checkpoint_path, log_dir=log_dir, seed=seed,
                        show=show)
        model.eval()
        return FitResult(model, run.history, checkpoint_path if checkpoint_path and checkpoint_path.exists() else None)
    finally:
        # DDP holds the process group: let it go, so that destroying the group closes this rank's
        # connections and ranks still in a collective with it fail now rather than at the timeout (an
        # error's traceback keeps the frames of the epoch alive: none of them holds DDP but through the run)
        if run is not None:
            run.net = None
        job.leave()


def _check_fit_arguments(model, epochs, batch_size, lr, momentum, lr_schedule) -> None:
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


def _prepare(model, train_data, job: Torchrun, *, tile_size, tiles_per_epoch, augment, seed, loss_fn, lr, momentum,
             weight_decay, resume) -> _Run:
    """The model on its device, the training tiles, loss and optimizer, and what ``resume`` restores."""
    model.to(job.device)
    tiles = _training_tiles(model, train_data, tile_size, tiles_per_epoch, augment, seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    run = _Run(tiles, loss_fn or WeightedSoftmaxCrossEntropy(crop_to_logits=True), optimizer, [], 0)
    if resume is not None:
        state = load_checkpoint(resume, model, optimizer)
        if state.get("seed") is not None and state["seed"] != seed:
            raise ValueError(f"resume: checkpoint {str(resume)!r} was trained with seed {state['seed']}, "
                             f"got seed={seed}; pass the same seed to continue exactly")
        run.start_epoch, run.history = state["epoch"], state["history"]
        restore_rng_state(state["rng"], job.rank, job.world, job.device, resume)
    return run


def _train_epoch(run: _Run, job: Torchrun, epoch: int, epochs: int, *, batch_size, num_workers, amp, lr,
                 lr_schedule, show) -> dict:
    """One pass over this epoch's tiles (this rank's share); the epoch's row of the history so far."""
    if hasattr(run.tiles, "set_epoch"):
        run.tiles.set_epoch(epoch)
    sampler = (DistributedSampler(run.tiles, job.world, job.rank, shuffle=False) if job.world > 1
               else SequentialSampler(run.tiles))
    loader = DataLoader(run.tiles, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                        pin_memory=job.device.type == "cuda")
    run.net.train()
    step = run.step
    loss_sum = torch.zeros((), dtype=torch.float64, device=job.device)
    bar = tqdm(loader, desc=f"epoch {epoch + 1}/{epochs}", disable=not show, leave=False)
    for image, target, weights in bar:
        if lr_schedule == "cosine":
            for group in run.optimizer.param_groups:
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / (epochs * len(loader))))
        image = image.to(job.device, non_blocking=True)
        target = target.to(job.device, non_blocking=True)
        weights = weights.to(job.device, non_blocking=True)
        with torch.autocast(job.device.type, dtype=torch.bfloat16, enabled=amp):
            logits = run.net(image)
        loss = run.loss_fn(logits.float(), target, weights)
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        run.optimizer.step()
        loss_sum += loss.detach()
        step += 1
        if show:
            bar.set_postfix(loss=f"{loss.item():.4f}")
    bar.close()
    check_pending()  # invalid targets or weights the loss found without stopping the GPU
    return {"epoch": epoch + 1, "step": step, "train_loss": job.mean(loss_sum, len(loader)),
            "lr": run.optimizer.param_groups[0]["lr"]}


def _save_epoch(model, run: _Run, job: Torchrun, epoch: int, *, checkpoint_path, log_dir, seed, show) -> None:
    """Rank 0 writes the checkpoint (with every rank's random states) and the logs of this epoch."""
    rng_states = job.gather(rng_state(job.device))     # every rank's, for rank 0 to save
    with shared_failures(f"writing the checkpoint and logs of epoch {epoch + 1}"):   # also a barrier
        if job.rank != 0:
            return
        if show:
            tqdm.write(format_row(run.history[-1]))
        if checkpoint_path is not None:
            save_checkpoint(checkpoint_path, model, run.optimizer, epoch=epoch + 1, history=run.history, seed=seed,
                            rng_states=rng_states)
        if log_dir is not None:
            write_logs(log_dir, run.history)


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


def _check_positive(name: str, value) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
