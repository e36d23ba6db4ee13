"""Scoring a model on labelled images: ``evaluate_model``, behind ``unet-fast evaluate``.

Each image is segmented as ``unet-fast segment --output instances`` would (``predict_tiled``, the
instance rules of ``unet_fast.instances``) and compared with its labels: foreground IoU and Dice,
object precision, recall and F1 at IoU 0.5, their mean over IoU thresholds 0.5..0.95 (F1, and the
2018 Data Science Bowl's average precision TP / (TP + FP + FN)), and the ISBI 2012 Rand error.
Labels with more than two values, or two without a 0, are instances; a {0, v} mask's objects are its
4-connected components. With ``ignore_label``, pixels of that label value were not annotated: they count
in no pixel score, are no object, and predicted objects lying mostly in them are left out
(``metrics.without_ignored_objects``): a cell the annotator skipped is not the net's false positive. A label
image of that value everywhere has nothing to score and is refused (as training refuses it).
"""
from __future__ import annotations

import csv
import io
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from . import checks, metrics
from .instances import InstanceOptions

__all__ = ["ImageScores", "Evaluation", "score_instances", "evaluate_model", "labelled_files", "check_labelled",
           "Unread", "check_outputs", "input_files"]


@dataclass
class ImageScores:
    """The scores of one image (see the module docstring)."""

    name: str
    iou: float              # foreground IoU
    dice: float             # foreground Dice
    precision: float        # objects, at IoU >= 0.5
    recall: float
    f1: float
    ap_50_95: float         # mean over IoU 0.5..0.95 of TP / (TP + FP + FN)
    f1_50_95: float         # mean over IoU 0.5..0.95 of F1
    rand_error: float       # ISBI 2012 foreground-restricted Rand error (NaN without true objects)
    true_objects: int
    predicted_objects: int
    true_positives: int
    false_positives: int
    false_negatives: int
    seconds: float = 0.0


COLUMNS = [f.name for f in fields(ImageScores)]
MEAN_COLUMNS = ("iou", "dice", "precision", "recall", "f1", "ap_50_95", "f1_50_95", "rand_error")


def score_instances(predicted: np.ndarray, truth: np.ndarray, name: str = "", ignored: np.ndarray | None = None
                    ) -> ImageScores:
    """The scores of predicted instance labels against true ones (both (H, W), 0 = background). ignored: a
    bool mask of pixels not annotated (background in ``truth`` whatever it holds there: the label value that
    marks them is no object), or None: they count in no pixel score, and predicted objects lying mostly in them
    are left out."""
    if ignored is not None:
        predicted = metrics.without_ignored_objects(predicted, ignored)
        ignored = np.asarray(ignored, bool)
        truth = np.where(ignored, np.zeros((), np.asarray(truth).dtype), truth)
    by_threshold = metrics.object_scores_by_threshold(predicted, truth)
    at_half = by_threshold[0]
    fg_p, fg_t = (predicted > 0).astype(np.uint8), (truth > 0).astype(np.uint8)
    ignore_index = None
    if ignored is not None and ignored.any():
        fg_t = np.where(ignored, np.uint8(2), fg_t)      # a third value, left out of the confusion matrix
        ignore_index = 2
    return ImageScores(
        name=name, iou=float(metrics.iou(fg_p, fg_t, num_classes=2, ignore_index=ignore_index)[1]),
        dice=float(metrics.dice(fg_p, fg_t, num_classes=2, ignore_index=ignore_index)[1]),
        precision=at_half.precision, recall=at_half.recall, f1=at_half.f1,
        ap_50_95=float(np.mean([s.accuracy for s in by_threshold])),
        f1_50_95=float(np.mean([s.f1 for s in by_threshold])),
        rand_error=metrics.rand_error(predicted, truth, ignored=ignored) if truth.any() else float("nan"),
        true_objects=at_half.true_positives + at_half.false_negatives,
        predicted_objects=at_half.true_positives + at_half.false_positives,
        true_positives=at_half.true_positives, false_positives=at_half.false_positives,
        false_negatives=at_half.false_negatives)


@dataclass
class Evaluation:
    """Per-image scores, their means, and the object counts pooled over the images."""

    images: list[ImageScores]

    @property
    def mean(self) -> dict:
        """The mean over images of each score (NaNs left out; NaN, without numpy's warning, where all are)."""
        return {key: _mean_of_numbers([getattr(s, key) for s in self.images]) for key in MEAN_COLUMNS}

    @property
    def pooled(self) -> metrics.ObjectScores:
        """Object precision, recall and F1 at IoU 0.5 from the counts summed over the images."""
        return metrics.scores_from_counts(*(sum(getattr(s, key) for s in self.images)
                                            for key in ("true_positives", "false_positives", "false_negatives")))

    def csv(self) -> str:
        """One row per image and a last row "mean" (means; counts summed)."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(COLUMNS)
        for scores in self.images:
            writer.writerow([_cell(value) for value in asdict(scores).values()])
        mean = self.mean
        writer.writerow(["mean"] + [_cell(mean[key]) if key in mean else
                                    _cell(sum(getattr(s, key) for s in self.images)) for key in COLUMNS[1:]])
        return buffer.getvalue()

    def summary(self, worst: int = 10) -> str:
        """One screen: a line per image (the ``worst`` by F1 when there are more than 2 x worst), the
        means and the pooled object counts."""
        header = (f"{'image':24s} {'IoU':>6s} {'Dice':>6s} {'prec':>6s} {'recall':>6s} {'F1':>6s} "
                  f"{'AP50-95':>7s} {'F1 50-95':>8s} {'Rand err':>8s} {'objects true/pred':>18s}")
        shown = self.images
        lines = [header]
        if len(shown) > 2 * worst:
            shown = sorted(shown, key=lambda s: s.f1)[:worst]
            lines.append(f"(the {worst} images of lowest F1 of {len(self.images)}; every image in the CSV)")
        for s in shown:
            lines.append(_line(s.name, s.iou, s.dice, s.precision, s.recall, s.f1, s.ap_50_95, s.f1_50_95,
                               s.rand_error, f"{s.true_objects}/{s.predicted_objects}"))
        mean = self.mean
        lines.append(_line(f"mean of {len(self.images)}", *(mean[key] for key in MEAN_COLUMNS),
                           f"{sum(s.true_objects for s in self.images)}/"
                           f"{sum(s.predicted_objects for s in self.images)}"))
        pooled = self.pooled
        lines.append(f"objects pooled over the images, IoU >= 0.5: F1 {pooled.f1:.3f}, "
                     f"precision {pooled.precision:.3f}, recall {pooled.recall:.3f} ({pooled.true_positives} matched, "
                     f"{pooled.false_positives} false, {pooled.false_negatives} missed)")
        return "\n".join(lines)


def _mean_of_numbers(values) -> float:
    values = np.asarray(values, np.float64)
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else float("nan")


def _cell(value) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _line(name, *values) -> str:
    *scores, objects = values
    widths = (6, 6, 6, 6, 6, 7, 8, 8)
    return f"{name[:24]:24s} " + " ".join(f"{v:{w}.3f}" for v, w in zip(scores, widths)) + f" {objects:>18s}"


def labelled_files(images, labels, label_suffix: str = "") -> list[tuple[str, object, object]]:
    """(name, image, labels) triples: two folders matched by base name (``data.matching_files``), two
    multi-page TIFF stacks (page by page), or two sequences of arrays. Paths that cannot pair up (missing,
    one the other, a stack with a folder, names without a label or ambiguous) raise ``BadArgument``
    naming "images", "labels" or "label_suffix"."""
    from .checks import BadArgument, same_file
    from .data import NameMatchError, matching_files

    if isinstance(images, (str, Path)) and isinstance(labels, (str, Path)):
        images, labels = Path(images), Path(labels)
        for argument, path in (("images", images), ("labels", labels)):
            if not path.exists():
                raise BadArgument(argument, f"{str(path)!r}: no such file or folder")
        if same_file(images, labels):
            raise BadArgument("labels", f"{str(labels)!r} is the images {'file' if images.is_file() else 'folder'} "
                                        f"itself; labels are separate images (a folder matched by name, or a stack)")
        if images.is_dir() != labels.is_dir():
            stack, folder = (labels, images) if images.is_dir() else (images, labels)
            raise BadArgument("labels", f"{'images' if stack == images else 'labels'} {str(stack)!r} is a file (a "
                                        f"TIFF stack) but {'images' if folder == images else 'labels'} "
                                        f"{str(folder)!r} is a folder; give two folders (matched by base name) or "
                                        f"two stacks of as many pages")
        if images.is_file():
            stack, truth = _read_stack(images, "images"), _read_stack(labels, "labels")
            if truth.ndim != 3 or stack.shape[0] != truth.shape[0]:
                raise BadArgument("labels", f"images {str(images)!r} holds {stack.shape[0]} pages but labels "
                                            f"{str(labels)!r} has shape {truth.shape}; they must be stacks of as "
                                            f"many pages")
            return [(f"{images.stem}[{z}]", stack[z], truth[z]) for z in range(stack.shape[0])]
        try:
            pairs = matching_files(images, labels, label_suffix)
        except NameMatchError as error:
            raise BadArgument(error.argument, str(error)) from error
        return [(image.stem, image, label) for image, label in pairs]
    if isinstance(images, (str, Path)) or isinstance(labels, (str, Path)):
        raise TypeError("images and labels must both be paths (folders or stacks) or both sequences of arrays")
    if len(images) != len(labels):
        raise ValueError(f"images and labels must be as many, got {len(images)} and {len(labels)}")
    return [(f"image{i}", image, label) for i, (image, label) in enumerate(zip(images, labels))]


def _read_stack(path: Path, argument: str) -> np.ndarray:
    from .checks import BadArgument
    from .image_io import ImageTooLargeError, read_tiff_stack

    try:
        return read_tiff_stack(path)
    except ImageTooLargeError as error:
        raise BadArgument(argument, str(error)) from error
    except Exception as error:   # not a TIFF, truncated
        raise BadArgument(argument, f"cannot read {str(path)!r} as a TIFF stack: {error}") from error


def input_files(images, labels) -> list[Path]:
    """Every file an evaluation reads or could read: the image files (``IMAGE_SUFFIXES``) in the images and
    labels folders, or the two stacks (none for arrays); outputs must be none of them. Other files are no
    inputs: the evaluation.csv of an earlier run with ``-o`` the images folder is replaced as any other."""
    from .image_io import IMAGE_SUFFIXES

    files = []
    for source in (images, labels):
        if isinstance(source, (str, Path)):
            source = Path(source)
            files.extend(sorted(p for p in source.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
                         if source.is_dir() else [source])
    return files


def check_outputs(images, labels, outputs, argument: str) -> None:
    """BadArgument (``argument``) when one of ``outputs`` (paths to be written) is, through its path, a
    symlink or a hard link, one of the input files (``input_files``)."""
    from .checks import check_output_is_not_an_input

    inputs = input_files(images, labels)
    for output in outputs:
        check_output_is_not_an_input(output, inputs, argument)


@dataclass(frozen=True)
class Unread:
    """A file checked by ``check_labelled`` but not kept (``keep_bytes``): read again when it is scored."""
    path: Path
    shape: tuple


#: evaluate_model keeps the pairs check_labelled read up to this many bytes, and reads the rest again to score
#: them: memory stays bounded however many images are evaluated (about 20 MB a pair of 1500 x 1500 images)
HELD_BYTES = 2 ** 30


def check_labelled(triples, *, in_channels: int, nonfinite: str = "error", keep_bytes: int | None = None,
                   ignore_label: int | None = None) -> list:
    """Every pair readable and usable, before any is scored: BadArgument naming "images" or "labels"
    for an unreadable file, labels not 2-D, not of the image's size, negative or not integers, an
    image of other channels than the model's, or (``nonfinite`` "error") one with NaN/inf pixels, or labels
    that are ``ignore_label`` everywhere (nothing annotated); a warning when no label holds ``ignore_label``.
    Returns the (name, image, labels) arrays read, so that scoring does not read them again; with
    ``keep_bytes``, only while they hold that many bytes in all: files after that come as ``Unread``."""
    checked, held, holds_ignore = [], 0, False
    for name, given_image, given_truth in triples:
        image = _image(given_image, name)
        if image.ndim not in (2, 3):
            raise _bad("images", f"image {name!r} must be (H, W) or (C, H, W), got shape {image.shape}")
        problem = checks.pixel_type_problem(image.dtype)
        if problem:
            raise _bad("images", f"image {name!r} {problem}")
        channels = 1 if image.ndim == 2 else image.shape[0]
        if channels != in_channels:
            raise _bad("images", f"image {name!r} has {channels} channel(s) (shape {image.shape}); the model "
                                 f"expects {in_channels}")
        if nonfinite == "error" and image.dtype.kind in "fc" and not np.isfinite(image).all():
            raise _bad("images", f"image {name!r} holds {np.count_nonzero(~np.isfinite(image))} NaN or infinite "
                                 f"pixel(s), which would spoil its scores; repair it, or set them to 0 with "
                                 f"--nonfinite zero (nonfinite='zero')")
        truth = _labels(given_truth, name, ignore_label)
        if ignore_label is not None:       # one comparison for both checks (a re-read file was checked here)
            ignored = truth == ignore_label
            if ignored.size and ignored.all():
                raise _bad("labels", f"labels of {name!r} are ignore_label={ignore_label} everywhere: nothing in "
                                     f"them is annotated, so there is nothing to score (it would count as a "
                                     f"perfect image); leave the image out, or annotate some of it")
            holds_ignore = holds_ignore or bool(ignored.any())
        if image.shape[-2:] != truth.shape:
            raise _bad("labels", f"labels of {name!r} are {truth.shape} pixels but the image is "
                                 f"{image.shape[-2:]}; they must be the same size")
        _warn_scattered(name, truth, ignore_label)
        held += image.nbytes + truth.nbytes
        if keep_bytes is not None and held > keep_bytes:
            image, truth = (Unread(given, array.shape) if isinstance(given, Path) else array
                            for given, array in ((given_image, image), (given_truth, truth)))
        checked.append((name, image, truth))
    if ignore_label is not None and checked and not holds_ignore:
        import warnings

        warnings.warn(f"no label image holds ignore_label={ignore_label} (--ignore-label): every pixel counts as "
                      f"annotated; check the value your annotation tool wrote", stacklevel=2)
    return checked


def _warn_scattered(name: str, truth: np.ndarray, ignore_label: int | None) -> None:
    """A warning when labels read as instances look like an intensity image (--images and --labels swapped):
    every grey value would be scored as an object."""
    from .data import auto_is_instances

    annotated = truth if ignore_label is None else np.where(truth == ignore_label, 0, truth)
    if auto_is_instances(np.unique(annotated)):
        doubt = checks.scattered_label_image(annotated)
        if doubt:
            import warnings

            warnings.warn(f"labels of {name!r} look like an intensity image, not labels: {doubt}; check that "
                          f"--images and --labels are not swapped", stacklevel=3)


def _reread(checked: tuple, ignore_label: int | None = None) -> tuple:
    """A (name, image, labels) triple of check_labelled with its Unread files read again."""
    name, image, truth = checked
    return (name, _image(image.path, name) if isinstance(image, Unread) else image,
            _labels(truth.path, name, ignore_label) if isinstance(truth, Unread) else truth)


def _bad(argument: str, message: str):
    from .checks import BadArgument

    return BadArgument(argument, message)


def _image(image, name: str) -> np.ndarray:
    from .data import read_image

    if not isinstance(image, Path):
        return np.asarray(image)
    try:
        return read_image(image)
    except ValueError as error:
        raise _bad("images", str(error)) from error


def _labels(truth, name: str, ignore_label: int | None = None) -> np.ndarray:
    """The label image, checked: 2-D, integer values >= 0 or ``ignore_label`` (BadArgument "labels")."""
    from .data import check_label_values, colour_hint, read_image

    if isinstance(truth, Path):
        try:
            truth = read_image(truth, labels=True)
        except ValueError as error:
            raise _bad("labels", str(error)) from error
    truth = np.asarray(truth)
    if truth.ndim == 3 and truth.shape[0] == 1:
        truth = truth[0]
    if truth.ndim != 2:
        raise _bad("labels", f"labels of {name!r} must be a 2-D image, got shape {truth.shape}"
                             f"{colour_hint(truth.shape)}")
    try:
        check_label_values(name, truth, ignore_label)
    except ValueError as error:
        raise _bad("labels", str(error)) from None
    return truth


def _instances_of(labels: np.ndarray, ignored: np.ndarray | None = None) -> np.ndarray:
    """Checked labels (``_labels``) as instances: a binary mask's connected components (``auto_is_instances``:
    a {0, v} mask; two values without a 0 are two objects), told from the annotated pixels' values (those
    not ``ignored``, which become background)."""
    from .data import auto_is_instances

    values = np.unique(labels if ignored is None else labels[~ignored])
    if ignored is not None:
        labels = np.where(ignored, np.zeros((), labels.dtype), labels)
    if not auto_is_instances(values):
        return ndimage.label(labels > 0)[0]
    return labels if labels.dtype.kind in "iu" else labels.astype(np.int64)   # uint64 ids may not fit int64


def _same_shape_runs(triples, scale: float = 1.0):
    """(name, image, labels) triples in runs of consecutive small images of one shape, to be segmented
    together, by ``segment_files``' rule (``segment.SMALL_FILE_PIXELS``, ``BATCH_PIXELS``, ``BATCH_FILES``);
    a large image is a run of its own."""
    from .segment import BATCH_FILES, BATCH_PIXELS, SMALL_FILE_PIXELS, held_pixels

    run: list = []
    for triple in triples:
        shape = triple[1].shape
        pixels = held_pixels(shape[-2] * shape[-1], scale)
        small = pixels <= SMALL_FILE_PIXELS
        if run and (not small or shape != run[0][1].shape or (len(run) + 1) * pixels > BATCH_PIXELS
                    or len(run) >= BATCH_FILES):
            yield run
            run = []
        run.append(triple)
        if not small:
            yield run
            run = []
    if run:
        yield run


def evaluate_model(model, images, labels, *, label_suffix: str = "", instance_options: InstanceOptions | None = None,
                   tile_size=None, batch_size=None, device=None, dtype=None, overlay_dir=None,
                   overlay_max_side: int = 1024, nonfinite: str | None = None, tta: bool = False,
                   scale: float | None = None, ignore_label: int | None = None, log=None) -> Evaluation:
    """Score ``model`` (a model file or a loaded 2-class model) on labelled images.

    images, labels: two folders matched by base name (label files may carry ``label_suffix``), two
    multi-page TIFF stacks, or two sequences of arrays ((H, W) or (C, H, W) images, (H, W) labels).
    instance_options: the rules making objects of the predicted foreground (default: their defaults,
    as ``unet-fast segment --output instances``). tile_size, batch_size, device, dtype, nonfinite, tta, scale:
    as for ``predict_tiled``. overlay_dir: write <name>.png there for each image (predicted outlines in
    yellow, true ones in cyan, pixels not annotated dimmed and hatched in magenta). ignore_label: the label
    value of pixels not annotated (see the module docstring), or None. log: called with a line per image
    (None: quiet).

    Everything is checked before the first image is scored (``checks.BadArgument`` naming the argument):
    names that do not pair up or are ambiguous, labels of another size, negative or not integers, or not
    annotated anywhere (``ignore_label`` everywhere),
    images of other channels or with NaN/inf pixels (unless nonfinite="zero"), a tile size the model
    cannot take, and overlays that would replace an input file, or anything but an overlay written here
    (``overlays.check_replaceable``).
    """
    from .checks import BadArgument, check_bool, check_writable_folder
    from .data import check_ignore_label
    from .inference import NonFiniteOutputError, predict_images, predict_tiled
    from .model_file import load_model
    from .rescale import check_scale, model_scale
    from .normalization import NONFINITE_POLICIES
    from .segment import check_tiles

    if nonfinite is not None and nonfinite not in NONFINITE_POLICIES:
        raise BadArgument("nonfinite", f"nonfinite must be None or one of {NONFINITE_POLICIES}, got {nonfinite!r}")
    check_bool(tta, "tta")
    try:
        ignore_label = check_ignore_label(ignore_label)
    except ValueError as error:
        raise BadArgument("ignore_label", str(error)) from None
    if scale is not None:
        check_scale(scale)
    if not isinstance(model, torch.nn.Module):
        model = load_model(model, device=device or "cpu")
    if model.num_classes != 2:
        raise ValueError(f"evaluate needs a model of 2 classes (background, foreground) to make objects; this one "
                         f"has {model.num_classes}")
    check_tiles(model, tile_size, batch_size, device, dtype)
    triples = labelled_files(images, labels, label_suffix)
    if not triples:
        raise ValueError("no labelled images to evaluate")
    if overlay_dir is not None:
        from .overlays import check_replaceable

        written = [Path(overlay_dir) / f"{name}.png" for name, _, _ in triples]
        check_writable_folder(overlay_dir, "overlay_dir")
        check_outputs(images, labels, written, "overlay_dir")
        check_replaceable(written, "overlay_dir")
    rule = nonfinite or getattr(getattr(model, "normalization", None), "nonfinite", "error")
    predict = dict(output="instances", instance_options=instance_options, tile_size=tile_size,
                   batch_size=batch_size, device=device, dtype=dtype, progress=False, nonfinite=nonfinite, tta=tta,
                   scale=scale)
    scores = []
    factor = model_scale(model, scale)
    checked = check_labelled(triples, in_channels=model.in_channels, nonfinite=rule, keep_bytes=HELD_BYTES,
                             ignore_label=ignore_label)
    for group in _same_shape_runs(checked, factor):
        group = [_reread(triple, ignore_label) for triple in group]
        started = time.perf_counter()
        images = [image for _, image, _ in group]
        layout = "YX" if images[0].ndim == 2 else "CYX"
        try:
            predictions = predict_images(model, images, layout=layout, **predict) if len(group) > 1 else \
                [predict_tiled(model, images[0], layout=layout, **predict)]
        except NonFiniteOutputError as error:   # named by the image's name, not its place in the group
            raise NonFiniteOutputError(f"image {group[error.plane or 0][0]!r}: {error.detail}", error.plane,
                                       error.detail) from None
        seconds = (time.perf_counter() - started) / len(group)
        for (name, image, truth), predicted in zip(group, predictions):
            ignored = truth == ignore_label if ignore_label is not None else None
            ignored = ignored if ignored is not None and ignored.any() else None
            truth = _instances_of(truth, ignored)
            result = score_instances(predicted, truth, name, ignored)
            result.seconds = seconds
            scores.append(result)
            if overlay_dir is not None:
                from .overlays import write_overlay

                write_overlay(Path(overlay_dir) / f"{name}.png", image, predicted, truth, ignored=ignored,
                              max_side=overlay_max_side)
            if log is not None:
                log(f"{name}: IoU {result.iou:.3f}, F1 {result.f1:.3f}, AP50-95 {result.ap_50_95:.3f} "
                    f"({result.seconds:.1f} s{f', in a batch of {len(group)} images' if len(group) > 1 else ''})")
    return Evaluation(scores)
