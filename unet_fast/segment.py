"""Batch segmentation of files: ``unet-fast segment`` (see cli.py for the flags).

Each input file gives one output file, OUTDIR/<input stem><suffix>, written atomically by
predict_tiled, so ``--continue`` can trust any output that exists. The input's pixel size
(OME-TIFF, ImageJ TIFF, OME-Zarr) goes into the output, and an image at a very different scale
from the model's training images draws a warning (unet_fast.pixel_size). Files that cannot be read
or do not match the model are reported and skipped. The file list is sharded over
torch.distributed ranks (under torchrun) and over ``--num-parts``/``--part-id`` (job arrays);
a rank that fails as a whole (model file unreadable there, out of memory) makes every rank raise
at the final summary, naming it (``unet_fast.ranks``).
"""
from __future__ import annotations

import glob
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import io
from .inference import predict_tiled
from .pixel_size import read_pixel_size, scale_warning
from .ranks import shared_failures

OUTPUT_SUFFIXES = {"tif": ".tif", "ome.zarr": ".ome.zarr"}


@dataclass
class SegmentSummary:
    done: list[str] = field(default_factory=list)            # inputs segmented by this process
    skipped: list[str] = field(default_factory=list)         # outputs already there (--continue)
    failed: list[tuple[str, str]] = field(default_factory=list)
    pixels: int = 0
    seconds: float = 0.0


def expand_inputs(inputs: list[str]) -> tuple[list[Path], list[tuple[str, str]]]:
    """Files named, image files directly inside folders, and glob matches; sorted, unique.

    Returns (files, problems) where problems are inputs that matched nothing.
    """
    files: set[Path] = set()
    problems = []
    for item in inputs:
        path = Path(item)
        if path.is_dir() and not io.is_zarr_image(path):
            found = [p for p in path.iterdir()
                     if (p.is_file() and p.suffix.lower() in io.IMAGE_SUFFIXES) or io.is_zarr_image(p)]
            if not found:
                problems.append((item, f"folder holds no image files ({', '.join(io.IMAGE_SUFFIXES)}, .zarr)"))
            files.update(found)
        elif path.is_file() or io.is_zarr_image(path):
            files.add(path)
        else:
            matches = [Path(m) for m in glob.glob(item, recursive=True) if Path(m).is_file() or io.is_zarr_image(m)]
            if not matches:
                problems.append((item, "no such file, folder or matching pattern"))
            files.update(matches)
    return sorted(files, key=lambda p: str(p)), problems


def shard(files: list, part: int, parts: int) -> list:
    """Every parts-th file starting at part: the shards are disjoint and cover the list."""
    if not 0 <= part < parts:
        raise ValueError(f"part must be in [0, {parts}), got {part}")
    return files[part::parts]


def output_name(path: Path, suffix: str) -> str:
    """The input's name without its image suffix (".ome.tif" counts as one), plus ``suffix``."""
    for known in (".ome.tiff", ".ome.tif", ".ome.zarr"):
        if path.name.lower().endswith(known):
            return path.name[:-len(known)] + suffix
    return path.stem + suffix


def _layout(info: io.ImageInfo, in_channels: int) -> str:
    other = [a for a in info.axes[:-2] if a != "C"]
    if info.axes[-2:] != "YX" or len(other) > 1:
        raise ValueError(f"unsupported axes {info.axes!r} (shape {info.shape}); need YX, CYX, or one extra "
                         f"axis (Z, T, ...) before them")
    channels = info.shape[info.axes.index("C")] if "C" in info.axes else 1
    if channels != in_channels:
        raise ValueError(f"has {channels} channel(s) (shape {info.shape}, axes {info.axes!r}); "
                         f"the model expects {in_channels}")
    return ("Z" if other else "") + ("C" if "C" in info.axes else "") + "YX"


def segment_files(files: list[Path], outdir: Path, model, *, suffix: str = ".tif", output: str = "labels",
                  tile_size=None, batch_size=None, device=None, dtype=None, resume: bool = False,
                  max_pixels: int | None = io.DEFAULT_MAX_PIXELS, progress: bool = False,
                  log=print) -> SegmentSummary:
    """Segment ``files`` into ``outdir``; never raises for a bad file (see the summary)."""
    from tqdm.auto import tqdm

    summary = SegmentSummary()
    outdir.mkdir(parents=True, exist_ok=True)
    claimed: dict[Path, Path] = {}
    start = time.perf_counter()
    for path in tqdm(files, unit="file", disable=not progress, desc="segment"):
        target = outdir / output_name(path, suffix)
        if target in claimed:
            summary.failed.append((str(path), f"output {target} is also the output of {claimed[target]}"))
            log(f"FAILED {path}: output {target} is also the output of {claimed[target]}", file=sys.stderr)
            continue
        claimed[target] = path
        if resume and target.exists():
            summary.skipped.append(str(path))
            continue
        try:
            image, info = io.read_image(path, lazy=True, max_pixels=max_pixels)
            layout = _layout(info, model.in_channels)
            pixel_size = read_pixel_size(path)
            if warning := scale_warning(model, pixel_size, path):
                log(f"WARNING {warning}", file=sys.stderr)
            began = time.perf_counter()
            predict_tiled(model, image, tile_size=tile_size, batch_size=batch_size, device=device, dtype=dtype,
                          output=output, progress=False, out=target, layout=layout, pixel_size=pixel_size)
            pixels = info.pixels // (info.shape[info.axes.index("C")] if "C" in info.axes else 1)
            summary.pixels += pixels
            summary.done.append(str(path))
            log(f"ok {path} -> {target} ({'x'.join(map(str, info.shape))}, {time.perf_counter() - began:.2f} s)")
        except (KeyboardInterrupt, torch.OutOfMemoryError):
            raise
        except Exception as error:  # reported and skipped: one bad file must not stop the batch
            reason = f"{type(error).__name__}: {error}"
            summary.failed.append((str(path), reason))
            log(f"FAILED {path}: {reason}", file=sys.stderr)
    summary.seconds = time.perf_counter() - start
    return summary


def _distributed_context(device: str | None):
    """(rank, world, device) under torchrun (process group started here), else (0, 1, device).

    With --device cuda each rank takes the GPU of its LOCAL_RANK.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or "RANK" not in os.environ:
        return 0, 1, device
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "cuda":
        device = f"cuda:{local_rank}"
    if not dist.is_initialized():  # gloo even with GPUs: only the summary counts (CPU tensors) travel
        dist.init_process_group("gloo")
    return dist.get_rank(), dist.get_world_size(), device


def run(args) -> tuple[SegmentSummary, int]:
    """Carry out a parsed ``segment`` command; returns (this process's summary, exit status)."""
    from .model_file import load_model

    if (args.num_parts is None) != (args.part_id is None):
        raise SystemExit("segment: --num-parts and --part-id go together")
    parts, part = (args.num_parts, args.part_id) if args.num_parts is not None else (1, 0)
    if not 0 <= part < parts:
        raise SystemExit(f"segment: --part-id must be in [0, {parts}), got {part}")
    rank, world, device = _distributed_context(args.device)
    try:
        progress = not args.no_progress and sys.stderr.isatty()
        with shared_failures("segment"):    # what segment_files does not catch: listing, model, out of memory
            files, problems = expand_inputs(args.input)
            mine = shard(files, part * world + rank, parts * world)
            model = load_model(args.model, device=device or "cpu")
            summary = segment_files(mine, Path(args.output_dir), model, suffix=OUTPUT_SUFFIXES[args.format],
                                    output=args.output, tile_size=args.tile_size, batch_size=args.batch_size,
                                    device=device, dtype=args.dtype, resume=args.resume,
                                    max_pixels=args.max_pixels, progress=progress)
        if rank == 0:
            for item, reason in problems:
                print(f"FAILED {item}: {reason}", file=sys.stderr)
            summary.failed.extend(problems)
        totals = [len(summary.done), len(summary.skipped), len(summary.failed), summary.pixels]
        seconds = summary.seconds
        if world > 1:
            import torch.distributed as dist

            counts = torch.tensor(totals, dtype=torch.float64)
            dist.all_reduce(counts, op=dist.ReduceOp.SUM)
            longest = torch.tensor([seconds], dtype=torch.float64)
            dist.all_reduce(longest, op=dist.ReduceOp.MAX)
            totals, seconds = [int(v) for v in counts.tolist()], float(longest)
    finally:
        if world > 1:
            import torch.distributed as dist

            dist.destroy_process_group()
    prefix = f"[part {part}/{parts}] " if parts > 1 else ""
    if rank == 0:
        rate = totals[3] / 1e6 / seconds if seconds > 0 else 0.0
        print(f"{prefix}summary: {len(files)} file(s) found, {totals[0]} segmented, {totals[1]} skipped (exist), "
              f"{totals[2]} failed; {totals[3] / 1e6:.4g} megapixels in {seconds:.1f} s = {rate:.2f} MP/s"
              + (f" over {world} processes" if world > 1 else ""))
    return summary, 1 if totals[2] else 0
