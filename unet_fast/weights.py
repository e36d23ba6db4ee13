"""The paper's per-pixel loss weights and its separated label images.

Ronneberger et al. (2015) train with a weight map that balances the class frequencies and makes
the network learn the thin background gaps between touching cells:

    w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2))

Definitions used here (for each image on its own):

- Objects are the distinct positive values of the instance label image (0 is background); the
  values need not be consecutive, and an object may be split into several pieces.
- d_k(x) is the Euclidean distance between the centres of pixel x and of the nearest pixel of object
  k (``scipy.ndimage.distance_transform_edt``): the distance to the object's border, 1 for a
  background pixel next to the object. d1(x) <= d2(x) are the two smallest d_k(x) over objects.
- The border term is applied to background pixels only, as in the paper, where it weights the
  background gaps between cells; it is 0 on object pixels and wherever the image holds fewer than 2
  objects.
- w_c: ``"balanced"`` gives class c (background = label 0, foreground = label > 0) the weight
  ``pixels / (classes present * pixels of class c)``, so both classes carry the same total weight
  and the mean of w_c is 1; a pair ``(w_background, w_foreground)`` or dict ``{0: .., 1: ..}`` gives
  fixed weights; ``None`` gives 1 everywhere.

Algorithm. The naive map takes one full-image distance transform per object: O(objects x pixels).
Here the border term is dropped where it is below ``_NEGLIGIBLE`` = 1e-5, i.e. where
d1 + d2 > R = sigma * sqrt(2 ln(w0 / 1e-5)) (26.3 px for the paper's w0 = 10, sigma = 5). Where it
is kept, d1 >= 1 (x is background) puts both objects within R - 1 of x. So each object takes one
exact distance transform only inside its bounding box grown by R - 1, cut down to the object plus
where the grown boxes of its partners (objects whose bounding boxes are within R of its own)
overlap it, and a running per-pixel minimum keeps the two smallest squared distances; objects
without partners are skipped. The cost is about pixels x (1 + 2R / object size)^2, however many
objects share the image, and the result differs from the naive map by less than 1e-5 (only dropped
terms differ).

Touching objects: the paper's semantic labels separate touching cells by background borders
(:func:`separate_touching`). Compute the weight map on the separated instance labels, so that those
borders are background pixels between two near objects and get the large border weight.
"""
from __future__ import annotations

import math
from numbers import Integral, Real

import numpy as np
import torch
from scipy import ndimage

#: border weights below this are dropped by the windowed algorithm (test tolerance is 1e-4)
_NEGLIGIBLE = 1e-5
_CLASSES = 2  # background (label 0) and foreground (label > 0)


def unet_weight_map(instance_labels, w0: float = 10.0, sigma: float = 5.0, class_weights="balanced", ignored=None):
    """Weight map w = w_c + w0 * exp(-(d1 + d2)^2 / (2 sigma^2)) of the U-Net paper (see module doc).

    Args:
        instance_labels: integer labels [H, W] or batched [N, H, W], numpy array or torch tensor;
            0 = background, positive values = objects. Each image of a batch is weighted on its own.
        w0: weight of the border term (> 0); the paper uses 10.
        sigma: width of the border term in pixels (> 0); the paper uses 5.
        class_weights: ``"balanced"`` (inverse class frequency, mean 1), a pair / dict of the
            background and foreground weights, or None (1.0 everywhere).
        ignored: None, or a bool mask of the labels' shape (same kind) of pixels nobody annotated (taken as
            background whatever ``instance_labels`` holds there): their weight is 0, and "balanced" counts the
            classes over the other pixels (the mean of w_c over the annotated pixels is 1).

    Returns:
        float32 weights of the input's shape and kind (a torch tensor comes back on its device).
    """
    labels, wrap = _labels_to_numpy(instance_labels, "instance_labels")
    w0 = _positive_number(w0, "w0")
    sigma = _positive_number(sigma, "sigma")
    fixed = _parse_class_weights(class_weights)
    if ignored is not None:
        ignored = np.asarray(ignored.detach().cpu() if isinstance(ignored, torch.Tensor) else ignored)
        if ignored.shape != labels.shape or ignored.dtype != bool:
            raise ValueError(f"ignored must be a bool mask of the labels' shape {labels.shape}, got "
                             f"{ignored.dtype} of shape {ignored.shape}")
    weights = np.empty(labels.shape, np.float32)
    batched = labels.ndim == 3
    images, outs = (labels, weights) if batched else (labels[None], weights[None])
    if ignored is None:
        masks = [None] * len(images)
    else:
        masks = ignored if batched else ignored[None]
    for image, out, mask in zip(images, outs, masks):
        if mask is not None and mask.any():   # an object there was not annotated: background, weight 0 below
            image = np.where(mask, np.zeros((), image.dtype), image)
        image = _compact(image)
        out[...] = _class_term(image, fixed, mask) + _border_term(image, w0, sigma)
        if mask is not None:
            out[mask] = 0
    return wrap(weights)


def separate_touching(instance_labels, *, connectivity: int = 8, width: int = 1, return_instances: bool = False):
    """The paper's semantic labels: objects (1) on background (0), touching objects split by background.

    A pixel of object k becomes background when a pixel of another object lies within ``width``
    steps of it: in the (2 width + 1)-square around it for ``connectivity=8``, in the diamond of
    that radius for ``connectivity=4``. Both sides of a contact lose their border pixels, so
    touching objects end up 2 ``width`` pixels apart; with ``connectivity=8`` no two objects are
    left 8-adjacent, so connected components of any connectivity give them back one by one.

    Args:
        instance_labels: integer labels [H, W] or [N, H, W], numpy or torch (0 = background).
        connectivity: 8 or 4, the neighbourhood that counts as touching.
        width: >= 1, how many pixels each touching object gives up.
        return_instances: also return the instance labels with those pixels set to 0.

    Returns:
        semantic int64 labels of the input's shape and kind (0 background, 1 object), or
        ``(semantic, instances)`` with ``instances`` in the input's dtype.
    """
    labels, wrap = _labels_to_numpy(instance_labels, "instance_labels")
    if connectivity not in (4, 8) or isinstance(connectivity, bool):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity!r}")
    if not isinstance(width, Integral) or isinstance(width, bool) or width < 1:
        raise ValueError(f"width must be an integer >= 1, got {width!r}")
    step = ndimage.generate_binary_structure(2, 2 if connectivity == 8 else 1)
    footprint = ndimage.iterate_structure(step, int(width))[(None,) * (labels.ndim - 2)]  # one image at a time
    ids = _filterable_ids(labels)
    highest = np.iinfo(ids.dtype).max
    largest_near = ndimage.grey_dilation(ids, footprint=footprint, mode="constant", cval=0)
    smallest_near = ndimage.grey_erosion(np.where(ids > 0, ids, highest), footprint=footprint,
                                         mode="constant", cval=highest)
    objects = ids > 0
    border = objects & ((largest_near > ids) | (smallest_near < ids))
    semantic = (objects & ~border).astype(np.int64)
    if not return_instances:
        return wrap(semantic)
    return wrap(semantic), wrap(np.where(border, 0, labels).astype(labels.dtype))


def _labels_to_numpy(labels, name):
    """Validated non-negative integer labels as a numpy array, and a function giving results back
    in the input's kind (numpy, or torch on the input's device)."""
    if isinstance(labels, torch.Tensor):
        if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
            raise TypeError(f"{name} must hold integer instance labels, got a tensor of dtype {labels.dtype}")
        device = labels.device
        array = labels.detach().cpu().numpy()

        def wrap(result):
            return torch.from_numpy(result).to(device)
    elif isinstance(labels, np.ndarray):
        array = labels

        def wrap(result):
            return result
    else:
        raise TypeError(f"{name} must be a numpy array or torch tensor, got {type(labels).__name__}")
    if array.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integer instance labels, got dtype {array.dtype}")
    if array.ndim not in (2, 3):
        raise ValueError(f"{name} must be [H, W] or batched [N, H, W], got shape {tuple(array.shape)}")
    if array.dtype.kind == "i" and array.size and array.min() < 0:
        position = tuple(int(i) for i in np.argwhere(array < 0)[0])
        raise ValueError(f"{name} must be >= 0 (0 = background), got {array[position]} at position {position}")
    return np.ascontiguousarray(array), wrap


def _positive_number(value, name) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def _parse_class_weights(class_weights):
    """None for "balanced", else the (background, foreground) weights."""
    if isinstance(class_weights, str):
        if class_weights != "balanced":
            raise ValueError(f'class_weights must be "balanced", a (background, foreground) pair, '
                             f"a dict {{0: w, 1: w}} or None, got {class_weights!r}")
        return None
    if class_weights is None:
        return (1.0, 1.0)
    if isinstance(class_weights, dict):
        if set(class_weights) != {0, 1}:
            raise ValueError(f"class_weights as a dict needs exactly the keys 0 (background) and 1 "
                             f"(foreground), got keys {sorted(class_weights)}")
        pair = (class_weights[0], class_weights[1])
    else:
        try:
            pair = tuple(class_weights)
        except TypeError:
            pair = ()
        if len(pair) != _CLASSES:
            raise ValueError(f"class_weights must be \"balanced\", a (background, foreground) pair, a dict "
                             f"or None, got {class_weights!r}")
    if not all(isinstance(w, Real) and not isinstance(w, bool) and math.isfinite(w) and w >= 0 for w in pair):
        raise ValueError(f"class_weights must be finite numbers >= 0, got {class_weights!r}")
    return tuple(float(w) for w in pair)


def _filterable_ids(labels):
    """The labels, or ids equal where they are equal (0 stays 0), in a dtype whose maximum survives
    scipy's grey filters: they pass ``cval`` through a double, where int64's and uint64's maxima round
    up to 2**63 / 2**64 and wrap (int64 max came back as int64 min, erasing every object)."""
    if labels.dtype.itemsize < 8:
        return labels
    ids = _compact(labels)      # at most labels.size
    return ids.astype(np.int32 if ids.size == 0 or ids.max() < np.iinfo(np.int32).max else np.uint32)


def _compact(labels):
    """Renumber sparse labels 1..K so per-object tables stay small (values like 10**9 are legal)."""
    if labels.size and labels.max() > labels.size:
        with_background = np.concatenate([np.zeros(1, labels.dtype), labels.ravel()])  # keeps 0 -> 0
        return np.unique(with_background, return_inverse=True)[1][1:].reshape(labels.shape)
    return labels


def _class_term(labels, fixed, ignored=None):
    foreground = labels > 0
    if fixed is None:
        annotated = foreground.size - (0 if ignored is None else np.count_nonzero(ignored))
        counts = np.array([annotated - np.count_nonzero(foreground), np.count_nonzero(foreground)])
        present = max(1, np.count_nonzero(counts))  # an empty image has no class present
        fixed = annotated / (present * np.maximum(counts, 1))
    return np.where(foreground, np.float32(fixed[1]), np.float32(fixed[0]))


def _border_term(labels, w0, sigma):
    """w0 exp(-(d1 + d2)^2 / (2 sigma^2)) on background pixels, from windowed distance transforms."""
    term = np.zeros(labels.shape, np.float32)
    reach = sigma * math.sqrt(2 * math.log(max(w0 / _NEGLIGIBLE, 1.0)))
    # A background pixel has d1 >= 1, so where d1 + d2 <= reach both objects are within reach - 1.
    margin = max(0, math.ceil(reach - 1))
    # squared distances are exact integers; int32 holds them unless a side exceeds 32767 pixels
    integer = np.int32 if max(labels.shape) < 2 ** 15 else np.int64
    far = np.iinfo(integer).max
    d1_squared = np.full(labels.shape, far, integer)  # running two smallest squared distances
    d2_squared = np.full(labels.shape, far, integer)
    for index, window in _windows(labels, reach, margin):
        nearest = ndimage.distance_transform_edt(labels[window] != index, return_distances=False,
                                                 return_indices=True).astype(integer, copy=False)
        height, width = nearest.shape[1:]
        nearest[0] -= np.arange(height, dtype=integer)[:, None]
        nearest[1] -= np.arange(width, dtype=integer)
        np.square(nearest, out=nearest)
        squared = np.add(nearest[0], nearest[1], out=nearest[0])
        first, second = d1_squared[window], d2_squared[window]
        np.minimum(second, np.maximum(first, squared), out=second)
        np.minimum(first, squared, out=first)
    scored = (labels == 0) & (d2_squared < far)  # background with two objects within reach
    total = np.sqrt(d1_squared[scored], dtype=np.float32) + np.sqrt(d2_squared[scored], dtype=np.float32)
    term[scored] = w0 * np.exp(-np.square(total) / (2 * sigma * sigma))
    return term


def _windows(labels, reach, margin):
    """(object, window): where an object's distances can matter, for every object that has a partner.

    A pixel's border term needs its two objects within ``margin`` of it, so inside both their
    bounding boxes grown by ``margin`` (the grown boxes G); and two objects further apart than
    ``reach`` never matter together (for a background pixel d1 + d2 is at least their gap, which
    is at least their bounding boxes' gap). An object's window is therefore the bounding box of the
    union of G_k & G_j over its partners j, grown to hold the object itself so that its distance
    transform inside the window is exact.
    """
    if labels.size == 0:
        return
    boxes = [(index, box) for index, box in enumerate(ndimage.find_objects(labels), start=1) if box is not None]
    if len(boxes) < 2:
        return
    first = np.array([[s.start for s in box] for _, box in boxes])
    last = np.array([[s.stop - 1 for s in box] for _, box in boxes])
    grown_lo = np.maximum(first - margin, 0)
    grown_hi = np.minimum(last + 1 + margin, labels.shape)
    window_lo, window_hi = first.copy(), last + 1
    has_partner = np.zeros(len(boxes), bool)
    chunk = 256  # the pair test is O(objects^2): done in slices of rows to bound memory
    for start in range(0, len(boxes), chunk):
        rows = slice(start, start + chunk)
        gaps = np.maximum(0, np.maximum(first[rows, None] - last[None], first[None] - last[rows, None]))
        i, j = np.nonzero(np.square(gaps).sum(axis=-1) <= reach * reach)
        i += start
        i, j = i[i != j], j[i != j]
        shared_lo = np.maximum(grown_lo[i], grown_lo[j])
        shared_hi = np.minimum(grown_hi[i], grown_hi[j])
        meet = np.all(shared_lo < shared_hi, axis=1)
        i, shared_lo, shared_hi = i[meet], shared_lo[meet], shared_hi[meet]
        has_partner[i] = True
        np.minimum.at(window_lo, i, shared_lo)
        np.maximum.at(window_hi, i, shared_hi)
    for k in np.flatnonzero(has_partner):
        yield boxes[k][0], (slice(window_lo[k, 0], window_hi[k, 0]), slice(window_lo[k, 1], window_hi[k, 1]))
