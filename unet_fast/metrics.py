"""Segmentation metrics: per-class IoU (Jaccard) and Dice, pixel error, the ISBI 2012 Rand error,
and object-level precision / recall / F1, at one IoU threshold or averaged over 0.5..0.95.

Inputs are label maps of the same shape, numpy arrays or torch tensors (any device), integer or
bool: class indices for the pixel metrics (take the argmax of logits first), instance labels
(0 = background) for the Rand error and the object metrics. Results are Python floats or float64
numpy arrays. Pixel metrics count every pixel of the input together (a batch is one big image);
the Rand error and the object metrics take one image (H, W) or a batch (N, H, W) of separate
images.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import scipy.ndimage as ndi
import torch
from scipy.optimize import linear_sum_assignment


# ---------------------------------------------------------------------------------------------
# inputs

def _as_tensor(x, name) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        # torch takes neither the other byte order nor numpy's second names of 64-bit types ('Q', the uint64 that
        # tifffile reads): both as the native type of their size
        native = np.dtype(x.dtype.newbyteorder("=").str)
        with warnings.catch_warnings():   # a read-only array (a memory-mapped stack) is only read here: no copy
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            x = torch.from_numpy(np.ascontiguousarray(x, dtype=native))
    elif not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a numpy array or a torch.Tensor, got {type(x).__name__}")
    if x.is_floating_point() or x.is_complex():
        raise TypeError(f"{name} must be an integer or bool label map (take the argmax of logits first), "
                        f"got {x.dtype}")
    return x


def _pair_of_maps(prediction, target):
    p, t = _as_tensor(prediction, "prediction"), _as_tensor(target, "target")
    if p.shape != t.shape:
        raise ValueError(f"prediction and target must have the same shape, got {tuple(p.shape)} and {tuple(t.shape)}")
    if p.numel() == 0:
        raise ValueError("prediction and target must not be empty")
    return p, t.to(p.device)


def _as_images(x, name) -> np.ndarray:
    """(N, H, W) int64 numpy array from one image (H, W) or a batch (N, H, W)."""
    a = _as_tensor(x, name).detach().cpu().numpy()
    if a.ndim not in (2, 3):
        raise ValueError(f"{name} must be one image (H, W) or a batch (N, H, W), got shape {a.shape}")
    if a.dtype == bool:
        a = a.astype(np.int64)
    if a.dtype == np.uint64 and a.max(initial=0) > np.iinfo(np.int64).max:   # ids int64 cannot hold: renumbered
        ids, inverse = np.unique(a, return_inverse=True)
        a = inverse.reshape(a.shape) + int(ids[0] != 0)                     # 0 stays the background
    if a.min(initial=0) < 0:
        raise ValueError(f"{name} must hold labels >= 0 (0 = background), got a minimum of {a.min()}")
    return a.reshape(-1, *a.shape[-2:]).astype(np.int64, copy=False)


# ---------------------------------------------------------------------------------------------
# pixel metrics

#: the most classes confusion_matrix takes: its table of 4096^2 int64 counts is 128 MiB (instance ids in the
#: millions would ask for terabytes)
MAX_CLASSES = 4096


def confusion_matrix(prediction, target, num_classes: int | None = None, ignore_index: int | None = None) -> np.ndarray:
    """(K, K) int64 counts, rows = target class, columns = predicted class.

    num_classes defaults to 1 + the largest label in either map; pixels whose target equals
    ignore_index are left out."""
    p, t = _pair_of_maps(prediction, target)
    p, t = p.reshape(-1).long(), t.reshape(-1).long()
    if ignore_index is not None:
        keep = t != ignore_index
        p, t = p[keep], t[keep]
    if p.numel() and min(p.min().item(), t.min().item()) < 0:
        raise ValueError("class labels must be >= 0 (use ignore_index for pixels to leave out)")
    largest = max(p.max().item(), t.max().item()) if p.numel() else -1
    if num_classes is None:
        num_classes = largest + 1
    elif not isinstance(num_classes, int) or num_classes < 1 or largest >= num_classes:
        raise ValueError(f"num_classes must be an int > every label (largest label {largest}), got {num_classes!r}")
    if num_classes > MAX_CLASSES:
        raise ValueError(f"confusion_matrix (and iou, dice) count classes in a {num_classes} x {num_classes} table, "
                         f"over the {MAX_CLASSES} classes it allows (largest label {largest}): for instance labels "
                         f"use foreground_iou, object_scores or rand_error, which take any ids")
    counts = torch.bincount(t * num_classes + p, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).cpu().numpy().astype(np.int64)


def _ratio(num, den) -> np.ndarray:
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def iou(prediction, target, num_classes: int | None = None, ignore_index: int | None = None) -> np.ndarray:
    """Intersection over union (Jaccard index) per class, |P & T| / |P | T|; NaN for a class that is
    in neither map."""
    cm = confusion_matrix(prediction, target, num_classes, ignore_index)
    tp = np.diag(cm)
    return _ratio(tp, cm.sum(0) + cm.sum(1) - tp)


def dice(prediction, target, num_classes: int | None = None, ignore_index: int | None = None) -> np.ndarray:
    """Dice coefficient per class, 2 |P & T| / (|P| + |T|); NaN for a class in neither map."""
    cm = confusion_matrix(prediction, target, num_classes, ignore_index)
    return _ratio(2 * np.diag(cm), cm.sum(0) + cm.sum(1))


def foreground_iou(prediction, target, background: int = 0) -> float:
    """IoU of the foreground (every label other than ``background``): the paper's IoU for cell
    segmentation, which works for instance labels too."""
    p, t = _pair_of_maps(prediction, target)
    return float(iou(p != background, t != background, num_classes=2)[1])


def pixel_error(prediction, target, ignore_index: int | None = None) -> float:
    """Fraction of pixels whose predicted class differs from the target."""
    cm = confusion_matrix(prediction, target, None, ignore_index)
    total = cm.sum()
    return float((total - np.trace(cm)) / total) if total else float("nan")


# ---------------------------------------------------------------------------------------------
# ISBI 2012 Rand error

@dataclass(frozen=True)
class RandScores:
    error: float      # 1 - F-score
    precision: float  # Rand merge score: pairs together in both / pairs together in the prediction
    recall: float     # Rand split score: pairs together in both / pairs together in the target


def _components(labels: np.ndarray) -> np.ndarray:
    out = np.zeros_like(labels)
    for i, image in enumerate(labels):
        out[i] = ndi.label(image > 0)[0]
    return out


def _rand_scores_one(pred: np.ndarray, true: np.ndarray, n: int) -> tuple[float, float, float]:
    """The scores of one image whose ``n`` pixels count (the annotated ones: ``true`` is 0 in the others)."""
    fg = true > 0
    if not fg.any():
        return float("nan"), float("nan"), float("nan")
    t = np.unique(true[fg], return_inverse=True)[1].ravel()
    p_labels, p = np.unique(pred[fg], return_inverse=True)
    p = p.ravel()
    table = np.bincount(t * len(p_labels) + p, minlength=(t.max() + 1) * len(p_labels)).reshape(-1, len(p_labels))
    table = table.astype(np.float64)
    unassigned = 0.0
    if p_labels[0] == 0:  # predicted background inside the target's foreground
        unassigned = table[:, 0].sum()
        table = table[:, 1:]
    sum_true = np.square(np.bincount(t).astype(np.float64)).sum()  # target objects, unassigned pixels included
    sum_pred = np.square(table.sum(0)).sum() + unassigned / n
    sum_both = np.square(table).sum() + unassigned / n
    precision, recall = sum_both / sum_pred, sum_both / sum_true
    f_score = 2 * precision * recall / (precision + recall)
    return 1.0 - f_score, precision, recall


def rand_scores(prediction, target, connected_components: bool = False, ignored=None) -> RandScores:
    """The ISBI 2012 / SNEMI3D foreground-restricted Rand scores (Arganda-Carreras et al. 2015).

    With p_ij the number of pixels in target object i and predicted object j, counted only where the
    target is foreground (label > 0): recall (split score) = sum p_ij^2 / sum_i t_i^2, precision
    (merge score) = sum p_ij^2 / sum_j s_j^2, error = 1 - their harmonic mean. Predicted background
    (label 0) inside the target's foreground belongs to no object: as in the challenge's scripts
    (Fiji's RandError N^2 normalisation, SNEMI3D's adapted_rand) those pixels add only c / n to the
    pair sums (c of them, n pixels in the image), which makes them nearly unmatched singletons.
    connected_components: label the nonzero pixels of both maps into 4-connected components first
    (for binary masks). ignored: a bool mask of the target's shape, pixels nobody annotated, or None: they
    are left out as if the image did not hold them (in no pair, and not among the n pixels), whatever the
    target holds there. A batch (N, H, W) gives the mean over its images of each score, leaving out the
    images without target objects (whose scores are undefined); NaN when no image has any.
    """
    p, t = _pair_of_maps(prediction, target)
    pred, true = _as_images(p, "prediction"), _as_images(t, "target")
    if ignored is None:
        annotated = [true.shape[-2] * true.shape[-1]] * len(true)
    else:
        mask = _as_tensor(ignored, "ignored").detach().cpu().numpy()
        if mask.shape != tuple(t.shape):
            raise ValueError(f"ignored must have the target's shape {tuple(t.shape)}, got {mask.shape}")
        mask = mask.astype(bool, copy=False).reshape(true.shape)
        true = np.where(mask, 0, true)
        annotated = (~mask).reshape(len(true), -1).sum(1).tolist()
    if connected_components:
        pred, true = _components(pred), _components(true)
    scores = np.array([_rand_scores_one(a, b, n) for a, b, n in zip(pred, true, annotated)])
    scores = scores[~np.isnan(scores[:, 0])]           # images without target objects have no score
    return RandScores(*(float(v) for v in scores.mean(0))) if len(scores) else RandScores(*[float("nan")] * 3)


def rand_error(prediction, target, connected_components: bool = False, ignored=None) -> float:
    """The ISBI 2012 Rand error, 1 - foreground-restricted Rand F-score (see ``rand_scores``)."""
    return rand_scores(prediction, target, connected_components, ignored).error


# ---------------------------------------------------------------------------------------------
# object-level matching

#: the IoU thresholds the nuclei literature averages over (2018 Data Science Bowl, StarDist): 0.5, 0.55, ..., 0.95
IOU_THRESHOLDS = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))


@dataclass(frozen=True)
class ObjectScores:
    true_positives: int
    false_positives: int
    false_negatives: int
    precision: float  # nothing predicted: 1.0 if there was nothing to find, else 0.0
    recall: float     # nothing to find: 1.0 if nothing was predicted, else 0.0
    f1: float         # 1.0 when both are empty
    mean_matched_iou: float  # NaN when nothing matched

    @property
    def accuracy(self) -> float:
        """TP / (TP + FP + FN): what the 2018 Data Science Bowl calls the average precision at this
        threshold (StarDist's "accuracy"); 1.0 when both are empty."""
        total = self.true_positives + self.false_positives + self.false_negatives
        return self.true_positives / total if total else 1.0


@dataclass(frozen=True)
class _Overlaps:
    """The overlapping (target object, predicted object) pairs of one image and their IoU."""

    target: np.ndarray      # index of the target object (0..n_true-1) of each pair
    predicted: np.ndarray   # index of the predicted object of each pair
    iou: np.ndarray
    n_true: int
    n_pred: int


def _overlaps(pred: np.ndarray, true: np.ndarray) -> _Overlaps:
    p_ids, p = np.unique(pred, return_inverse=True)
    t_ids, t = np.unique(true, return_inverse=True)
    p, t = p.ravel(), t.ravel()
    p_area, t_area = np.bincount(p, minlength=len(p_ids)), np.bincount(t, minlength=len(t_ids))
    both = (p_ids[p] > 0) & (t_ids[t] > 0)
    pairs, counts = np.unique(t[both].astype(np.int64) * len(p_ids) + p[both], return_counts=True)
    ti, pi = pairs // len(p_ids), pairs % len(p_ids)
    iou = counts / (t_area[ti] + p_area[pi] - counts)
    # objects numbered from 0 without the background
    t_shift, p_shift = int(t_ids[0] == 0), int(p_ids[0] == 0)
    return _Overlaps(ti - t_shift, pi - p_shift, iou, len(t_ids) - t_shift, len(p_ids) - p_shift)


def _match(overlaps: _Overlaps, threshold: float) -> tuple[int, int, int, list[float]]:
    """(TP, FP, FN, matched IoUs): one-to-one matching maximising the number of pairs at or above
    the threshold, then their IoU (Hungarian). Above an IoU of 0.5 an object can match only one other,
    so only the pairs that compete for an object (ties at exactly 0.5, or thresholds below it) need it."""
    keep = overlaps.iou >= threshold
    ti, pi, iou = overlaps.target[keep], overlaps.predicted[keep], overlaps.iou[keep]
    t_degree = np.bincount(ti, minlength=overlaps.n_true)
    p_degree = np.bincount(pi, minlength=overlaps.n_pred)
    alone = (t_degree[ti] == 1) & (p_degree[pi] == 1)
    matched = iou[alone].tolist()
    if not alone.all():
        rows, r = np.unique(ti[~alone], return_inverse=True)
        cols, c = np.unique(pi[~alone], return_inverse=True)
        score, pair_iou = np.zeros((len(rows), len(cols))), np.zeros((len(rows), len(cols)))
        pair_iou[r, c] = iou[~alone]
        # a pair counts 1, its IoU only breaks ties: the IoUs of any matching sum to under 1/2 (StarDist's weights)
        score[r, c] = 1.0 + pair_iou[r, c] / (2 * min(len(rows), len(cols)))
        chosen_rows, chosen_cols = linear_sum_assignment(score, maximize=True)
        chosen = score[chosen_rows, chosen_cols] > 0
        matched += pair_iou[chosen_rows[chosen], chosen_cols[chosen]].tolist()
    tp = len(matched)
    return tp, overlaps.n_pred - tp, overlaps.n_true - tp, matched


def scores_from_counts(tp: int, fp: int, fn: int, matched: list[float] = ()) -> ObjectScores:
    """ObjectScores of counts of true positives, false positives and false negatives (and the IoUs
    of the matched pairs, for their mean)."""
    # a 0/0 ratio scores the image as a whole: 1.0 when both sides are empty, 0.0 when the other side has
    # errors (a model that predicts nothing on an image of cells is not a perfectly precise one; StarDist: 0)
    precision = tp / (tp + fp) if tp + fp else float(fn == 0)
    recall = tp / (tp + fn) if tp + fn else float(fp == 0)
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0
    return ObjectScores(tp, fp, fn, precision, recall, f1, float(np.mean(matched)) if matched else float("nan"))


def _check_threshold(value, name: str) -> None:
    if not (isinstance(value, (int, float, np.floating)) and 0 < value <= 1):
        raise ValueError(f"{name} must be in (0, 1], got {value!r}")


def without_ignored_objects(prediction, ignored) -> np.ndarray:
    """The instance labels ``prediction`` ((H, W) or (N, H, W), numpy or torch) as a numpy array, with 0 for the
    objects lying mostly in ``ignored`` (a bool mask of its shape: pixels nobody annotated): more than half of
    their pixels there. Such an object cannot match a true object at IoU >= 0.5 (true objects lie in annotated
    pixels), and counting it as a false positive would score a cell the annotator left out as the net's error,
    as COCO's and the Data Science Bowl's ignore regions do not. Objects partly in ignored pixels stay whole."""
    labels = _as_tensor(prediction, "prediction").detach().cpu().numpy()
    mask = _as_tensor(ignored, "ignored").detach().cpu().numpy()
    if mask.shape != labels.shape:
        raise ValueError(f"ignored must have the prediction's shape {labels.shape}, got {mask.shape}")
    if labels.ndim not in (2, 3):
        raise ValueError(f"prediction must be one image (H, W) or a batch (N, H, W), got shape {labels.shape}")
    mask = mask.astype(bool, copy=False)
    if not mask.any():
        return labels
    kept = labels.copy()
    for image, ignored_pixels in zip(kept.reshape(-1, *labels.shape[-2:]), mask.reshape(-1, *labels.shape[-2:])):
        ids, inverse = np.unique(image, return_inverse=True)   # each image's objects on their own
        inverse = inverse.reshape(-1)
        area = np.bincount(inverse, minlength=len(ids))
        inside = np.bincount(inverse[ignored_pixels.reshape(-1)], minlength=len(ids))
        dropped = (2 * inside > area) & (ids != 0)
        image[dropped[inverse].reshape(image.shape)] = 0
    return kept


def object_scores_by_threshold(prediction, target, thresholds=IOU_THRESHOLDS,
                               connected_components: bool = False) -> list[ObjectScores]:
    """``object_scores`` at each IoU threshold (default 0.5, 0.55, ..., 0.95), the overlaps computed once."""
    thresholds = list(thresholds)
    if not thresholds:
        raise ValueError("thresholds must not be empty")
    for value in thresholds:
        _check_threshold(value, "every threshold")
    p, t = _pair_of_maps(prediction, target)
    pred, true = _as_images(p, "prediction"), _as_images(t, "target")
    if connected_components:
        pred, true = _components(pred), _components(true)
    counts = [[0, 0, 0, []] for _ in thresholds]
    for a, b in zip(pred, true):
        overlaps = _overlaps(a, b)
        for total, threshold in zip(counts, thresholds):
            tp, fp, fn, matched = _match(overlaps, threshold)
            total[0] += tp
            total[1] += fp
            total[2] += fn
            total[3] += matched
    return [scores_from_counts(*total) for total in counts]


def object_scores(prediction, target, iou_threshold: float = 0.5, connected_components: bool = False) -> ObjectScores:
    """Object-level detection scores: a predicted object matches a target object when their IoU is at
    least ``iou_threshold``, one-to-one (Hungarian matching; above 0.5 matches are unique anyway).

    Inputs are instance label maps (0 = background), or binary masks with connected_components=True
    (4-connected components of the nonzero pixels). A batch (N, H, W) sums the counts over images.
    """
    _check_threshold(iou_threshold, "iou_threshold")
    return object_scores_by_threshold(prediction, target, [iou_threshold], connected_components)[0]


def average_precision(prediction, target, thresholds=IOU_THRESHOLDS, connected_components: bool = False) -> float:
    """The mean over IoU thresholds (default 0.5, 0.55, ..., 0.95) of TP / (TP + FP + FN)
    (``ObjectScores.accuracy``): the 2018 Data Science Bowl's score, StarDist's mean accuracy."""
    return float(np.mean([s.accuracy for s in object_scores_by_threshold(prediction, target, thresholds,
                                                                          connected_components)]))
