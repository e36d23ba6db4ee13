"""Batch segmentation of files: ``unet-fast segment``, or ``run`` from Python.

Each input file gives one output file, OUTDIR/<input stem><suffix> (with ``recursive``, in the subfolder of
OUTDIR its input is in under the folder named: ``output_subfolders``), written atomically by predict_tiled,
so ``resume`` (``--continue``) can trust any output that exists. The input's pixel size (OME-TIFF, ImageJ
TIFF, OME-Zarr) goes into the output, and an image at a very different scale from the model's training
images draws a warning (``unet_fast.pixel_size``). Files that cannot be read or
do not match the model are reported and skipped. The file list (rank 0's) is sharded over torch.distributed
ranks (under torchrun) and over ``num_parts``/``part_id`` (job arrays);
a rank that fails as a whole (model file unreadable there, out of memory) makes every rank raise
at the final summary, naming it (``unet_fast.ranks``).
"""
from __future__ import annotations

import collections
import dataclasses
import datetime
import functools
import glob
import hashlib
import itertools
import json
import logging
import math
import os
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from . import checks, geometry, image_io, termination
from .inference import OUTPUTS, check_chosen_plan_fits, label_names, predict_images, predict_tiled
from .pixel_size import read_pixel_size, scale_warning
from .sinks import read_provenance
from .rescale import check_scale, model_scale
from .ranks import shared_failures
from .torchrun import Torchrun

OUTPUT_SUFFIXES = {"tif": ".tif", "ome.zarr": ".ome.zarr"}
logger = logging.getLogger(__name__)


@dataclass
class SegmentSummary:
    done: list[str] = field(default_factory=list)            # inputs segmented by this process
    skipped: list[str] = field(default_factory=list)         # outputs already there (--continue)
    failed: list[tuple[str, str]] = field(default_factory=list)
    pixels: int = 0
    seconds: float = 0.0


def expand_inputs(inputs: list[str], recursive: bool = False,
                  skip=()) -> tuple[list[Path], list[tuple[str, str]]]:
    """Files named, image files inside folders, and glob matches; sorted, unique (one file named two ways,
    ``a/x.tif`` and ``b/../a/x.tif``, its absolute path, or through a symlink to it or to a folder above it, is
    listed once, as first named).

    A folder gives the images directly in it, or with ``recursive`` those in its subfolders at any depth too
    (``_folder_images``): names starting with "." are skipped there (macOS's ``._x.tif`` resource forks, our own
    ``.NAME.<hex>.partial.*`` temporaries), as glob wildcards skip them; a hidden file named is taken. With
    ``recursive`` a folder a glob pattern matches is listed as a named one (without, only files match). ``skip``:
    folders a recursive listing does not enter (the output folder, when it lies inside an input folder), nor a glob
    pattern takes the matches inside, with ``recursive`` or not (below the pattern's folder: "seg/*.tif" names them).

    Returns (files, problems) where problems are inputs that matched nothing, and subfolders that cannot be read.
    """
    found_as: dict[str, Path] = {}     # the file itself (symlinks resolved) -> the path as first named
    problems = []
    skipped = {key for key in map(_identity, skip) if key is not None}

    def add(paths) -> None:
        for found in paths:
            found_as.setdefault(os.path.realpath(found), found)

    for item in inputs:
        path = Path(item)
        if path.is_dir() and not image_io.is_zarr_image(path):
            found, unreadable = _folder_images(path, recursive, skipped)
            problems.extend(unreadable)
            if not found:
                kinds = ", ".join(image_io.IMAGE_SUFFIXES + image_io.ZARR_SUFFIXES)
                problems.append((item, f"folder holds no image files ({kinds})"
                                       + (" in it or its subfolders" if recursive else "")))
            add(found)
        elif path.is_file() or image_io.is_zarr_image(path):
            add([path])
        else:
            matched = [Path(m) for m in glob.glob(item, recursive=True)]
            matches = [m for m in matched if m.is_file() or image_io.is_zarr_image(m)]
            # never the output folder's own files below the pattern's folder, -r or not ("plates/**/*.tif" -o
            # plates/seg: a second run listed the first one's outputs as inputs, and refused to run)
            base, known = Path(os.path.abspath(_pattern_base(item))), {}
            matches = [m for m in matches if not _inside(m, skipped, known, base)]
            if recursive:   # as the folders it matches were named ("plates/*", "plates/**"), the output folder left out
                for folder in _outermost(m for m in matched if m.is_dir() and not image_io.is_zarr_image(m)):
                    if Path(os.path.abspath(folder)) == base or not (
                            _identity(folder) in skipped or _inside(folder, skipped, known, base)):
                        found, unreadable = _folder_images(folder, recursive, skipped)
                        problems.extend(unreadable)
                        matches.extend(found)
            if not matches:
                problems.append((item, "neither a regular file nor a folder" if path.exists() else
                                 "no such file, folder or matching pattern" + (
                                     "; an @LIST inside a list is not read: name each list on the command line"
                                     if item.startswith("@") and Path(item[1:]).is_file() else "")))
            add(sorted(matches))
    return sorted(found_as.values(), key=lambda p: str(p)), problems


def _inside(path: Path, folders: set, known: dict, base: Path) -> bool:
    """Whether ``path`` lies in one of ``folders`` ((device, inode), ``_identity``) below ``base`` (absolute: a
    pattern's folder, which is listed as a named folder is, even when it is one of them); ``known``: the answers
    for folders so far (the matches of one pattern share their parents)."""
    def within(folder: Path) -> bool:
        if folder == base or folder.parent == folder:
            return False
        if folder not in known:
            known[folder] = _identity(folder) in folders or within(folder.parent)
        return known[folder]

    return bool(folders) and within(Path(os.path.abspath(path)).parent)


def _outermost(folders) -> list[Path]:
    """``folders`` without those inside another of them (a recursive listing of that one lists them)."""
    kept: list[Path] = []
    for folder in sorted(folders, key=lambda f: len(Path(os.path.abspath(f)).parts)):
        absolute = Path(os.path.abspath(folder))
        if not any(Path(os.path.abspath(k)) in (absolute, *absolute.parents) for k in kept):
            kept.append(folder)
    return sorted(kept)


def _identity(path) -> tuple[int, int] | None:
    """(device, inode) of what ``path`` leads to (through symlinks); None when it cannot be read."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def _folder_images(folder: Path, recursive: bool, skipped: set) -> tuple[list[Path], list[tuple[str, str]]]:
    """The image files (OME-Zarr folders included, never entered) not hidden in ``folder``, in name order; with
    ``recursive`` in its subfolders too, depth first. Each folder is entered once however many symlinks lead
    to it, so a symlink to a folder above it ends there; folders in ``skipped`` ((device, inode)) are not
    entered. Returns (files, problems): a subfolder that cannot be read is a problem, ``folder`` itself raises."""
    found, problems = [], []
    entered = {_identity(folder)}
    pending = [folder]
    while pending:
        directory = pending.pop()
        try:
            entries = sorted(directory.iterdir())
        except OSError as error:
            if directory == folder:
                raise
            problems.append((str(directory), f"subfolder cannot be read ({error.strerror or error})"))
            continue
        below = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if image_io.is_zarr_image(entry) or (entry.is_file() and entry.suffix.lower() in image_io.IMAGE_SUFFIXES):
                found.append(entry)
            elif recursive and entry.is_dir():
                key = _identity(entry)
                if key is not None and key not in entered and key not in skipped:
                    entered.add(key)
                    below.append(entry)
        pending.extend(reversed(below))
    return found, problems


def output_subfolders(files: list[Path], inputs: list[str]) -> dict[Path, Path]:
    """{file: its folder relative to the outermost folder of ``inputs`` it lies in, as named}: where a recursive
    run writes its output under the output folder. A glob pattern stands for the folder before its first
    wildcard ("plates/**/*.tif": plates). The outermost, so that a folder named inside another (-i plates/p1
    plates) is mirrored as a part of it, not flattened onto the outer one's own images. Files directly in that
    folder, or in none, are left out: their outputs go into the output folder itself."""
    roots = set()
    for item in inputs:
        path = Path(item)
        if path.is_dir() and not image_io.is_zarr_image(item):
            roots.add(Path(os.path.abspath(item)))
        elif not path.is_file() and not image_io.is_zarr_image(item) and glob.has_magic(item):
            roots.add(Path(os.path.abspath(_pattern_base(item))))
    subfolders = {}
    for path in files:
        within = Path(os.path.abspath(path)).parent
        root = min((root for root in roots if root == within or root in within.parents),
                   key=lambda root: len(root.parts), default=None)
        if root is not None and root != within:
            subfolders[path] = within.relative_to(root)
    return subfolders


def _say_output_not_listed(inputs: list[str], outdir: Path, log) -> None:
    """A recursive run does not list what lies in its output folder: say so where that folder is inside an input
    folder (-r -i plates -o plates/p1 leaves p1's own images out; -o plates/seg, earlier outputs)."""
    if not outdir.is_dir():
        return
    inside = Path(os.path.realpath(outdir))
    for item in inputs:
        folder = Path(item)
        if folder.is_dir() and not image_io.is_zarr_image(folder) and Path(os.path.realpath(folder)) in inside.parents:
            log(f"note: the output folder {outdir} lies inside the input folder {item}: nothing in it is listed "
                f"as an input (earlier outputs, or images of yours there)")
            return


def _pattern_base(pattern: str) -> str:
    """The folder of a glob pattern before its first wildcard ("plates/*/A*.tif": plates; "*.tif": .)."""
    parts = Path(pattern).parts[:-1]
    literal = list(itertools.takewhile(lambda part: not glob.has_magic(part), parts))
    return str(Path(*literal)) if literal else "."


def shard(files: list, part: int, parts: int) -> list:
    """Every parts-th file starting at part: the shards are disjoint and cover the list."""
    if not 0 <= part < parts:
        raise ValueError(f"part must be in [0, {parts}), got {part}")
    return files[part::parts]


def rank_share(part: list, rank: int, world: int, done: set) -> list:
    """This rank's files of a part (``shard``): the files still to segment shared among the ranks, then those whose
    outputs exist (``done``: --continue skips them). Sharded as one list, a resumed run left some ranks all files
    done and others all still to do, and the job took as long as a rank with twice its share."""
    if world == 1:
        return part
    return shard([path for path in part if path not in done], rank, world) + \
        shard([path for path in part if path in done], rank, world)


def output_name(path: Path, suffix: str) -> str:
    """The input's name without its image suffix (".ome.tif" counts as one), plus ``suffix``."""
    for known in (".ome.tiff", ".ome.tif", ".ome.zarr"):
        if path.name.lower().endswith(known):
            return path.name[:-len(known)] + suffix
    return path.stem + suffix


def output_path(outdir: Path, path: Path, suffix: str, subfolders: dict[Path, Path] | None = None) -> Path:
    """Where the output of ``path`` goes: outdir/<its subfolder, if any (``output_subfolders``)>/<output_name>."""
    return outdir / (subfolders or {}).get(path, "") / output_name(path, suffix)


def overlay_path(outdir: Path, path: Path, subfolders: dict[Path, Path] | None = None) -> Path:
    """Where the overlay of ``path`` goes: outdir/overlays/<its subfolder, if any>/<name>.png."""
    return output_path(outdir / "overlays", path, ".png", subfolders)


def check_outputs(files: list[Path], outdir: Path, suffix: str, overlay: bool = False,
                  subfolders: dict[Path, Path] | None = None) -> None:
    """BadArgument (output_dir) when an input's output would be, or would replace, an input: the same
    path (outputs written into the inputs' folder under their names), or the same file through a
    symlink or a hard link, or a folder output (.ome.zarr) holding an input; with ``overlay`` the
    overlays (outdir/overlays/<name>.png) too. subfolders: see ``output_path``."""
    inputs = {}
    for path in files:
        try:
            stat = os.stat(path)
        except OSError:
            continue
        inputs[(stat.st_dev, stat.st_ino)] = path
    folders = suffix.endswith(".zarr")
    for path in files:
        if image_io.is_zarr_image(path) and checks.overlapping(path, outdir):   # outputs would go into the image
            raise checks.BadArgument("output_dir", f"{str(outdir)!r} lies inside the input {str(path)!r}, an OME-Zarr "
                                                   f"image that outputs must not be written into; nothing was written. "
                                                   f"Choose an output folder outside it")
        targets = [(output_path(outdir, path, suffix, subfolders), "output", folders)]
        if overlay:
            targets.append((overlay_path(outdir, path, subfolders), "overlay", False))
        for target, what, folder in targets:
            try:
                stat = os.stat(target)          # follows symlinks: a link to an input is that input
            except OSError:
                continue
            source = inputs.get((stat.st_dev, stat.st_ino))
            if source is None and folder:
                source = next((f for f in files if checks.overlapping(target, f)), None)
            if source is not None:
                same = Path(os.path.abspath(target)) == Path(os.path.abspath(source))
                raise checks.BadArgument(
                    "output_dir", f"the {what} for {str(path)!r} would be {str(target)!r}, which "
                                  + ("is that input itself" if same and source == path else
                                     f"is the input {str(source)!r}" if same else f"is the same file as the input "
                                                                                   f"{str(source)!r}")
                                  + "; nothing was written. Choose an output folder that holds no inputs")


def check_replaceable(files: list[Path], outdir: Path, suffix: str,
                      subfolders: dict[Path, Path] | None = None) -> None:
    """BadArgument (output_dir) when an input's output would replace a file or folder that segment did not
    write (it records no provenance): a user's own labels in the output folder, say, are never replaced."""
    for path in files:
        target = output_path(outdir, path, suffix, subfolders)
        if (target.exists() or target.is_symlink()) and read_provenance(target) is None:
            if target.is_dir() and not suffix.endswith(".zarr"):
                continue       # a folder where a .tif goes: that file's own failure (claim)
            raise checks.BadArgument(
                "output_dir", f"the output for {str(path)!r} would replace {str(target)!r}, which unet-fast segment "
                              f"did not write (it records no provenance); nothing was written. Move or rename it, or "
                              f"choose another output folder")


def check_overlays_replaceable(files: list[Path], outdir: Path, suffix: str, resume: bool = False,
                               subfolders: dict[Path, Path] | None = None) -> None:
    """BadArgument (output_dir) when an overlay this run would write (outdir/overlays/<name>.png) would replace
    a file, folder or symlink that segment did not write (``overlays.check_replaceable``: overlays carry a
    marker). With ``resume``, an input whose output is kept and whose overlay exists writes none (``claim``)."""
    from . import overlays

    written = []
    for path in files:
        overlay = overlay_path(outdir, path, subfolders)
        if not (resume and output_path(outdir, path, suffix, subfolders).exists() and overlay.exists()):
            written.append(overlay)
    overlays.check_replaceable(written, "output_dir")


def output_owners(files: list[Path], outdir: Path, suffix: str,
                  subfolders: dict[Path, Path] | None = None) -> dict[Path, Path]:
    """{output path: the first of ``files`` (in their order) whose output it is}: a later file of the same output
    name fails, in whichever part or process it is segmented."""
    owners: dict[Path, Path] = {}
    for path in files:
        owners.setdefault(output_path(outdir, path, suffix, subfolders), path)
    return owners


def output_kind(path: Path) -> str | None:
    """What an existing output of ``segment`` holds: "labels" (a class per pixel: uint8, or int32 above 256
    classes), "instances" (objects: uint16 or uint32), "probabilities" (floats, a class axis), or another kind of
    predict_tiled (``inference.OUTPUTS``); None when it cannot be read or is none of these.

    The kind its provenance records ("output", ``provenance``), where its data is of that kind (an integer per
    pixel, or floats with a class axis); None where it is not, or the recorded kind is unknown. An output that
    records no kind (written before outputs recorded their provenance) is told by its data type alone. NGFF's
    "image-label" tells nothing: every integer OME-Zarr output, class labels and instances, carries it."""
    try:
        _, info = image_io.read_image(path, lazy=True, max_pixels=None)
    except Exception:   # unreadable: not something --continue may keep
        return None
    dtype = np.dtype(info.dtype)
    classes = info.shape[info.axes.index("C")] if "C" in info.axes else None
    per_pixel = ("integer" if dtype.kind in "iu" and classes in (None, 1) else
                 "floats" if dtype.kind == "f" and classes is not None else None)
    recorded = (read_provenance(path) or {}).get("output")
    if recorded is not None:
        holds = {"labels": "integer", "instances": "integer", "probabilities": "floats", "logits": "floats"}
        return recorded if isinstance(recorded, str) and holds.get(recorded) == per_pixel else None
    if per_pixel == "floats":
        return "probabilities"
    if per_pixel == "integer" and dtype in (np.uint16, np.uint32):
        return "instances"
    if per_pixel == "integer" and dtype in (np.uint8, np.int32):
        return "labels"
    return None


def provenance(model, *, output: str, tta: bool, scale, dtype, instance_options) -> dict:
    """How segment makes its outputs, recorded in each (``sinks.read_provenance``): the weights (a digest),
    the kind, the test-time augmentation, the resampling factor (None: the model's), the precision and the
    instance rules as applied on the image's grid (``InstanceOptions.in_image_pixels``: an output made before
    the rules counted the network's pixels, by a model that resamples, differs from one made now, and
    --continue must not mix them); class labels also the model's class names (value 0 the first), which an
    OME-Zarr output gives as NGFF "image-label" "properties" too (``sinks.open_sink``); --continue does not compare
    them (names, not results)."""
    from . import __version__
    from .instance_options import InstanceOptions

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    normalization = getattr(model, "normalization", None)
    made = {"unet_fast": __version__, "weights_sha256": digest.hexdigest(), "output": output, "tta": bool(tta),
            "scale": model_scale(model, scale), "dtype": dtype or "fp32",
            "normalization": normalization.to_dict() if normalization is not None else None,
            "instance_options": dataclasses.asdict((instance_options or InstanceOptions()).in_image_pixels(
                model_scale(model, scale))) if output == "instances" else None,
            "class_names": label_names(model, output)}
    return json.loads(json.dumps(made))     # as it reads back from a file (lists, not tuples)


#: what --continue compares (not the version that wrote an output)
COMPARED = ("weights_sha256", "output", "tta", "scale", "dtype", "normalization", "instance_options")


def check_resumable(files: list[Path], outdir: Path, suffix: str, output: str, made: dict | None = None,
                    subfolders: dict[Path, Path] | None = None) -> None:
    """``resume`` keeps an existing output only when it holds the kind asked for (``output_kind``) and, where
    it records how it was made (``provenance``), was made as ``made`` would make it: BadArgument (resume)
    before anything is segmented when one holds another kind or other settings, or cannot be told. A
    .tif output that is a folder is left to fail as that file's own failure."""
    for path in files:
        target = output_path(outdir, path, suffix, subfolders)
        if not target.exists() or (target.is_dir() and not suffix.endswith(".zarr")):
            continue
        kind = output_kind(target)
        if kind != output:
            raise checks.BadArgument(
                "resume", f"the existing output {str(target)!r} holds "
                          + (f"{kind}, not {output}" if kind else f"no result of segment that can be read (wanted "
                                                                  f"{output})")
                          + "; --continue keeps only outputs of the kind asked for (--output). Choose another "
                            "output folder, or leave out --continue to replace the outputs")
        recorded = read_provenance(target) if made is not None else None
        if recorded is not None and isinstance(recorded.get("instance_options"), dict):
            recorded["instance_options"].setdefault("smoothing", 0.0)   # written before outlines were smoothed
        changed = [key for key in COMPARED if recorded is not None and recorded.get(key) != made.get(key)]
        if changed:
            what = ", ".join("the model's weights" if key == "weights_sha256" else
                             _difference(key, recorded.get(key), made.get(key)) for key in changed)
            raise checks.BadArgument(
                "resume", f"the existing output {str(target)!r} was made otherwise ({what}); --continue keeps only "
                          f"outputs made as this run would make them. Run with that output's settings, choose "
                          f"another output folder, or leave out --continue to replace the outputs")


def _difference(key: str, there, now) -> str:
    """How a recorded setting differs from this run's: for a dict (the instance rules), only the entries that
    differ (one that an older version did not record reads None there)."""
    if isinstance(there, dict) and isinstance(now, dict):
        return ", ".join(f"{key}.{name} {there.get(name)!r} there, {now.get(name)!r} now"
                         for name in sorted(set(there) | set(now)) if there.get(name) != now.get(name))
    return f"{key} {there!r} there, {now!r} now"


def _layout(info: image_io.ImageInfo, in_channels: int) -> str:
    other = [a for a in info.axes[:-2] if a != "C"]
    if info.axes[-2:] != "YX" or len(other) > 1:
        raise ValueError(f"unsupported axes {info.axes!r} (shape {info.shape}); need YX, CYX, or one extra "
                         f"axis (Z, T, ...) before them")
    channels = info.shape[info.axes.index("C")] if "C" in info.axes else 1
    if channels != in_channels:
        raise ValueError(f"has {channels} channel(s) (shape {info.shape}, axes {info.axes!r}); "
                         f"the model expects {in_channels}: give it images of {in_channels} channel(s), or train "
                         f"a model on images like this one")
    return ("Z" if other else "") + ("C" if "C" in info.axes else "") + "YX"


#: files above this many pixels get a line when they start, not only when they finish
ANNOUNCED_PIXELS = 2 ** 26
#: files of at most this many pixels (``held_pixels``) are segmented in batches of files of their shape
#: (``predict_images``): their tiles share the network's batches, which a file of a tile or two alone cannot
#: fill; ``evaluate_model`` batches labelled images by the same rule
SMALL_FILE_PIXELS = 2 ** 20
#: a batch of small files holds at most this many pixels (``held_pixels``) and this many files
BATCH_PIXELS, BATCH_FILES = 2 ** 24, 32
#: files opened (small ones read whole) ahead of the one being segmented, by this many reader threads: one
#: per two cores, at most 4 (on 2 cores a second reader only competes with the network: measured slower)
READ_AHEAD, READERS = 64, max(1, min(4, (os.cpu_count() or 2) // 2))


@dataclass
class _File:
    """An input read lazily and checked, with where its results go."""
    path: Path
    target: Path
    overlay: Path
    image: object
    info: image_io.ImageInfo
    layout: str
    pixel_size: object
    warning: str | None = None      # the image's pixels are far from the model's training scale; series left out

    @property
    def plane_pixels(self) -> int:
        return plane_pixels(self.info.shape, self.info.axes)


def plane_pixels(shape, axes: str) -> int:
    """The pixels of an image of ``shape`` and ``axes`` without its channels."""
    return math.prod(shape) // (shape[axes.index("C")] if "C" in axes else 1)


def held_pixels(plane: int, scale: float) -> float:
    """The pixels memory holds of a plane of ``plane`` pixels segmented at ``scale``: the plane as read, or
    its resampled view when that is larger. Small files and batches (``SMALL_FILE_PIXELS``,
    ``BATCH_PIXELS``) count these."""
    return plane * max(1.0, scale ** 2)


@dataclass
class _Segmenter:
    """segment_files' settings and summary, and how it segments one file or a batch of small ones."""
    outdir: Path
    model: torch.nn.Module
    summary: SegmentSummary
    log: object
    suffix: str
    output: str
    overlay: bool
    resume: bool
    max_pixels: int | None
    factor: float
    progress: bool      # a bar over each large file's tiles
    predict: dict       # predict_tiled's arguments common to every file
    subfolders: dict | None     # see output_path; None: not a recursive run

    def fail(self, path, reason: str) -> None:
        self.summary.failed.append((str(path), reason))
        self.log(f"FAILED {path}: {reason}", file=sys.stderr)

    def claim(self, path: Path, claimed: dict) -> tuple[Path, Path] | Callable[[], None]:
        """(output, overlay) of ``path``; or, when it is done with here (it cannot be segmented, or resume keeps
        its output), the report to make in its turn."""
        target = output_path(self.outdir, path, self.suffix, self.subfolders)
        owner = claimed.setdefault(target, path)
        if owner != path:
            hint = ("; -r/--recursive (recursive=True) writes each output into its input's subfolder"
                    if self.subfolders is None and owner.parent != path.parent else "")
            return functools.partial(self.fail, path, f"output {target} is also the output of {owner}{hint}")
        if checks.overlapping(target, path):
            return functools.partial(self.fail, path, f"its output {target} would overwrite it; choose an output "
                                                      f"folder that holds no inputs")
        image_io.remove_leftovers(target)
        overlay_file = overlay_path(self.outdir, path, self.subfolders)
        if self.suffix.endswith((".tif", ".tiff")) and target.is_dir():
            return functools.partial(self.fail, path, f"the output {target} is a folder, which a result cannot "
                                                      f"replace; move or rename it")
        stale = self.resume and target.exists() and not _same_size(path, target)
        if stale:        # the input was replaced since (settings are compared by check_resumable, not images)
            self.log(f"note: the existing {target} is of another size than {path}, which changed since: segmented "
                     f"again")
        if stale or not (self.resume and target.exists()):
            from .overlays import written_by_unet_fast

            if written_by_unet_fast(overlay_file):     # it outlines the output this run replaces: never keep it
                image_io.discard(overlay_file)         # beside the new one (--continue --overlay would)
            return target, overlay_file
        drawn = None
        if self.overlay and not overlay_file.exists():   # interrupted before it, or a first run without --overlay
            try:
                image, info = image_io.read_image(path, lazy=True, max_pixels=self.max_pixels)
                write_result_overlay(overlay_file, image, target, _layout(info, self.model.in_channels))
                drawn = f"overlay {path} -> {overlay_file} (from the existing {target})"
            except (KeyboardInterrupt, torch.OutOfMemoryError):
                raise
            except Exception as error:
                return functools.partial(self.fail, path, f"its output exists, but drawing the overlay failed: "
                                                          f"{checks.failure_reason(error)}")

        def skipped():
            if drawn:
                self.log(drawn)
            self.summary.skipped.append(str(path))
        return skipped

    def load(self, path: Path, target: Path, overlay: Path, ahead: bool = False) -> _File | None:
        """The file opened and checked: lazily, or read whole when it is small. ahead (on a reader thread):
        None for a file that is not small, opened only in its turn, so that memory holds one such at a time."""
        # the header only (max_pixels=0: a colour PNG is not decoded to tell grey from colour, which small() need not
        # know): a large file stays unread until its turn, and a small one is decoded once, below
        if ahead and not self.small(image_io.image_info(path, max_pixels=0)):
            return None
        image, info = image_io.read_image(path, lazy=True, max_pixels=self.max_pixels)
        _check_scaled_pixels(info, path, self.factor, self.max_pixels)
        pixel_size = read_pixel_size(path)
        warnings = [scale_warning(self.model, pixel_size, path, self.predict["scale"]),
                    image_io.series_warning(path, info)]
        file = _File(path, target, overlay, image, info, _layout(info, self.model.in_channels), pixel_size,
                     "; ".join(w for w in warnings if w) or None)
        if self.small(info):   # read now: a file that cannot be decoded fails alone, and none stays open meanwhile
            file.image = np.asarray(image)
        return file

    def loaded(self, path: Path, where: tuple[Path, Path], reading: Future) -> _File | Callable[[], None]:
        """The file a reader opened (or, when it was left for its turn, opened now); or the report of why it
        cannot be segmented."""
        try:
            return reading.result() or self.load(path, *where)
        except (KeyboardInterrupt, torch.OutOfMemoryError):
            raise
        except Exception as error:  # reported and skipped: one bad file must not stop the batch
            return functools.partial(self.fail, path, checks.failure_reason(error, path))

    def small(self, info: image_io.ImageInfo) -> bool:
        """Whether a file is segmented in a batch of files: a single plane of few pixels (``held_pixels``)."""
        return set(info.axes[:-2]) <= {"C"} and self.held_pixels(info) <= SMALL_FILE_PIXELS

    def held_pixels(self, info: image_io.ImageInfo) -> float:
        return held_pixels(plane_pixels(info.shape, info.axes), self.factor)

    def one(self, file: _File) -> None:
        """Segment ``file`` on its own, streamed to its output."""
        try:
            if file.warning:
                self.log(f"WARNING {file.warning}", file=sys.stderr)
            began = time.perf_counter()
            if file.info.pixels >= ANNOUNCED_PIXELS:
                self.log(f"segmenting {file.path} ({'x'.join(map(str, file.info.shape))}, "
                         f"{file.info.pixels / 1e6:.0f} megapixels) ...")
            predict_tiled(self.model, file.image, output=self.output, out=file.target, layout=file.layout,
                          pixel_size=file.pixel_size, progress=self.progress, **self.predict)
            self.finish(file, f"{time.perf_counter() - began:.2f} s")
        except (KeyboardInterrupt, torch.OutOfMemoryError):
            raise
        except Exception as error:  # reported and skipped: one bad file must not stop the batch
            self.fail(file.path, checks.failure_reason(error, file.path))

    def together(self, files: list[_File]) -> str | None:
        """Segment small files of one shape together (``predict_images``), each into its own output: how long
        it took; None when there are fewer than two, or it failed (then each is segmented on its own, so that
        only the files at fault fail, each with its reason)."""
        if len(files) < 2:
            return None
        try:
            began = time.perf_counter()
            predict_images(self.model, [file.image for file in files],
                           outs=[file.target for file in files], pixel_sizes=[file.pixel_size for file in files],
                           layout=files[0].layout, output=self.output, progress=False, **self.predict)
        except (KeyboardInterrupt, torch.OutOfMemoryError):
            raise
        except Exception as error:
            logger.info("a batch of %d files failed (%s); segmenting them one by one", len(files),
                        checks.failure_reason(error))
            return None
        return f"{time.perf_counter() - began:.2f} s for a batch of {len(files)} files"

    def finish(self, file: _File, timing: str, warn: bool = False) -> None:
        """The overlay of a written output, and the file's lines and counts."""
        if warn and file.warning:
            self.log(f"WARNING {file.warning}", file=sys.stderr)
        try:
            if self.overlay:
                write_result_overlay(file.overlay, file.image, file.target, file.layout)
        except (KeyboardInterrupt, torch.OutOfMemoryError):
            raise
        except Exception as error:
            self.fail(file.path, "its output was written, but drawing the overlay failed: "
                                 + checks.failure_reason(error))
            return
        self.summary.pixels += file.plane_pixels
        self.summary.done.append(str(file.path))
        self.log(f"ok {file.path} -> {file.target} ({'x'.join(map(str, file.info.shape))}, {timing})")


class _Pending:
    """Small files of one shape waiting for more to be segmented with, and the reports of the files between
    them, in file order: ``flush`` segments the files and makes each file's lines in that order."""

    def __init__(self, segmenter: _Segmenter, done: Callable[[int], object]):
        self.segmenter, self.done = segmenter, done
        self.entries: list[_File | Callable[[], None]] = []

    def files(self) -> list[_File]:
        return [entry for entry in self.entries if isinstance(entry, _File)]

    def add(self, entry) -> None:
        self.entries.append(entry)

    def takes(self, file: _File) -> bool:
        """Whether ``file`` can join the files waiting (the same shape and layout)."""
        files = self.files()
        return not files or (file.info.shape, file.layout) == (files[0].info.shape, files[0].layout)

    def full(self) -> bool:
        files = self.files()
        return len(files) >= BATCH_FILES or \
            sum(self.segmenter.held_pixels(file.info) for file in files) >= BATCH_PIXELS

    def flush(self) -> None:
        timing = self.segmenter.together(self.files())
        for entry in self.entries:
            if not isinstance(entry, _File):
                entry()
            elif timing:
                self.segmenter.finish(entry, timing, warn=True)
            else:
                self.segmenter.one(entry)
            self.done(1)
        self.entries.clear()


def _same_size(image: Path, output: Path) -> bool:
    """Whether an existing output has its input's height and width (headers only; True where either cannot be
    read: segmenting it again, or failing, is then decided as before)."""
    try:
        return image_io.image_info(image, max_pixels=0).shape[-2:] == image_io.image_info(output, max_pixels=0).shape[-2:]
    except Exception:
        return True


def segment_files(files: list[Path], outdir: Path, model, *, suffix: str = ".tif", output: str = "labels",
                  tile_size=None, batch_size=None, device=None, dtype=None, resume: bool = False,
                  max_pixels: int | None = image_io.DEFAULT_MAX_PIXELS, progress: bool = False,
                  nonfinite: str | None = None, log=print, instance_options=None,
                  overlay: bool = False, tta: bool = False, scale: float | None = None,
                  provenance: dict | None = None, owners: dict[Path, Path] | None = None,
                  subfolders: dict[Path, Path] | None = None) -> SegmentSummary:
    """Segment ``files`` into ``outdir``; never raises for a bad file (see the summary). Leftovers of
    killed runs (``image_io.remove_leftovers``) are removed before each file. Reader threads open files
    ahead of the one being segmented (``READ_AHEAD``); consecutive small files of one shape are segmented
    together (``SMALL_FILE_PIXELS``, ``predict_images``), with the same results (see there).
    nonfinite: see ``predict_tiled``. overlay: also write outdir/overlays/<name>.png, the image with the
    outlines of the result (``unet_fast.overlays``). tta: test-time augmentation; scale: the resampling
    factor (None: the model's); provenance: recorded in every output: see ``predict_tiled``. owners: the file
    each output belongs to when ``files`` are a share of a larger list (``output_owners`` of that list; default:
    ``files``' own): a file whose output name another file owns fails. subfolders: {file: the folder under
    ``outdir`` its output and overlay go to} (``output_subfolders``; created as needed); None (default): not a
    recursive run, every output in ``outdir``."""
    from tqdm.auto import tqdm

    summary = SegmentSummary()
    outdir.mkdir(parents=True, exist_ok=True)
    predict = dict(tile_size=tile_size, batch_size=batch_size, device=device, dtype=dtype, nonfinite=nonfinite,
                   tta=tta, scale=scale, provenance=provenance,       # scale as given (None: the model's)
                   **({"instance_options": instance_options} if output == "instances" else {}))
    segmenter = _Segmenter(outdir, model, summary, log, suffix, output, overlay, resume, max_pixels,
                           model_scale(model, scale), progress, predict,
                           None if subfolders is None else dict(subfolders))
    claimed: dict[Path, Path] = dict(owners or {})
    ahead: collections.deque = collections.deque()   # (path, report, (output, overlay), reading), in order
    listed = iter(files)
    start = time.perf_counter()
    readers = ThreadPoolExecutor(READERS, thread_name_prefix="unet_fast-reader")
    try:
        with tqdm(total=len(files), unit="file", disable=not progress, desc="segment") as bar:
            def read_ahead() -> None:
                while len(ahead) < READ_AHEAD and (path := next(listed, None)) is not None:
                    claim = segmenter.claim(path, claimed)
                    ahead.append((path, claim, None, None) if callable(claim) else
                                 (path, None, claim, readers.submit(segmenter.load, path, *claim, ahead=True)))

            pending = _Pending(segmenter, bar.update)
            read_ahead()
            while ahead:
                termination.check()   # SIGTERM, even where its exception was swallowed
                path, report, where, reading = ahead.popleft()
                read_ahead()
                file = report or segmenter.loaded(path, where, reading)
                if not isinstance(file, _File) and pending.entries:
                    pending.add(file)                   # its report, in its turn after the files before it
                elif not isinstance(file, _File):
                    file()
                    bar.update(1)
                elif not segmenter.small(file.info):
                    pending.flush()
                    segmenter.one(file)
                    bar.update(1)
                else:
                    if not pending.takes(file):
                        pending.flush()
                    pending.add(file)
                    if pending.full():
                        pending.flush()
            pending.flush()
    finally:
        readers.shutdown(cancel_futures=True)
    summary.seconds = time.perf_counter() - start
    return summary


def _check_scaled_pixels(info: image_io.ImageInfo, path: Path, scale: float, max_pixels: int | None) -> None:
    """The network sees scale^2 times the pixels: the limit holds for those too."""
    scaled = int(info.pixels * scale * scale)
    if max_pixels is not None and scaled > max_pixels:
        raise image_io.ImageTooLargeError(
            f"{path}: {info.pixels:,} pixels resampled by {scale:.3g} (the model's input_scale, or --scale) make "
            f"{scaled:,}, above the limit of {max_pixels:,}; raise --max-pixels to at least {scaled} if you mean it")


def write_result_overlay(path: Path, image, result: Path, layout: str) -> Path:
    """The overlay of a written result (labels or instances; the middle plane of a stack), read back
    lazily and subsampled (``unet_fast.overlays``)."""
    from .overlays import subsample_step, write_overlay

    if result.suffix == ".zarr":
        import zarr

        labels = zarr.open_group(str(result), mode="r")["0"]
    else:
        labels = image_io.read_image(result, max_pixels=None)[0]
    if layout.startswith("Z"):
        middle = image.shape[0] // 2
        image, labels = _Plane(image, middle), _Plane(labels, middle)
    step = subsample_step(*labels.shape[-2:], 1024)
    sample = (slice(None, None, step), slice(None, None, step))
    return write_overlay(path, np.asarray(image[(Ellipsis, *sample)]), np.asarray(labels[sample]), max_side=1024)


class _Plane:
    """Plane ``index`` of a lazy stack, indexable by slices like the plane itself."""

    def __init__(self, stack, index: int):
        self.stack, self.index, self.shape = stack, index, tuple(stack.shape[1:])

    def __getitem__(self, key):
        return self.stack[(self.index,) + (key if isinstance(key, tuple) else (key,))]


@dataclass
class SegmentResult:
    """What ``run`` did: this process's files, and the counts over every process of the job."""

    summary: SegmentSummary      # this process's files
    found: int                   # files the inputs named (every process lists them all)
    segmented: int
    skipped: int
    failed: int                  # files, and inputs that named none
    pixels: int
    seconds: float               # the slowest process's

    @property
    def exit_status(self) -> int:
        """``unet-fast segment``'s: 1 when anything failed."""
        return 1 if self.failed else 0


def check_output(output: str, model, instance_options=None, overlay: bool = False) -> None:
    """What ``output`` needs of the model and the other options, checked before any file is read."""
    from .inference import OUTPUTS

    if output not in OUTPUTS or output == "logits":
        raise ValueError(f"output must be 'labels', 'probabilities' or 'instances', got {output!r}")
    if output == "instances" and model.num_classes != 2:
        raise ValueError(f"output 'instances' needs a model of 2 classes (background, foreground); this model has "
                         f"{model.num_classes}: segment with output 'labels' (a class per pixel) instead")
    if instance_options is not None and output != "instances":
        raise ValueError(f"instance options (min size, holes, borders) apply to output 'instances' only, "
                         f"got output {output!r}")
    if overlay and output == "probabilities":
        raise ValueError("overlays outline labels or instances; output 'probabilities' has none")


#: how long a rank of segment under torchrun waits for the others at a meeting (their list of files, the summary)
SEGMENT_MEETING_TIMEOUT = datetime.timedelta(days=365)


def check_parts(num_parts: int, part_id: int) -> None:
    """A job-array split: ``part_id`` in [0, ``num_parts``)."""
    if not isinstance(num_parts, int) or isinstance(num_parts, bool) or num_parts < 1:
        raise checks.BadArgument("num_parts", f"num_parts must be a positive integer, got {num_parts!r}")
    if not isinstance(part_id, int) or isinstance(part_id, bool) or not 0 <= part_id < num_parts:
        raise checks.BadArgument("part_id", f"part_id must be in [0, {num_parts}), got {part_id!r}")


def check_arguments(output_dir, *, output: str, format: str, tile_size, batch_size, device, dtype,
                    max_pixels, nonfinite) -> None:
    """What ``run`` can check before reading anything: BadArgument naming the argument."""
    from .normalization import NONFINITE_POLICIES
    from .tiling import parse_compute_dtype

    if format not in OUTPUT_SUFFIXES:
        raise checks.BadArgument("format", f"format must be one of {tuple(OUTPUT_SUFFIXES)}, got {format!r}")
    if output not in OUTPUTS:
        raise checks.BadArgument("output", f"output must be one of {OUTPUTS}, got {output!r}")
    if nonfinite is not None and nonfinite not in NONFINITE_POLICIES:
        raise checks.BadArgument("nonfinite", f"nonfinite must be None or one of {NONFINITE_POLICIES}, "
                                              f"got {nonfinite!r}")
    for name, value in (("tile_size", tile_size), ("batch_size", batch_size), ("max_pixels", max_pixels)):
        checks.check_positive_int(value, name, allow_none=True)
    try:
        parse_compute_dtype(dtype)
    except ValueError as error:
        raise checks.BadArgument("dtype", str(error)) from None
    checks.check_device(device)
    checks.check_writable_folder(output_dir, "output_dir")


def check_tiles(model, tile_size, batch_size, device, dtype) -> None:
    """A chosen tile size must be legal for the model, and a chosen tile or batch size must fit in
    memory (``inference.check_chosen_plan_fits``): BadArgument before any file is read."""
    if tile_size is not None:
        trace = geometry.trace_sizes(tile_size, model.depth, model.padding)
        if trace.problem is not None:
            raise checks.BadArgument("tile_size", geometry.size_error_message(
                tile_size, model.depth, model.padding, trace.problem, tile=True))
    if tile_size is not None or batch_size is not None:
        from .tiling import plan_tiles

        size = tile_size or geometry.min_input_size(model.depth, model.padding)
        plan = plan_tiles(model, (size, size), tile_size=tile_size, batch_size=batch_size, device=device,
                          dtype=dtype)
        check_chosen_plan_fits(plan, tile_size, batch_size)


def run(inputs: list[str | Path], output_dir: str | Path, model: str | Path | torch.nn.Module, *,
        output: str = "labels", format: str = "tif", tile_size: int | None = None, batch_size: int | None = None,
        device: str | None = None, dtype: str = "fp32", resume: bool = False, num_parts: int = 1, part_id: int = 0,
        max_pixels: int | None = image_io.DEFAULT_MAX_PIXELS, progress: bool | None = None,
        nonfinite: str | None = None, log=print, instance_options=None, overlay: bool = False,
        tta: bool = False, scale: float | None = None, recursive: bool = False) -> SegmentResult:
    """Segment every image the ``inputs`` name (files, folders, glob patterns) into ``output_dir``:
    ``unet-fast segment`` from Python.

    recursive: folders give the images in their subfolders at any depth too, each output (and overlay) going to
    the same subfolder of ``output_dir`` as its input's in the outermost folder named (a glob pattern: its
    folder before the first wildcard, the folders it matches listed as named ones; ``output_subfolders``);
    ``output_dir`` and its overlays are not listed when they lie inside a folder named. Names starting with "."
    in folders are skipped either way (``expand_inputs``).

    model: a model file (loaded on every process; one that cannot be read raises BadArgument naming ``model``, the
    reason as its cause) or a loaded model; output: "labels", "probabilities" or
    "instances" (a 2-class model's objects, by ``instance_options``: see ``unet_fast.instances``); overlay:
    a PNG per input in output_dir/overlays (the image with the result's outlines); format: "tif" or "ome.zarr";
    resume: skip inputs whose output exists (drawing a missing overlay from it), refusing (BadArgument)
    an existing output of another kind than ``output`` (``check_resumable``); num_parts, part_id: this
    job-array task's share of the files (under torchrun shared again among the processes, whose group is joined here if it is not
    yet); progress: a bar over files (None: when stderr is a terminal); log: where each file's line
    goes; nonfinite: NaN/inf pixels, tta: test-time augmentation, scale: the resampling factor (None: the
    model's): see ``predict_tiled``. Files that fail are reported and skipped
    (see the result); a failure of a whole process makes every process raise (``unet_fast.ranks``).
    Arguments that cannot work raise ``checks.BadArgument`` naming them before anything is read or
    written: among them an output folder where an output would replace an input.
    """
    check_parts(num_parts, part_id)
    checks.check_bool(tta, "tta")
    checks.check_bool(recursive, "recursive")
    if scale is not None:
        check_scale(scale)
    check_arguments(output_dir, output=output, format=format, tile_size=tile_size, batch_size=batch_size,
                    device=device, dtype=dtype, max_pixels=max_pixels, nonfinite=nonfinite)
    from .model_file import load_model
    # gloo even with GPUs: only the list and counts travel; and no timeout that a rank done with its share
    # could reach while another still works on its own (torch's 30 min failed the whole job at the summary)
    job = Torchrun.join(device or "cpu", backend="gloo", timeout=SEGMENT_MEETING_TIMEOUT)
    try:
        items = [str(item) for item in inputs]
        with shared_failures("segment"):    # rank 0 lists the files (a folder it cannot read fails the job)
            listing = None
            if job.rank == 0:
                files, problems = expand_inputs(items, recursive=recursive,
                                                skip=(output_dir, Path(output_dir) / "overlays"))
                subfolders = output_subfolders(files, items) if recursive else None
                done = {path for path in files if output_path(Path(output_dir), path, OUTPUT_SUFFIXES[format],
                                                              subfolders).exists()} if resume and job.world > 1 else set()
                listing = files, problems, subfolders, done
                if recursive:
                    _say_output_not_listed(items, Path(output_dir), log)
        # every rank shards rank 0's list: lists of their own differ where a file appears or goes while they list
        # (or one node's view of a network file system lags), and a file would be segmented twice and another never
        files, problems, subfolders, done = job.broadcast(listing)
        if not files:       # every input wrong (a mistyped folder, an empty one): a usage error, nothing written
            shown = "; ".join(f"{item}: {reason}" for item, reason in problems[:5])
            raise checks.BadArgument("input", f"no image to segment: {shown}" + (
                f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""))
        with shared_failures("segment"):    # what segment_files does not catch: model, out of memory
            # every file, not only this share
            check_outputs(files, Path(output_dir), OUTPUT_SUFFIXES[format], overlay=overlay, subfolders=subfolders)
            if not resume:   # --continue keeps what is there (check_resumable)
                check_replaceable(files, Path(output_dir), OUTPUT_SUFFIXES[format], subfolders)
            if overlay:
                check_overlays_replaceable(files, Path(output_dir), OUTPUT_SUFFIXES[format], resume, subfolders)
            if not isinstance(model, torch.nn.Module):
                with checks.blame("model"):     # a usage error on the rank that cannot read it, as in one process
                    model = load_model(model, device=job.device)
            made = provenance(model, output=output, tta=tta, scale=scale, dtype=dtype,
                              instance_options=instance_options)
            if resume:
                check_resumable(files, Path(output_dir), OUTPUT_SUFFIXES[format], output, made, subfolders)
            # this part's files, whatever the number of processes (a part run by 2 and another by 1 left files
            # out and did others twice), then this process's among them
            mine = rank_share(shard(files, part_id, num_parts), job.rank, job.world, done)
            check_tiles(model, tile_size, batch_size, job.device, dtype)
            check_output(output, model, instance_options, overlay)
            summary = segment_files(mine, Path(output_dir), model, suffix=OUTPUT_SUFFIXES[format], output=output,
                                    tile_size=tile_size, batch_size=batch_size, device=job.device, dtype=dtype,
                                    resume=resume, max_pixels=max_pixels, nonfinite=nonfinite,
                                    progress=sys.stderr.isatty() if progress is None else progress, log=log,
                                    instance_options=instance_options, overlay=overlay, tta=tta, scale=scale,
                                    provenance=made, subfolders=subfolders,
                                    owners=output_owners(files, Path(output_dir), OUTPUT_SUFFIXES[format],
                                                         subfolders))
        if job.rank == 0:
            for item, reason in problems:
                log(f"FAILED {item}: {reason}", file=sys.stderr)
            summary.failed.extend(problems)
        counts = job.all_reduce(torch.tensor([len(summary.done), len(summary.skipped), len(summary.failed),
                                              summary.pixels], dtype=torch.float64))
        seconds = float(job.all_reduce(torch.tensor([summary.seconds], dtype=torch.float64), op=dist.ReduceOp.MAX))
    finally:
        job.leave()
    segmented, skipped, failed, pixels = (int(v) for v in counts.tolist())
    result = SegmentResult(summary, len(files), segmented, skipped, failed, pixels, seconds)
    if job.rank == 0:
        prefix = f"[part {part_id}/{num_parts}] " if num_parts > 1 else ""
        rate = pixels / 1e6 / seconds if seconds > 0 else 0.0
        log(f"{prefix}summary: {len(files)} file(s) found, {segmented} segmented, {skipped} skipped (exist), "
            f"{failed} failed; {pixels / 1e6:.4g} megapixels in {seconds:.1f} s = {rate:.2f} MP/s"
            + (f" over {job.world} processes" if job.world > 1 else "")
            + (f"; images resampled by {made['scale']:g}" if made["scale"] != 1 else "")
            + ("; test-time augmentation" if tta else ""))
    return result
