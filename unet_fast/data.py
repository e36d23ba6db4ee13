"""Training data: labelled images from folders, TIFF stacks or arrays, and random training tiles.

A dataset here is a sequence of whole ``LabelledImage``s (normalised image, class targets, the
paper's weight map, instances); ``RandomTiles`` turns one into the training tiles of a U-Net:
an input tile of a legal size and the smaller, centred target and weight crops its output covers.

Labels come in two kinds, told apart by ``label_kind``:
- "instance": 0 is background, every other value one object. Touching objects are separated by a
  background border in the class target (as in the paper), and the weight map is computed on the
  separated objects, so that those borders get the paper's large border weight.
- "semantic": values are class indices; a two-valued mask {0, v} (e.g. 0/255 PNGs, ISBI 2012
  stacks) means background/foreground. Objects for the weight map are the connected components
  of the foreground.
- "auto" (default): for two classes, a label image with more than two distinct values, or with two and no
  0 (two objects filling the image, as in a crop of touching cells), is taken as instances, and any other
  (a {0, v} mask, or one value) as a binary semantic mask; for more classes, semantic
  (``auto_is_instances``).

Sparse annotation: with ``ignore_label`` set, pixels of that value were not annotated (cells nobody outlined,
a region left for later). Their class target is ``IGNORE`` (the losses' ``ignore_index``), so they count in
no loss term, their weight is 0 and the class balance is counted over the annotated pixels; the label
kind and the objects are those of the annotated pixels (the value is no object and no class); validation
scores the annotated pixels, and leaves out predicted objects lying mostly in unannotated ones.

Weight maps are computed once per label image and cached in memory, and on disk under
``cache_dir`` (keyed by a hash of the label image and the weight-map parameters) when given;
normalised images are kept in memory too unless ``cache_images=False``.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from scipy import ndimage

from . import checks, geometry
from .geometry import mirror_indices
from .augment import Compose, RandomElasticDeform, RandomFlip, RandomGreyValue, RandomRotation
from .image_io import atomic_path
from .image_io import read_image as _read_image
from .normalization import NonFiniteInputError, Normalization
from .rescale import check_scale, object_diameters, resample_image, resample_labels, scaled_size
from .synthetic import synthetic_nuclei
from .weights import separate_touching, unet_weight_map

__all__ = ["LabelledImage", "SegmentationDataset", "default_augmentation", "ArrayDataset", "ImageFolderDataset",
           "TiffStackDataset", "SubsetDataset", "split_dataset", "matching_files", "NameMatchError", "RandomTiles",
           "synthetic_nuclei", "IMAGE_SUFFIXES", "LABEL_KINDS", "IGNORE", "check_ignore_label"]

IMAGE_SUFFIXES = (".tif", ".tiff", ".png")
#: the class target of pixels not annotated (``ignore_label``): the losses' default ``ignore_index``
IGNORE = -100
#: part of the weight-map cache key: bumped when the cached weights' definition changes (2: weight
#: maps of instance labels are computed on the separated instances)
_CACHE_VERSION = 2
LABEL_KINDS = ("auto", "instance", "semantic")


@dataclass
class LabelledImage:
    """One training image: ``image`` (C, H, W) float32 normalised, ``target`` (H, W) int64 class
    indices (``IGNORE`` where not annotated), ``weights`` (H, W) float32 paper weight map (0 where not
    annotated), ``instances`` (H, W) int32 objects."""

    name: str
    image: np.ndarray
    target: np.ndarray
    weights: np.ndarray
    instances: np.ndarray


class SegmentationDataset(Sequence):
    """Base of the datasets: subclasses provide ``_load(i) -> (name, image, label)``.

    scale: every image and label is resampled by this factor when read (images normalised first, then
    linear; labels by the nearest pixel; ``unet_fast.rescale``), before the weight maps; setting it
    drops what was read at the old one. ``unet-fast train`` chooses it from ``object_diameters`` and the
    recipe's ``object_size``; ``fit`` gives it to the model it trains (``input_scale``).

    ignore_label: the label value of pixels that were not annotated (see the module docstring), or None."""

    def __init__(self, *, num_classes: int = 2, label_kind: str = "auto", w0: float = 10.0,
                 sigma: float = 5.0, class_weights="balanced", normalization: Normalization | None = None,
                 cache_dir: str | os.PathLike | None = None, cache_images: bool = True, scale: float = 1.0,
                 ignore_label: int | None = None):
        if label_kind not in LABEL_KINDS:
            raise ValueError(f"label_kind must be one of {LABEL_KINDS}, got {label_kind!r}")
        if not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
        self.num_classes = num_classes
        self.label_kind = label_kind
        self.ignore_label = check_ignore_label(ignore_label, num_classes, label_kind)
        self.weight_params = dict(w0=float(w0), sigma=float(sigma), class_weights=class_weights)
        self.normalization = normalization if normalization is not None else Normalization()
        if not isinstance(self.normalization, Normalization):
            raise TypeError(f"normalization must be a unet_fast.Normalization, got {type(normalization).__name__}")
        self._cache: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self._images: dict[int, np.ndarray] = {}
        self.scale = scale
        self.label_pixels = 0
        #: image name -> why its instance labels look like an intensity image (images and labels swapped)
        self.scattered: dict[str, str] = {}
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.cache_images = cache_images

    def __len__(self) -> int:
        raise NotImplementedError

    def _load(self, index: int) -> tuple[str, np.ndarray, np.ndarray]:
        raise NotImplementedError

    @property
    def in_channels(self) -> int:
        return self[0].image.shape[0] if len(self) else 1

    def load_all(self) -> list[str]:
        """Load every labelled image now, checking each pair (image and label shapes, label values) and
        computing its weight map: the work training does anyway before its first step, kept in the
        caches, so a fault in any pair shows before training starts. Returns the names of the images
        whose labels hold no object (no foreground pixel); sets ``without_background``, those whose labels hold
        no background pixel (0) at all (every one of them: the background was likely saved as another value)."""
        empty, self.without_background = [], []
        for index in range(len(self)):
            sample = self[index]
            if not np.any(sample.target > 0):
                empty.append(sample.name)
            if not np.any(sample.instances == 0):      # (the target's borders between objects are 0 even there)
                self.without_background.append(sample.name)
        return empty

    @property
    def scale(self) -> float:
        return self._scale

    @scale.setter
    def scale(self, value: float) -> None:
        self._scale = check_scale(value)
        self._cache.clear()          # images read before were read at the old scale
        self._images.clear()

    def object_diameters(self) -> np.ndarray:
        """The equivalent diameters (px, as the files hold them, before ``scale``) of every object of
        every instance label image: what ``unet_fast.rescale.choose_scale`` takes. Masks (binary or
        classes) hold regions, not objects -- touching cells, a whole tissue -- and add none; labels that
        are not 2-D are skipped here (``load_all`` names them). Sets ``label_pixels``, the pixels of the
        label images read."""
        found, self.label_pixels = [np.zeros(0)], 0
        for index in range(len(self)):
            name, _, label = self._load(index)
            label = np.asarray(label)
            if label.ndim == 2:
                check_label_values(name, label, self.ignore_label)  # before anything is measured or said
                label, ignored = self._annotated(label)
                self.label_pixels += label.size
                if self._kind(label, np.unique(label if ignored is None else label[~ignored])) == "instance":
                    found.append(object_diameters(label))
        return np.concatenate(found)

    def __getitem__(self, index: int) -> LabelledImage:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} images")
        index %= len(self)
        if index in self._images:
            name, image = self._images[index]
            return LabelledImage(name, image, *self._cache[index])
        name, image, label = self._load(index)
        image = _channels_first(image, name)
        label = np.asarray(label)
        if label.ndim != 2:
            raise ValueError(f"label of {name!r} must be a 2-D image, got shape {label.shape}{colour_hint(label.shape)}")
        check_label_values(name, label, self.ignore_label)
        if image.shape[-2:] != label.shape:
            raise ValueError(f"image {name!r} is {image.shape[-2:]} pixels but its label is {label.shape}; "
                             f"they must be the same size")
        if index not in self._cache:
            self._check_scattered(name, label)
        try:
            image = self.normalization(image, channel_axis=0)
        except NonFiniteInputError as error:
            raise NonFiniteInputError(f"image {name!r}: {error}") from None
        if self.scale != 1.0:  # the objects at the size the network learns them, normalised first as inference does
            size = (scaled_size(label.shape[0], self.scale), scaled_size(label.shape[1], self.scale))
            image, label = resample_image(image, size), resample_labels(label, size)
        if index not in self._cache:
            self._cache[index] = self._targets(name, label)
        if self.cache_images:
            self._images[index] = (name, image)
        return LabelledImage(name, image, *self._cache[index])

    def _targets(self, name: str, label: np.ndarray):
        key = None
        if self.cache_dir is not None:
            key = self._cache_key(label)
            cached = _read_cache(self.cache_dir / f"{key}.npz")
            if cached is not None:
                return cached
        label, ignored = self._annotated(label)
        if ignored is not None and ignored.all():
            raise ValueError(f"label of {name!r} is ignore_label={self.ignore_label} everywhere: nothing in it is "
                             f"annotated; leave the image out, or annotate some of it")
        target, weighted_objects, instances = self._interpret(name, label, ignored)
        weights = unet_weight_map(weighted_objects, **self.weight_params, ignored=ignored).astype(np.float32)
        result = (target, weights, instances)
        if key is not None:
            _write_cache(self.cache_dir / f"{key}.npz", result)
        return result

    def _cache_key(self, label: np.ndarray) -> str:
        digest = hashlib.sha256()
        settings = [_CACHE_VERSION, self.weight_params, self.label_kind, self.num_classes, str(label.dtype), label.shape]
        if self.ignore_label is not None:       # appended only when set: keys of caches written before stay valid
            settings.append({"ignore_label": self.ignore_label})
        digest.update(json.dumps(settings, default=str).encode())
        digest.update(np.ascontiguousarray(label).tobytes())
        return digest.hexdigest()

    def _annotated(self, label: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(label with 0 where not annotated, the mask of those pixels or None): ``ignore_label``'s pixels are
        no object and no class; the label kind is told from the other pixels' values."""
        if self.ignore_label is None:
            return label, None
        ignored = label == self.ignore_label
        if not ignored.any():
            return label, None
        return np.where(ignored, np.zeros((), label.dtype), label), ignored

    def _check_scattered(self, name: str, label: np.ndarray) -> None:
        """Record in ``scattered`` a label image read as instances whose ids lie scattered over it, as the grey
        values of a microscope image do (``checks.scattered_label_image``): given for the image's labels."""
        annotated, ignored = self._annotated(label)
        values = np.unique(annotated if ignored is None else annotated[~ignored])
        if self._kind(annotated, values) == "instance":
            doubt = checks.scattered_label_image(annotated)
            if doubt:
                self.scattered[name] = doubt

    def _kind(self, label: np.ndarray, values: np.ndarray | None = None) -> str:
        """"instance" or "semantic": ``label_kind``, or for "auto" instances where a 2-class dataset's
        label has more than two values."""
        if self.label_kind != "auto":
            return self.label_kind
        values = np.unique(label) if values is None else values
        return "instance" if self.num_classes == 2 and auto_is_instances(values) else "semantic"

    def _interpret(self, name: str, label: np.ndarray, ignored: np.ndarray | None = None
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(class target int64, objects for the weight map int32, instances int32) from one label
        image, per ``label_kind``. The weight map's objects are the instances after
        ``separate_touching``: the borders it draws between touching objects are background in the
        target, and only as background pixels between two objects do they get the border weight
        (on the unseparated instances they would be weighted as foreground). ``ignored``: the pixels
        not annotated (0 in ``label``), ``IGNORE`` in the target."""
        target, objects, instances = self._classes_and_objects(name, label, ignored)
        if ignored is not None:
            target[ignored] = IGNORE
        return target, objects, instances

    def _classes_and_objects(self, name: str, label: np.ndarray, ignored: np.ndarray | None):
        values = np.unique(label if ignored is None else label[~ignored])
        if self._kind(label, values) == "instance":
            if values.max(initial=0) > np.iinfo(np.int32).max:   # ids int32 cannot hold (they wrapped): 1..n
                # 0 among the values looked up: the unannotated pixels (0 in label, not among the annotated
                # values) stay background rather than join the first object
                values = np.union1d(values, np.zeros(1, values.dtype))
                instances = np.searchsorted(values, label).astype(np.int32)
            else:
                instances = label.astype(np.int32)
            target, separated = separate_touching(instances, return_instances=True)
            return target, separated, instances
        if len(values) <= 2 and values.max(initial=0) > self.num_classes - 1:
            target = (label > 0).astype(np.int64)             # a {0, v} mask: background / foreground
        else:
            if values.max(initial=0) >= self.num_classes:
                raise ValueError(f"label of {name!r} has class values {values.tolist()[:10]} but num_classes is "
                                 f"{self.num_classes}; values must be below num_classes (or pass label_kind="
                                 f"'instance' for instance labels)")
            target = label.astype(np.int64)
        instances = ndimage.label(target > 0)[0].astype(np.int32)
        return target, instances, instances


class IgnoreLabelUnusedWarning(UserWarning):
    """``ignore_label`` was given but no label image holds it: a mistyped value (256 for 255) trains every unannotated
    pixel as background."""


def check_ignore_label(ignore_label, num_classes: int = 2, label_kind: str = "auto") -> int | None:
    """``ignore_label`` as an int (None stays None), or ValueError naming it: not an integer, 0 (the
    background), or a class of labels whose values are classes (``label_kind`` "semantic", or "auto" with more
    than 2 classes)."""
    if ignore_label is None:
        return None
    if isinstance(ignore_label, (bool, np.bool_)) or not isinstance(ignore_label, (int, np.integer)):
        raise ValueError(f"ignore_label must be an integer label value (the value of pixels nobody annotated) or "
                         f"None, got {ignore_label!r}")
    value = int(ignore_label)
    classes = label_kind == "semantic" or (label_kind == "auto" and num_classes > 2)   # values are classes
    if value == 0 or (classes and 0 <= value < num_classes):
        raise ValueError(f"ignore_label={value} is " + ("the background" if value == 0 else
                         f"one of the {num_classes} classes (0..{num_classes - 1})") + "; give the value that marks "
                         f"pixels nobody annotated, one no class or object uses (255, or -1 in a signed image)")
    return value


def colour_hint(shape) -> str:
    """What to say of a label image of ``shape`` that is no 2-D image, where it looks like colour (C, H, W)."""
    if len(shape) == 3 and shape[0] in (3, 4):
        return ("; it is a colour image: labels hold one integer per object or class (0: background), and "
                "colour-coded labels (one colour per object) must be converted first, e.g. np.unique(rgb.reshape(-1, "
                "3), axis=0, return_inverse=True)[1].reshape(H, W) on the (H, W, 3) pixels (the background colour "
                "then becomes 0 only if it is black)")
    return ""


def check_label_values(name: str, label: np.ndarray, ignore_label: int | None = None) -> None:
    """ValueError for a label image whose values cannot be labels (training's and ``unet-fast evaluate``'s
    rule): a pixel type it refuses (complex, ...), non-integer or infinite values, negative values (but for
    ``ignore_label``, which may be negative, such as -1)."""
    problem = checks.pixel_type_problem(label.dtype)
    if problem:
        raise ValueError(f"label of {name!r} {problem}")
    if label.dtype.kind == "f":
        whole = np.isfinite(label) & (label == np.round(label))
        if not whole.all():
            example = label[~whole].flat[0].item()
            raise ValueError(f"label of {name!r} has non-integer values (e.g. {example!r}); labels are 0 "
                             f"(background) and object or class numbers")
    if label.dtype.kind in "fi" and label.min(initial=0) < 0:
        negative = label < 0 if ignore_label is None or ignore_label >= 0 else (label < 0) & (label != ignore_label)
        if negative.any():
            raise ValueError(f"label of {name!r} has negative values (e.g. {label[negative].flat[0].item()!r}); "
                             f"labels must be >= 0" + ("" if ignore_label is None else
                                                        f", or ignore_label={ignore_label} for pixels not annotated"))


def auto_is_instances(values: np.ndarray) -> bool:
    """Whether a label image of these sorted distinct values holds instances (else it is a binary mask): more
    than two values, or two with no background 0 among them (ids 1 and 2 filling a crop are two objects, not
    one foreground). The "auto" rule of training (``label_kind``) and of ``unet-fast evaluate``."""
    return len(values) > 2 or (len(values) == 2 and values[0] != 0)


class ArrayDataset(SegmentationDataset):
    """In-memory images (each (H, W) or (C, H, W)) and their label images (H, W)."""

    def __init__(self, images, labels, names: Sequence[str] | None = None, **options):
        super().__init__(**options)
        if len(images) != len(labels):
            raise ValueError(f"images and labels must be as many, got {len(images)} images and {len(labels)} labels")
        if len(images) == 0:
            raise ValueError("images is empty: a dataset needs at least one labelled image")
        self.images, self.labels = images, labels
        self.names = list(names) if names is not None else [f"image{i}" for i in range(len(images))]

    def __len__(self) -> int:
        return len(self.images)

    def _load(self, index):
        return self.names[index], np.asarray(self.images[index]), np.asarray(self.labels[index])


class ImageFolderDataset(SegmentationDataset):
    """A folder of images and a folder of label images (TIFF or PNG), matched by base name.

    ``labels/a.png`` labels ``images/a.tif``; label files may also carry a suffix given by
    ``label_suffix`` (e.g. "_mask" for ``a_mask.png``). Every image needs a label.
    """

    def __init__(self, images_dir, labels_dir, *, label_suffix: str = "", **options):
        super().__init__(**options)
        self.images_dir, self.labels_dir = Path(images_dir), Path(labels_dir)
        self.pairs = matching_files(images_dir, labels_dir, label_suffix)

    def __len__(self) -> int:
        return len(self.pairs)

    def _load(self, index):
        image_path, label_path = self.pairs[index]
        return image_path.stem, read_image(image_path), read_image(label_path, labels=True)


class NameMatchError(ValueError):
    """Two folders whose files cannot be paired by base name; ``argument`` says whose fault: "images",
    "labels", or "labels/label_suffix" (labels missing)."""

    def __init__(self, argument: str, message: str):
        super().__init__(message)
        self.argument = argument


def matching_files(images_dir, labels_dir, label_suffix: str = "") -> list[tuple[Path, Path]]:
    """(image, label) file pairs of two folders, matched by base name (``labels/a.png`` labels
    ``images/a.tif``; with ``label_suffix`` "_mask", ``labels/a_mask.png``); every image needs a label.
    Hidden files (names starting with ".") are skipped.
    Ambiguous names are refused (``NameMatchError``): two images of one base name (a.tif and a.png), or
    two labels of the base name an image looks for."""
    images_dir, labels_dir = Path(images_dir), Path(labels_dir)
    for arg, folder in (("images_dir", images_dir), ("labels_dir", labels_dir)):
        if not folder.is_dir():
            raise FileNotFoundError(f"{arg} {str(folder)!r} is not a folder")
    images = _image_files(images_dir)
    if not images:
        raise NameMatchError("images", f"images_dir {str(images_dir)!r} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    _refuse_same_stems(images, "images", "image", {path.stem for path in images})
    label_files = _image_files(labels_dir)
    _refuse_same_stems(label_files, "labels", "label", {path.stem + label_suffix for path in images})
    labels = {path.stem: path for path in label_files}
    pairs, missing = [], []
    for path in images:
        label = labels.get(path.stem + label_suffix)
        if label is None:
            missing.append(path.name)
        else:
            pairs.append((path, label))
    if missing:
        raise NameMatchError("labels/label_suffix" if label_suffix else "labels",
                             f"no label in {str(labels_dir)!r} for {len(missing)} image(s): "
                             f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''} "
                             f"(labels are matched by base name{' + ' + repr(label_suffix) if label_suffix else ''})")
    return pairs


def _refuse_same_stems(files: list[Path], argument: str, what: str, wanted: set[str]) -> None:
    """NameMatchError when two of ``files`` whose base name is in ``wanted`` share it."""
    seen: dict[str, Path] = {}
    for path in files:
        if path.stem not in wanted:
            continue
        if path.stem in seen:
            raise NameMatchError(argument, f"{str(seen[path.stem])!r} and {str(path)!r} have the same base name "
                                           f"{path.stem!r}: which {what} is meant is ambiguous (files are matched "
                                           f"by base name); rename or move one of them")
        seen[path.stem] = path


class TiffStackDataset(SegmentationDataset):
    """ISBI-2012-style multi-page TIFF stacks: page z of ``labels`` labels page z of ``images``.

    ``indices`` picks pages (e.g. to hold some out for validation)."""

    def __init__(self, images_path, labels_path, *, indices: Sequence[int] | None = None, **options):
        super().__init__(**options)
        self.images = _read_stack(images_path, "images_path")
        self.labels = _read_stack(labels_path, "labels_path")
        if self.images.shape[0] != self.labels.shape[0] or self.images.shape[-2:] != self.labels.shape[-2:]:
            raise ValueError(f"images_path holds {self.images.shape[0]} pages of {self.images.shape[-2:]} pixels but "
                             f"labels_path {self.labels.shape[0]} pages of {self.labels.shape[-2:]}; they must match")
        self.indices = list(range(self.images.shape[0]) if indices is None else indices)
        for z in self.indices:
            if not 0 <= z < self.images.shape[0]:
                raise ValueError(f"indices must be pages 0..{self.images.shape[0] - 1}, got {z}")
        self.name = Path(images_path).stem

    def __len__(self) -> int:
        return len(self.indices)

    def _load(self, index):
        z = self.indices[index]
        return f"{self.name}[{z}]", self.images[z], self.labels[z]


class SubsetDataset(SegmentationDataset):
    """The images ``indices`` of ``dataset`` (sharing its settings and weight-map cache)."""

    def __init__(self, dataset: SegmentationDataset, indices: Sequence[int]):
        self.dataset, self.indices = dataset, list(indices)
        self.__dict__.update({k: v for k, v in dataset.__dict__.items()
                              if k in ("num_classes", "label_kind", "weight_params", "normalization", "cache_dir",
                                       "ignore_label")})

    @property
    def scale(self) -> float:
        """The scale of the dataset it was split from (set it there)."""
        return self.dataset.scale

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> LabelledImage:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for a dataset of {len(self)} images")
        return self.dataset[self.indices[index]]


def split_dataset(dataset: SegmentationDataset, val_fraction: float, seed: int = 0):
    """(train, validation) subsets: a seeded random ``val_fraction`` of the images (at least one
    when val_fraction > 0) for validation, the rest (at least one) for training."""
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    if val_fraction == 0:
        return dataset, None
    if len(dataset) < 2:
        raise ValueError(f"val_fraction={val_fraction} needs at least 2 images to split, got {len(dataset)}")
    order = np.random.default_rng(seed).permutation(len(dataset)).tolist()
    n_val = min(max(1, round(val_fraction * len(dataset))), len(dataset) - 1)
    return SubsetDataset(dataset, sorted(order[n_val:])), SubsetDataset(dataset, sorted(order[:n_val]))


def read_image(path, labels: bool = False) -> np.ndarray:
    """A whole TIFF (first series) or PNG as a numpy array, channels first (a palette PNG: its colours, or
    with ``labels`` its indices)."""
    try:
        array, info = _read_image(path, lazy=False, labels=labels)
    except Exception as error:
        raise ValueError(f"cannot read image {str(path)!r}: {error}") from error
    if not labels and set(info.axes[:-2]) - {"C"}:   # planes (Z, T) would pass for channels (labels: not 2-D)
        raise ValueError(f"image {str(path)!r} is a stack (axes {info.axes}, shape {info.shape}); a labelled image is "
                         f"one plane, (H, W) or (C, H, W): save each plane as a file of its own (or give two "
                         f"multi-page TIFF stacks as the images and labels)")
    return np.asarray(array)


def _read_stack(path, arg: str) -> np.ndarray:
    """The pages of a stack, (Z, H, W), or for images (Z, C, H, W) where they have channels (``read_tiff_stack``)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{arg} {str(path)!r} is not a file")
    from .image_io import read_tiff_stack

    stack = read_tiff_stack(path)
    if stack.ndim != 3 and not (stack.ndim == 4 and arg == "images_path"):
        shapes = "(Z, H, W)" + (" or, with channels, (Z, C, H, W)" if arg == "images_path" else "")
        raise ValueError(f"{arg} {str(path)!r} must be a stack of 2-D pages {shapes}, got shape {stack.shape}")
    return stack


def _image_files(folder: Path) -> list[Path]:
    """The image files directly in ``folder``, hidden names skipped as ``segment`` skips them (macOS's ``._x.tif``
    resource forks are no images)."""
    return sorted(p for p in folder.iterdir()
                  if not p.name.startswith(".") and p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _channels_first(image: np.ndarray, name: str) -> np.ndarray:
    image = np.asarray(image)
    problem = checks.pixel_type_problem(image.dtype)
    if problem:
        raise ValueError(f"image {name!r} {problem}")
    if image.ndim == 2:
        return image[None]
    if image.ndim == 3:
        return image
    raise ValueError(f"image {name!r} must be (H, W) or (C, H, W), got shape {image.shape}")


def _read_cache(path: Path):
    if not path.is_file():
        return None
    with np.load(path) as cached:
        return cached["target"], cached["weights"], cached["instances"]


def _write_cache(path: Path, result) -> None:
    target, weights, instances = result
    with atomic_path(path) as temporary:
        with open(temporary, "wb") as handle:
            np.savez(handle, target=target, weights=weights, instances=instances)


class RandomTiles(torch.utils.data.Dataset):
    """Random training tiles of a valid (or same) U-Net drawn from whole labelled images.

    Item i of epoch e is (image (C, n, n) float32, target (m, m) int64, weights (m, m) float32):
    an input tile of legal size n = ``tile_size`` and the centred m x m target its output covers.
    The target window is uniform over the image; the input's context beyond the border is mirrored. With sparse
    labels (``ignore_label``) it is placed around an annotated pixel drawn uniformly instead, so that no tile is
    of unannotated pixels only (which teaches nothing: a zero loss). ``augment(image, target, weights, generator=...)`` (e.g. an ``augment.Compose``) acts
    on the input-sized tiles before the targets are cropped. Every item is a pure function of (seed, epoch, i), so
    resuming, worker processes and distributed ranks all see the same tiles.
    """

    def __init__(self, dataset: SegmentationDataset, tile_size: int, *, depth: int, padding: str = "valid",
                 tiles_per_epoch: int | None = None, augment: Callable | None = None, seed: int = 0):
        if len(dataset) == 0:
            raise ValueError("dataset is empty: training needs at least one labelled image")
        if not geometry.is_valid_input_size(tile_size, depth, padding):
            raise ValueError("tile_size: " + geometry.size_error_message(
                tile_size, depth, padding, geometry.trace_sizes(tile_size, depth, padding).problem or "", tile=True))
        self.dataset = dataset
        self.tile_size = tile_size
        self.output_size = geometry.output_size(tile_size, depth, padding)
        self.augment = augment
        self.seed = seed
        self.epoch = 0
        # loads every image once: fills the caches before DataLoader workers fork
        shapes = []
        #: {image: flat indices of its annotated pixels}, for the images with sparse labels only
        self.annotated = {}
        for i in range(len(dataset)):
            target = dataset[i].target
            shapes.append(target.shape)
            if np.any(target == IGNORE):
                self.annotated[i] = np.flatnonzero(target != IGNORE).astype(
                    np.int32 if target.size < 2 ** 31 else np.int64)
        ignore_label = getattr(dataset, "ignore_label", None)
        if ignore_label is not None and not self.annotated:
            warnings.warn(f"no label image of the dataset holds ignore_label={ignore_label}: every pixel counts as "
                          f"annotated; check the value your annotation tool wrote", IgnoreLabelUnusedWarning,
                          stacklevel=2)
        if tiles_per_epoch is None:     # about one pass over every image's pixels
            tiles_per_epoch = sum(-(-h // self.output_size) * -(-w // self.output_size) for h, w in shapes)
        if tiles_per_epoch < 1:
            raise ValueError(f"tiles_per_epoch must be >= 1, got {tiles_per_epoch}")
        self.tiles_per_epoch = tiles_per_epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.tiles_per_epoch

    def generator(self, index: int) -> torch.Generator:
        seed = int.from_bytes(hashlib.sha256(f"{self.seed}/{self.epoch}/{index}".encode()).digest()[:8], "little")
        return torch.Generator().manual_seed(seed)

    def __getitem__(self, index: int):
        generator = self.generator(index)
        chosen = int(torch.randint(len(self.dataset), (1,), generator=generator))
        sample = self.dataset[chosen]
        height, width = sample.target.shape
        n, m = self.tile_size, self.output_size
        annotated = self.annotated.get(chosen)
        if annotated is None:
            top = int(torch.randint(max(height - m, 0) + 1, (1,), generator=generator)) - max(m - height, 0) // 2
            left = int(torch.randint(max(width - m, 0) + 1, (1,), generator=generator)) - max(m - width, 0) // 2
        else:       # sparse labels: around an annotated pixel drawn uniformly, so that no tile is unannotated only
            y, x = divmod(int(annotated[int(torch.randint(len(annotated), (1,), generator=generator))]), width)
            # within the disc the output square holds, which a rotation of the tile about its centre keeps inside
            inner = max(1, int(m / 2 ** 0.5))
            dy, dx = (int(v) + (m - inner) // 2 for v in torch.randint(inner, (2,), generator=generator))
            top = min(max(y - dy, 0), height - m) if height >= m else -((m - height) // 2)
            left = min(max(x - dx, 0), width - m) if width >= m else -((m - width) // 2)
        margin = (n - m) // 2
        rows = mirror_indices(top - margin, top - margin + n, height)
        cols = mirror_indices(left - margin, left - margin + n, width)
        window = np.ix_(rows, cols)
        image = torch.from_numpy(np.ascontiguousarray(sample.image[(slice(None), *window)], dtype=np.float32))
        target = torch.from_numpy(sample.target[window].astype(np.int64))
        weights = torch.from_numpy(np.ascontiguousarray(sample.weights[window], dtype=np.float32))
        if self.augment is not None:
            image, target, weights = self.augment(image, target, weights, generator=generator)
        crop = slice(margin, margin + m)
        return image.contiguous(), target[crop, crop].contiguous(), weights[crop, crop].contiguous()



def default_augmentation(sigma: float = 10.0) -> Compose:
    """The paper's augmentation of one training tile: flips, a rotation by any angle, the elastic
    deformation (3 x 3 lattice, N(0, sigma) px) and grey-value changes, in that order."""
    return Compose([RandomFlip(), RandomRotation(180.0), RandomElasticDeform(grid=3, sigma=sigma),
                    RandomGreyValue()])
