"""Training: ``fit``, by a recipe (``unet_fast.recipes``: "default" converges in minutes, "paper" is
SGD with momentum 0.99, batch 1, large tiles), every value of which can be overridden.

The model brings He initialisation and dropout (``UNet(dropout=...)``); the data brings the paper's
weight maps (``unet_fast.data``). ``fit`` adds what a training run needs around them: the recipe's
augmentation, optimizer and learning-rate schedule (with warm-up), a wall-clock budget, validation
each epoch (loss, foreground IoU, object F1) with the best model kept, atomic checkpoints that resume
exactly, progress from the first step, CSV/JSON logs with a PNG of the curves, bf16 autocast, and
DistributedDataParallel under torchrun (gloo on CPU, nccl on CUDA; ranks draw disjoint tiles).
"""
from __future__ import annotations

import dataclasses
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
# before any process group, which fit's caller may create before calling it: torch.optim would import
# torch._dynamo after it, and the group would outlive destroy_process_group (torchrun.py says more)
import torch._dynamo  # noqa: F401
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, SequentialSampler

from . import geometry, termination
from .checks import check_device
from .checkpoint import CHECKPOINT_FORMAT, load_checkpoint, restore_rng_state, rng_state, save_checkpoint
from .data import RandomTiles, SegmentationDataset
from .losses import training_loss
from .ops.weighted_cross_entropy import check_pending
from .ranks import shared_failures
from .recipes import AUGMENTATION_FIELDS, UNRECORDED_VALUES, Recipe, get_recipe, same_value
from .torchrun import Torchrun
from .training_logs import Progress, format_row, write_logs
from .validation import evaluate

# evaluate, the checkpoint format and the logs have modules of their own; importable from here as before
__all__ = ["fit", "FitResult", "evaluate", "save_checkpoint", "load_checkpoint", "write_logs",
           "default_tile_size", "learning_rate", "CHECKPOINT_FORMAT", "BEST_METRICS", "TrainingDiverged"]

#: how ``best_metric`` reads the validation row: (column, larger is better)
BEST_METRICS = {"f1": ("val_object_f1", True), "iou": ("val_iou", True), "loss": ("val_loss", False)}


@dataclass
class FitResult:
    model: torch.nn.Module                 # the trained model (unwrapped from DDP), in eval mode
    history: list[dict] = field(default_factory=list)   # one row per epoch, training_logs.LOG_COLUMNS
    checkpoint: Path | None = None         # the last checkpoint written, if any
    best: Path | None = None               # the best model by best_metric (a model file), if kept
    stopped_early: bool = False            # the time limit ended the run before its last epoch
    tile_size: int | None = None           # the input tile trained on (None: a custom tile dataset's own)


@dataclass
class _Run:
    """What a training run carries from epoch to epoch."""

    tiles: torch.utils.data.Dataset
    loss_fn: Callable
    optimizer: torch.optim.Optimizer
    history: list[dict]
    start_epoch: int
    recipe: Recipe
    clock: "_Clock"
    net: torch.nn.Module | None = None   # the model, in DDP under torchrun; only the run refers to it (see fit)
    amp: bool = False                    # bf16 autocast (recorded in the checkpoints: a resume must keep it)
    best_metric: str | None = None       # what picks the best model (recorded too)

    @property
    def step(self) -> int:
        return self.history[-1]["step"] if self.history else 0


def fit(model: torch.nn.Module, train_data, val_data: SegmentationDataset | None = None, *,
        recipe: str | Recipe = "default", epochs: int | None = None, tile_size: int | None = None,
        batch_size: int | None = None, optimizer: str | None = None, lr: float | None = None,
        momentum: float | None = None, weight_decay: float | None = None, lr_schedule: str | None = None,
        warmup_steps: int | None = None, tiles_per_epoch: int | None = None, augment: Callable | str | None = "recipe",
        time_limit: float | None = None, best_metric: str | None = None, device=None, amp: bool = False,
        checkpoint_dir=None, resume=None, log_dir=None, seed: int = 0, num_workers: int = 0,
        loss_fn: Callable | None = None, progress: bool | None = None) -> FitResult:
    """Train ``model``; returns the trained model and the per-epoch history.

    recipe: "default", "paper" or a ``recipes.Recipe``: the training values (tile_size, batch_size,
    tiles_per_epoch, epochs, optimizer, lr, momentum, weight_decay, lr_schedule, warmup_steps, and the
    augmentation); each argument given here (not None) overrides the recipe's. The model and the data
    are used as given (the recipe's network and weight-map values are for building them, as
    ``unet-fast train`` does).
    train_data: a ``SegmentationDataset`` (random tiles of ``tile_size`` are drawn from it, augmented
    by ``augment``: "recipe" = the recipe's, "default" = ``data.default_augmentation()`` (the paper's),
    None = none, or a callable
    ``(image, target, weights, generator=...) -> (image, target, weights)``
    such as ``augment.Compose``), a ``RandomTiles``, or any dataset of ``(image (C, n, n), target (m, m),
    weights (m, m))`` tiles. Checkpoints record the augmentation that ran ("default": the paper recipe's values;
    a callable: every augmentation field off and ``custom_augmentation`` its module.name), and a resume must
    run the same (a callable's name is checked, not its parameters).
    optimizer: "sgd" (with ``momentum``), "adam" or "adamw" (``momentum`` is their beta1).
    lr_schedule: "constant" or "cosine" (from lr to 0 over the run), after ``warmup_steps`` steps of
    linear warm-up; a function of the step and of the time used, so resuming needs no scheduler state.
    time_limit: seconds for the whole run, resumes included: training stops at the first step
    boundary past it (the epoch's row, checkpoint and best model are written as usual), and the
    schedule anneals over whichever comes first, the epochs or the time limit (then the learning
    rates depend on the machine's speed, and a run is not repeatable bit for bit).
    The returned model's ``input_scale`` is train_data's ``scale`` (1 for data without one).
    val_data: whole labelled images (at train_data's ``scale``), evaluated after every epoch with ``evaluate``; with
    ``checkpoint_dir`` the best model by ``best_metric`` ("f1": object F1, the default; "iou": foreground
    IoU; "loss") is written as a model file (``save_model``) to ``checkpoint_dir/best.safetensors``.
    Checkpoints go to ``checkpoint_dir/last.safetensors`` after every epoch; ``resume`` (a checkpoint
    path) continues a run exactly: same weights, optimizer state, tiles and random numbers.
    loss_fn(logits, target, weights) (recorded by name, ``custom_loss``; a resume must pass one of that name):
    default the recipe's, ``losses.training_loss(recipe.dice)``: the paper's
    weighted cross-entropy, plus the soft Dice loss times ``dice`` (the default recipe's 1; the paper's 0).
    progress: None: a start-up line saying what is trained on what, then a progress bar on a terminal,
    else a line after the first step and every 15 s, and a line per epoch (rank 0, on stderr); False: none.
    Logs (history.csv, history.json, curves.png) go to ``log_dir``. Under torchrun every rank calls
    ``fit``; the process group is created here if it is not yet (and destroyed at the end). Each rank's
    random states go into the checkpoint and come back to the same rank on resume; a checkpoint of
    another world size resumes with a warning, not exactly. When one rank fails, every rank raises
    (``unet_fast.ranks``): a ``RankFailedError`` naming the failed rank where it did not fail.
    """
    settings = _settings(recipe, dict(epochs=epochs, batch_size=batch_size, optimizer=optimizer,
                                      lr=lr, momentum=momentum, weight_decay=weight_decay, lr_schedule=lr_schedule,
                                      warmup_steps=warmup_steps, tiles_per_epoch=tiles_per_epoch))
    if loss_fn is not None:                           # and the loss, by name
        settings = dataclasses.replace(settings, custom_loss=_qualified_name(loss_fn))
    if isinstance(train_data, SegmentationDataset):   # the checkpoint records the augmentation that runs
        settings = _augmentation_run(settings, augment)
    else:                                             # other data bring their own tiles, augmented or not
        if not (isinstance(augment, str) and augment == "recipe"):
            raise ValueError(f"augment: train_data ({type(train_data).__name__}) brings its own tiles, so augment="
                             f"{augment!r} would not run; augment a SegmentationDataset's tiles, or give the "
                             f"augmentation to the tiles (RandomTiles(..., augment=...))")
        settings = dataclasses.replace(settings.without_augmentation(),
                                       custom_augmentation=f"tiles of {_qualified_name(train_data)}")
    chose_metric = best_metric is not None      # else a resume keeps the run's own
    best_metric = _check_fit_arguments(model, train_data, val_data, time_limit, best_metric)
    check_device(device)
    clock = _Clock(time_limit)
    job = Torchrun.join(device)
    if amp:
        from .inference import warn_slow_cpu_precision

        warn_slow_cpu_precision(job.device, torch.bfloat16, "train without bf16 autocast (amp=False, no --amp)")
    run = None
    report = Progress(job.rank == 0 and progress is not False, bar=sys.stderr.isatty() if progress is None
                      else bool(progress) and sys.stderr.isatty())
    if isinstance(train_data, SegmentationDataset):
        report.note(f"preparing {len(train_data)} training image(s): reading, normalising, weight maps")
    try:
        with shared_failures("preparing the training data and model"):   # e.g. a file unreadable on one node
            run = _prepare(model, train_data, job, settings, tile_size=tile_size, augment=augment, seed=seed,
                           loss_fn=loss_fn, resume=resume, clock=clock, amp=amp, best_metric=best_metric,
                           chose_metric=chose_metric)
        best_metric = run.best_metric
        if resume is not None and log_dir is not None and job.rank == 0 and run.history:
            write_logs(log_dir, run.history)    # the checkpoint's: a kill after its write left the logs an epoch short
        if run.start_epoch > settings.epochs:
            raise ValueError(f"epochs: {settings.epochs}, but checkpoint {str(resume)!r} has trained {run.start_epoch} "
                             f"epoch(s) already; epochs counts the whole run: give at least {run.start_epoch}")
        run.net = DistributedDataParallel(model, device_ids=[job.device] if job.device.type == "cuda" else None) \
            if job.world > 1 else model
        checkpoint_path = Path(checkpoint_dir) / "last.safetensors" if checkpoint_dir is not None else None
        best_path = Path(checkpoint_dir) / "best.safetensors" if checkpoint_dir is not None and val_data is not None \
            else None
        if best_path is not None and resume is not None and job.rank == 0:
            _carry_best(Path(resume).parent / "best.safetensors", best_path, run)
        steps_per_epoch = -(-len(run.tiles) // (settings.batch_size * job.world))
        report.start(_describe(model, train_data, val_data, run, settings, job, steps_per_epoch, time_limit),
                     total=settings.epochs * steps_per_epoch, done=run.step)
        # a resumed run that used its time limit already: one more step would only add an epoch row
        stopped = clock.limit is not None and clock.fraction() >= 1 and run.start_epoch < settings.epochs
        if stopped:
            report.note(f"time limit of {_minutes(time_limit)} used already (checkpoint at step {run.step}): "
                        f"nothing trained; give a larger time limit to go on")
        for epoch in range(run.start_epoch, run.start_epoch if stopped else settings.epochs):
            termination.check()
            started = time.perf_counter()
            row, stopped = _train_epoch(run, job, epoch, num_workers=num_workers, amp=amp, report=report,
                                        total_steps=settings.epochs * steps_per_epoch)
            _check_not_diverged(model, row, epoch, checkpoint_path)   # before anything of this epoch is written
            if val_data is not None:
                metrics = evaluate(model, val_data, device=job.device, amp=amp, loss_fn=run.loss_fn,
                                   rank=job.rank, world=job.world)
                row.update({f"val_{key}": value for key, value in metrics.items()})
            row["seconds"] = time.perf_counter() - started
            row["elapsed"] = clock.elapsed()
            run.history.append(row)
            _save_epoch(model, run, job, epoch, checkpoint_path=checkpoint_path, best_path=best_path,
                        best_metric=best_metric, train_data=train_data, log_dir=log_dir, seed=seed, report=report)
            if stopped:
                report.note(f"time limit of {_minutes(time_limit)} reached after {row['step']} steps "
                            f"(epoch {epoch + 1} of {settings.epochs})")
                break
        model.eval()
        model.input_scale = getattr(train_data, "scale", 1.0)   # inference resamples as training did
        return FitResult(model, run.history, checkpoint_path if checkpoint_path and checkpoint_path.exists() else None,
                         best_path if best_path and best_path.exists() else None, stopped,
                         getattr(run.tiles, "tile_size", None))
    finally:
        report.close()
        # DDP holds the process group: let it go, so that destroying the group closes this rank's
        # connections and ranks still in a collective with it fail now rather than at the timeout (an
        # error's traceback keeps the frames of the epoch alive: none of them holds DDP but through the run)
        if run is not None:
            run.net = None
        job.leave()


def _settings(recipe, overrides: dict) -> Recipe:
    """The recipe with the arguments given to ``fit``; checks every value."""
    if isinstance(recipe, str) or isinstance(recipe, Recipe):
        return get_recipe(recipe).replace(**overrides)
    raise TypeError(f"recipe must be a recipe name or a unet_fast.recipes.Recipe, got {type(recipe).__name__}")


def _check_fit_arguments(model, train_data, val_data, time_limit, best_metric) -> str | None:
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    scales = getattr(train_data, "scale", 1.0), getattr(val_data, "scale", 1.0) if val_data is not None else None
    if val_data is not None and scales[0] != scales[1]:
        raise ValueError(f"val_data's scale ({scales[1]:g}) differs from train_data's ({scales[0]:g}): validation "
                         f"would score the model on objects of another size; give both datasets the same scale")
    outputs = getattr(model, "num_classes", None)
    for name, data in (("train_data", train_data), ("val_data", val_data)):
        classes = getattr(data, "num_classes", None) if isinstance(data, SegmentationDataset) else None
        if isinstance(outputs, int) and isinstance(classes, int) and classes > outputs:
            raise ValueError(f"{name} has num_classes={classes} but the model gives {outputs} classes: its targets "
                             f"up to {classes - 1} would fail the loss at the first step; build the model with "
                             f"num_classes={classes}")
    if time_limit is not None and not (isinstance(time_limit, (int, float)) and time_limit > 0
                                       and math.isfinite(time_limit)):
        raise ValueError(f"time_limit must be a number of seconds > 0, got {time_limit!r}")
    if best_metric is not None:
        if best_metric not in BEST_METRICS:
            raise ValueError(f"best_metric must be one of {tuple(BEST_METRICS)}, got {best_metric!r}")
        if val_data is None:
            raise ValueError("best_metric needs validation images (val_data): the best model is chosen on them")
    return best_metric or ("f1" if val_data is not None else None)


class _Clock:
    """Seconds used by a run, resumes included (the checkpoint's history carries the earlier ones)."""

    def __init__(self, limit: float | None):
        self.limit, self.before, self.started = limit, 0.0, time.perf_counter()

    def elapsed(self) -> float:
        return self.before + time.perf_counter() - self.started

    def fraction(self) -> float:
        """Share of the time limit used (0 without one)."""
        return self.elapsed() / self.limit if self.limit else 0.0


def learning_rate(recipe: Recipe, step: int, progress: float) -> float:
    """The rate of step ``step`` (0-based) at ``progress`` (0..1) through the run: a linear warm-up
    over ``warmup_steps`` steps, then constant or cosine from ``lr`` to 0."""
    if step < recipe.warmup_steps:
        return recipe.lr * (step + 1) / recipe.warmup_steps
    if recipe.lr_schedule == "cosine":
        return recipe.lr * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return recipe.lr


def _make_optimizer(model, recipe: Recipe) -> torch.optim.Optimizer:
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                               weight_decay=recipe.weight_decay)
    kind = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[recipe.optimizer]
    return kind(model.parameters(), lr=recipe.lr, betas=(recipe.momentum, 0.999), weight_decay=recipe.weight_decay)


def training_memory_format(device: torch.device) -> torch.memory_format:
    """The layout training runs in: channels_last on the CPU, where it was measured faster (a step of the
    default recipe's network, batch 4 of 140 px, one thread: 73-81 -> 57-60 ms; max-pooling alone 4.7 ->
    0.4 ms), plain contiguous elsewhere (not measured on a GPU)."""
    return torch.channels_last if device.type == "cpu" else torch.contiguous_format


def _prepare(model, train_data, job: Torchrun, recipe: Recipe, *, tile_size, augment, seed, loss_fn, resume,
             clock, amp: bool = False, best_metric: str | None = None, chose_metric: bool = False) -> _Run:
    """The model on its device, the training tiles, loss and optimizer, and what ``resume`` restores."""
    model.to(job.device, memory_format=training_memory_format(job.device))
    tiles = _training_tiles(model, train_data, recipe, tile_size, augment, seed)
    optimizer = _make_optimizer(model, recipe)
    run = _Run(tiles, loss_fn or training_loss(recipe.dice), optimizer, [], 0, recipe, clock, amp=bool(amp),
               best_metric=best_metric)
    if resume is not None:
        state = load_checkpoint(resume)
        if state.get("seed") is not None and state["seed"] != seed:
            raise ValueError(f"resume: checkpoint {str(resume)!r} was trained with seed {state['seed']}, "
                             f"got seed={seed}; pass the same seed to continue exactly")
        if state.get("amp") is not None and state["amp"] != bool(amp):   # (not recorded before 2026-11-27)
            raise ValueError(f"resume: checkpoint {str(resume)!r} was trained {'with' if state['amp'] else 'without'} "
                             f"bf16 autocast (amp={state['amp']}), got amp={bool(amp)}; resuming continues the same "
                             f"run with the same values (unet-fast train: {'add' if state['amp'] else 'leave out'} "
                             f"--amp)")
        if state.get("time_limit") is not None and clock.limit is None:      # (not recorded before 2026-11-28)
            raise ValueError(f"time_limit: checkpoint {str(resume)!r} trained under a time limit of "
                             f"{_minutes(state['time_limit'])}, over which its learning rate anneals; without one "
                             f"it would rise again to the rate of its step count. Give time_limit: the same "
                             f"finishes the run, a larger one extends it (unet-fast train: --time-limit MINUTES)")
        if state.get("best_metric") is not None and best_metric is not None and state["best_metric"] != best_metric:
            if chose_metric:
                raise ValueError(f"resume: checkpoint {str(resume)!r} chose its best model by "
                                 f"{state['best_metric']!r}, got best_metric={best_metric!r}; resuming continues the "
                                 f"same run with the same values (a best model chosen by two measures is neither's)")
            run.best_metric = state["best_metric"]      # the run's own, where the caller chose none
        _check_resumed_recipe(recipe, state.get("recipe"), resume)
        _check_resumed_network_and_tiles(model, tiles, state, resume)
        state = load_checkpoint(resume, model, optimizer)
        run.start_epoch, run.history = state["epoch"], state["history"]
        clock.before = run.history[-1].get("elapsed", 0.0) if run.history else 0.0
        restore_rng_state(state["rng"], job.rank, job.world, job.device, resume)
    return run


#: the recipe values a resumed run must share with its checkpoint (``epochs`` may change: a run can be
#: extended; the network and data values belong to the model and data the caller built)
RESUMED_FIELDS = ("optimizer", "lr", "momentum", "weight_decay", "lr_schedule", "warmup_steps", "batch_size",
                  "tiles_per_epoch", "dice", "custom_loss")


def _check_resumed_network_and_tiles(model, tiles, state: dict, resume) -> None:
    """ValueError when the network (its architecture: padding and dropout too, which the weights do not show)
    or the tile size differ from the checkpoint's (older checkpoints may record neither)."""
    saved = state.get("model_config")
    now = model.config() if hasattr(model, "config") else None
    changed = []
    if isinstance(saved, dict) and isinstance(now, dict):
        changed = [f"{name} {saved[name]!r} -> {now[name]!r}" for name in sorted(set(saved) & set(now))
                   if name != "backend" and saved[name] != now[name]]
    tile_size = getattr(tiles, "tile_size", None)
    if state.get("tile_size") is not None and tile_size is not None and state["tile_size"] != tile_size:
        changed.append(f"tile_size {state['tile_size']!r} -> {tile_size!r}")
    if changed:
        raise ValueError(f"resume: checkpoint {str(resume)!r} was trained with another network or tiles "
                         f"({', '.join(changed)}); resuming continues the same run: build the same network and "
                         f"pass the same tile_size")


def _augmentation_run(recipe: Recipe, augment) -> Recipe:
    """The recipe with the augmentation fields of what ``augment`` does: "recipe" its own, None none, "default"
    the paper's (``default_augmentation``), a callable every field off and the callable's name."""
    if callable(augment):
        return dataclasses.replace(recipe.without_augmentation(), custom_augmentation=_qualified_name(augment))
    if recipe.custom_augmentation:
        raise ValueError(f"augment: the recipe records a custom augmentation ({recipe.custom_augmentation}), "
                         f"which fit cannot rebuild from its name; pass that callable as augment")
    if augment is None:
        return recipe.without_augmentation()
    if isinstance(augment, str) and augment == "default":
        paper = get_recipe("paper")
        return dataclasses.replace(recipe, **{name: getattr(paper, name) for name in AUGMENTATION_FIELDS})
    return recipe


def _qualified_name(thing) -> str:
    """module.name of a function or class, else of the object's class (an instance such as ``Compose``)."""
    named = thing if hasattr(thing, "__qualname__") else type(thing)
    return f"{getattr(named, '__module__', None) or '?'}.{named.__qualname__}"


def _check_resumed_recipe(recipe: Recipe, saved: dict | None, resume) -> None:
    """ValueError when a training value differs from the checkpoint's recipe (older checkpoints have none)."""
    if not isinstance(saved, dict):
        return
    # and the augmentation, where the checkpoint records it truly (with a zoom field: before it, a run without
    # augmentation recorded the recipe's)
    # (a run with a callable before the callable's name was recorded also recorded the recipe's: not compared)
    fields = RESUMED_FIELDS + (AUGMENTATION_FIELDS if "zoom" in saved and (
        "custom_augmentation" in saved or not recipe.custom_augmentation) else ())
    if "custom_loss" not in saved and recipe.custom_loss:    # written before a loss_fn was recorded: unknown
        fields = tuple(name for name in fields if name != "custom_loss")
    saved = {**UNRECORDED_VALUES, **saved}      # what runs saved before a field existed trained with
    changed = [f"{name} {saved[name]!r} -> {getattr(recipe, name)!r}" for name in fields
               if name in saved and not same_value(saved[name], getattr(recipe, name))]
    if changed:
        raise ValueError(f"resume: checkpoint {str(resume)!r} was trained with other values ({', '.join(changed)}); "
                         f"resuming continues the same run with the same values")


def _train_epoch(run: _Run, job: Torchrun, epoch: int, *, num_workers, amp, report: Progress,
                 total_steps: int) -> tuple[dict, bool]:
    """One pass over this epoch's tiles (this rank's share), or until the time limit; the epoch's row
    of the history so far, and whether the time limit stopped it."""
    if hasattr(run.tiles, "set_epoch"):
        run.tiles.set_epoch(epoch)
    sampler = (DistributedSampler(run.tiles, job.world, job.rank, shuffle=False) if job.world > 1
               else SequentialSampler(run.tiles))
    loader = DataLoader(run.tiles, batch_size=run.recipe.batch_size, sampler=sampler, num_workers=num_workers,
                        pin_memory=job.device.type == "cuda")
    run.net.train()
    step = run.step
    loss_sum = torch.zeros((), dtype=torch.float64, device=job.device)
    steps, stopped = 0, False
    for image, target, weights in loader:
        rate = learning_rate(run.recipe, step, max(step / total_steps, run.clock.fraction()))
        for group in run.optimizer.param_groups:
            group["lr"] = rate
        image = image.to(job.device, non_blocking=True, memory_format=training_memory_format(job.device))
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
        steps += 1
        report.step(step, epoch, loss, rate)
        termination.check()   # SIGTERM, even where its exception was swallowed (a weakref callback)
        if run.clock.limit is not None and _agreed(job, run.clock.fraction() >= 1):
            stopped = True
            break
    check_pending()  # invalid targets or weights the loss found without stopping the GPU
    return {"epoch": epoch + 1, "step": step, "train_loss": job.mean(loss_sum, steps),
            "lr": run.optimizer.param_groups[0]["lr"]}, stopped


def _agreed(job: Torchrun, stop: bool) -> bool:
    """Whether any rank wants to stop (each rank's clock differs a little; all must stop at the same step)."""
    if job.world == 1:
        return stop
    return bool(job.all_reduce(torch.tensor([float(stop)], device=job.device)).item() > 0)


def _save_epoch(model, run: _Run, job: Torchrun, epoch: int, *, checkpoint_path, best_path, best_metric, train_data,
                log_dir, seed, report: Progress) -> None:
    """Rank 0 writes the checkpoint (with every rank's random states), the best model and the logs of this epoch."""
    rng_states = job.gather(rng_state(job.device))     # every rank's, for rank 0 to save
    with shared_failures(f"writing the checkpoint and logs of epoch {epoch + 1}"):   # also a barrier
        if job.rank != 0:
            return
        report.row(format_row(run.history[-1]))
        # the best model before the checkpoint: a kill between the two writes then leaves the checkpoint of
        # the epoch before, whose resume redoes this epoch and writes its best model (the other way round,
        # the resumed history held this epoch as the best, which best.safetensors never got)
        if best_path is not None and _is_best(run.history, best_metric):
            from .model_file import save_model

            column = BEST_METRICS[best_metric][0]
            save_model(model, best_path, normalization=getattr(train_data, "normalization", None),
                       input_scale=getattr(train_data, "scale", 1.0),
                       epoch=epoch + 1, step=run.history[-1]["step"], best_metric=best_metric,
                       **{column: run.history[-1][column]})
        if checkpoint_path is not None:
            save_checkpoint(checkpoint_path, model, run.optimizer, epoch=epoch + 1, history=run.history, seed=seed,
                            rng_states=rng_states, recipe=dataclasses.asdict(run.recipe),
                            tile_size=getattr(run.tiles, "tile_size", None), amp=run.amp,
                            best_metric=run.best_metric, time_limit=run.clock.limit)
        if log_dir is not None:
            write_logs(log_dir, run.history)


def _carry_best(earlier: Path, best_path: Path, run: _Run) -> None:
    """A run resumed into another checkpoint_dir starts there with its best model so far (``earlier``, beside the
    checkpoint it resumes): without it, the new folder had no best model until the score improved, and a run
    that never improved ended naming none. Only a best model of this run up to the checkpoint is carried: of its
    best_metric, from an epoch the checkpoint holds (a kill between the two writes leaves a later one)."""
    import shutil

    from .checks import same_file
    from .image_io import atomic_path
    from .model_file import read_model_config

    if best_path.exists() or not earlier.is_file() or same_file(earlier, best_path):
        return
    try:
        recorded = read_model_config(earlier).get("metadata") or {}
    except Exception:       # not a model file of ours: nothing to carry
        return
    epoch = recorded.get("epoch")
    if recorded.get("best_metric") != run.best_metric or not isinstance(epoch, int) or not 0 < epoch <= run.start_epoch:
        return
    with atomic_path(best_path) as temporary:
        shutil.copyfile(earlier, temporary)


def _is_best(history: list[dict], metric: str) -> bool:
    """Whether the last row is the best so far by ``metric`` (the first of equals stays the best)."""
    column, larger = BEST_METRICS[metric]
    values = [row[column] for row in history if row.get(column) is not None and not math.isnan(row[column])]
    if not values or history[-1].get(column) is None or math.isnan(history[-1][column]):
        return False
    earlier = values[:-1]
    return not earlier or (history[-1][column] > max(earlier) if larger else history[-1][column] < min(earlier))


class TrainingDiverged(ValueError):
    """The network's weights became NaN or infinite during an epoch: nothing of that epoch is kept."""


def _check_not_diverged(model, row: dict, epoch: int, checkpoint_path) -> None:
    """TrainingDiverged when a weight is NaN or infinite after ``epoch`` (every rank holds the same weights, so
    every rank raises): validating, checkpointing or saving such a model would only pass the NaNs on (and the
    epoch's checkpoint would replace the last good one). One pass over the weights, once an epoch."""
    if all(bool(torch.isfinite(p).all()) for p in model.parameters()):
        return
    kept = (f"the checkpoint of epoch {epoch} ({checkpoint_path}) is kept: resume from it with a lower learning "
            f"rate, or train again with one" if epoch and checkpoint_path is not None and checkpoint_path.exists()
            else "train again with a lower learning rate")
    raise TrainingDiverged(f"training diverged in epoch {epoch + 1} (by step {row.get('step')}; its mean loss "
                           f"{row.get('loss', float('nan')):.4g}): the network's weights hold NaN or infinite values; "
                           f"{kept} (--lr; the recipe's warm-up, --warmup, helps too)")


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.3g} min"


def _describe(model, train_data, val_data, run: _Run, recipe: Recipe, job: Torchrun, steps_per_epoch: int,
              time_limit) -> str:
    """The start-up line: what is trained on what, how, where."""
    parameters = sum(p.numel() for p in model.parameters())
    network = (f"U-Net depth {model.depth}, base {getattr(model, 'base_channels', '?')}, {model.padding} padding, "
               if hasattr(model, "depth") else f"{type(model).__name__}, ") + f"{parameters / 1e6:.3g} M parameters"
    if isinstance(train_data, SegmentationDataset):
        pixels = sum(train_data[i].target.size for i in range(len(train_data)))
        data = f"{len(train_data)} image(s), {pixels / 1e6:.3g} Mpx"
    else:
        data = "a dataset of tiles"
    if val_data is not None:
        data += f"; validation on {len(val_data)} image(s)"
    tiles = getattr(run.tiles, "tile_size", None)
    tiling = (f"{tiles} px tiles ({run.tiles.output_size} px out), " if tiles else "") + \
        f"batch {recipe.batch_size}, {len(run.tiles)} tiles/epoch, {recipe.epochs} epochs = " \
        f"{recipe.epochs * steps_per_epoch} steps" + (f", time limit {_minutes(time_limit)}" if time_limit else "")
    where = f"{job.device}" + (f", {torch.get_num_threads()} thread(s)" if job.device.type == "cpu" else "") + \
        (f", {job.world} processes" if job.world > 1 else "")
    return (f"training {network} on {data}: {tiling}; recipe {recipe.name}: {recipe.describe()}; {where}")


def default_tile_size(model, images: SegmentationDataset, largest: int = 572) -> int:
    """The largest legal input size up to ``largest`` whose output fits in the smallest image
    (at least the smallest legal size): the paper favours large tiles, batch 1."""
    depth, padding = model.depth, model.padding
    smallest_side = min(min(images[i].target.shape) for i in range(len(images)))
    sizes = geometry.valid_input_sizes(depth, max(largest, geometry.min_input_size(depth, padding)), padding)
    fitting = [n for n in sizes if geometry.output_size(n, depth, padding) <= smallest_side]
    return fitting[-1] if fitting else sizes[0]


def _training_tiles(model, train_data, recipe: Recipe, tile_size, augment, seed):
    """The tiles to train on; tile_size: as given (checked), else the recipe's for the model's depth
    (``Recipe.tile_for``), else (the paper's recipe) the largest legal one up to 572 px that fits the images."""
    if isinstance(train_data, SegmentationDataset):
        if len(train_data) == 0:
            raise ValueError("train_data is empty: training needs at least one labelled image")
        for attr in ("depth", "padding"):
            if not hasattr(model, attr):
                raise TypeError(f"model must be a unet_fast UNet (with .depth and .padding) to draw tiles "
                                f"from a SegmentationDataset; got {type(model).__name__}. Pass RandomTiles instead.")
        tile_size = recipe.tile_for(model.depth, model.padding) if tile_size is None else tile_size
        if tile_size is None:
            tile_size = default_tile_size(model, train_data)
        if augment is None or (isinstance(augment, str) and augment in ("recipe", "default")):
            augment = recipe.augmentation()     # fit wrote None's and "default"'s into the recipe
        elif not callable(augment):
            raise ValueError(f"augment must be 'recipe', 'default', None or a callable, got {augment!r}")
        return RandomTiles(train_data, tile_size, depth=model.depth, padding=model.padding,
                           tiles_per_epoch=recipe.tiles_per_epoch, augment=augment, seed=seed)
    if isinstance(train_data, torch.utils.data.Dataset) and hasattr(train_data, "__len__"):
        if len(train_data) == 0:
            raise ValueError("train_data is empty")
        return train_data
    raise TypeError(f"train_data must be a SegmentationDataset, RandomTiles or a Dataset of "
                    f"(image, target, weights) tiles; got {type(train_data).__name__}")
