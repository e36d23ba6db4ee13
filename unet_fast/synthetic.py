"""Synthetic fluorescence-like images of touching nuclei with instance labels, for tests and demos.

Each image is drawn independently from its own random stream (``seed`` and the image's index), so
image ``i`` is the same whatever ``n`` is. The recipe, in drawing order:

1. Objects: ellipses with random semi-axes, orientation and a slightly wavy outline (2nd and 3rd
   angular harmonics). About ``touching_fraction`` of them are placed against an object already
   drawn, at 80-100 % of the summed radii along a random direction, so they grow into dense
   clusters of touching and overlapping nuclei; the rest land anywhere. A later object occludes an
   earlier one. Objects left with under 40 % of their area visible, or under 20 pixels, are
   dropped; an occluded object keeps only its largest 4-connected piece.
2. Intensity: per-nucleus brightness times a dome profile (a flattened ellipsoid in an optical
   section: flat inside, falling as the nucleus thins towards its edge, see ``_dome``), a fine
   chromatin-like texture, on a dim background; all under a smooth uneven illumination. The
   profile falls towards every visible edge of a nucleus, including where another nucleus
   occludes it (``_visible_rim``), so touching nuclei are separated by a darker seam, as real
   ones are: without it the image would give no cue where one nucleus ends and the next begins.
3. Optics and sensor: Gaussian blur, then Poisson shot noise for ``photons`` photons at intensity 1,
   clipped to [0, 1].
"""
from __future__ import annotations

import math
from numbers import Integral, Real

import numpy as np
from scipy import ndimage

#: default object density: 120 nuclei per 512 x 512 pixels
_OBJECTS_PER_PIXEL = 120 / (512 * 512)
_MIN_VISIBLE_FRACTION = 0.4
_MIN_VISIBLE_PIXELS = 20
#: a nucleus's signal falls off where it is thinner than this fraction of its central thickness
_SECTION = 0.7


def synthetic_nuclei(n: int = 1, size: int | tuple[int, int] = 256, seed: int = 0, *,
                     num_objects: int | None = None, radius_range: tuple[float, float] = (8.0, 18.0),
                     touching_fraction: float = 0.6, blur_sigma: float = 1.2,
                     photons: float = 150.0) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``n`` synthetic nuclei images and their instance labels.

    Args:
        n: number of images (>= 1).
        size: image size, an int (square) or ``(H, W)``; each side >= 16.
        seed: non-negative int; the same seed gives the same images.
        num_objects: nuclei drawn per image (before dropping hidden ones, so the labels hold
            slightly fewer); default 120 per 512 x 512 pixels, at least 1.
        radius_range: (min, max) semi-major axis in pixels; the minor axis is 1 to 1.6 times shorter.
        touching_fraction: share of nuclei placed against an earlier one (0..1).
        blur_sigma: Gaussian blur of the optics in pixels (0 for none).
        photons: photons at intensity 1 for the shot noise (larger = less noise; ``inf`` for none).

    Returns:
        ``(images, labels)``, always with a leading ``n`` axis: images float32 ``[n, H, W]`` in
        [0, 1]; labels int32 ``[n, H, W]``, 0 = background, 1..K = nuclei numbered consecutively.
    """
    height, width = _check_size(size)
    if not isinstance(n, Integral) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    if not isinstance(seed, Integral) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if num_objects is None:
        num_objects = max(1, round(_OBJECTS_PER_PIXEL * height * width))
    elif not isinstance(num_objects, Integral) or isinstance(num_objects, bool) or num_objects < 0:
        raise ValueError(f"num_objects must be a non-negative integer or None, got {num_objects!r}")
    lo, hi = _check_radius_range(radius_range)
    if not isinstance(touching_fraction, Real) or not 0.0 <= touching_fraction <= 1.0:
        raise ValueError(f"touching_fraction must be in [0, 1], got {touching_fraction!r}")
    if not isinstance(blur_sigma, Real) or not blur_sigma >= 0:
        raise ValueError(f"blur_sigma must be a number >= 0, got {blur_sigma!r}")
    if not isinstance(photons, Real) or not photons > 0:
        raise ValueError(f"photons must be a number > 0, got {photons!r}")

    images = np.empty((n, height, width), np.float32)
    labels = np.empty((n, height, width), np.int32)
    for i in range(n):
        rng = np.random.default_rng([int(seed), i])
        labels[i], rim = _draw_objects(rng, height, width, int(num_objects), lo, hi, float(touching_fraction))
        images[i] = _render(rng, labels[i], rim, float(blur_sigma), float(photons))
    return images, labels


def _check_size(size) -> tuple[int, int]:
    sides = (size, size) if isinstance(size, Integral) else tuple(size) if isinstance(size, (tuple, list)) else None
    if (sides is None or len(sides) != 2
            or not all(isinstance(s, Integral) and not isinstance(s, bool) and s >= 16 for s in sides)):
        raise ValueError(f"size must be an int or (H, W) of ints, each >= 16, got {size!r}")
    return int(sides[0]), int(sides[1])


def _check_radius_range(radius_range) -> tuple[float, float]:
    try:
        lo, hi = (float(r) for r in radius_range)
    except (TypeError, ValueError):
        lo = hi = math.nan
    if not 2.0 <= lo <= hi:
        raise ValueError(f"radius_range must be (min, max) with 2 <= min <= max, got {radius_range!r}")
    return lo, hi


def _radius_towards(shape, direction: float) -> float:
    """Radius of the (unperturbed) ellipse along ``direction`` (radians, image coordinates)."""
    _, _, a, b, theta, _ = shape
    c, s = math.cos(direction - theta), math.sin(direction - theta)
    return a * b / math.hypot(b * c, a * s)


def _draw_objects(rng, height, width, count, r_min, r_max, touching_fraction):
    """Instance labels (occlusion in drawing order) and each pixel's normalised radius (0 centre, 1 rim)."""
    labels = np.zeros((height, width), np.int32)
    rim = np.zeros((height, width), np.float32)
    shapes, drawn_area = [], [0]
    for index in range(1, count + 1):
        a = rng.uniform(r_min, r_max)
        b = a / rng.uniform(1.0, 1.6)
        theta = rng.uniform(0, math.pi)
        wobble = (rng.uniform(0, 0.06), rng.uniform(0, 2 * math.pi), rng.uniform(0, 0.04), rng.uniform(0, 2 * math.pi))
        centre = None
        if shapes and rng.random() < touching_fraction:
            for _ in range(5):
                parent = shapes[rng.integers(len(shapes))]
                direction = rng.uniform(0, 2 * math.pi)
                new = (0.0, 0.0, a, b, theta, wobble)
                distance = (_radius_towards(parent, direction) + _radius_towards(new, direction + math.pi)) \
                    * rng.uniform(0.8, 1.0)
                y, x = parent[0] + distance * math.sin(direction), parent[1] + distance * math.cos(direction)
                if 0 <= y < height and 0 <= x < width and labels[int(y), int(x)] == 0:
                    centre = (y, x)
                    break
        if centre is None:
            for _ in range(5):
                centre = (rng.uniform(0, height), rng.uniform(0, width))
                if labels[int(centre[0]), int(centre[1])] == 0:
                    break
        shape = (*centre, a, b, theta, wobble)
        shapes.append(shape)
        drawn_area.append(_rasterize(shape, index, labels, rim))
    labels, kept = _drop_hidden(labels, drawn_area)
    minor_axes = np.array([shape[3] for shape in shapes], np.float32)[kept - 1]
    return labels, _visible_rim(labels, rim, minor_axes)


def _visible_rim(labels, rim, minor_axes):
    """The normalised radius, raised to 1 at every visible edge of an object, cut ones included.

    Drawing leaves an occluded object with interior values where a later object cuts it; a nucleus
    pressed against another thins out towards the contact as it does towards the background, so
    both sides of a contact get a rim. Near a visible edge the radius is 1 - (d - 1/2) / b, d the
    distance to the nearest pixel outside the object and b its semi-minor axis (the drawn radius
    there, where the edge is the ellipse's own)."""
    rim = np.where(labels > 0, rim, 0).astype(np.float32)
    height, width = labels.shape
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        grown = tuple(slice(max(0, s.start - 1), min(n, s.stop + 1)) for s, n in zip(box, (height, width)))
        mine = labels[grown] == index
        # the image edge is not an object edge: edt counts only pixels inside the window as outside
        distance = ndimage.distance_transform_edt(mine)
        edge_rim = np.clip(1 - (distance - 0.5) / minor_axes[index - 1], 0, 1)
        rim[grown][mine] = np.maximum(rim[grown][mine], edge_rim[mine])
    return rim


def _rasterize(shape, index, labels, rim) -> int:
    """Paint one wavy ellipse into ``labels`` (and its normalised radius into ``rim``); returns its area."""
    cy, cx, a, b, theta, (h2, p2, h3, p3) = shape
    reach = a * 1.1 + 1
    y0, y1 = max(0, int(cy - reach)), min(labels.shape[0], int(cy + reach) + 2)
    x0, x1 = max(0, int(cx - reach)), min(labels.shape[1], int(cx + reach) + 2)
    if y0 >= y1 or x0 >= x1:
        return 0
    dy = np.arange(y0, y1, dtype=np.float32)[:, None] - cy
    dx = np.arange(x0, x1, dtype=np.float32)[None, :] - cx
    u = (dx * math.cos(theta) + dy * math.sin(theta)) / a
    v = (-dx * math.sin(theta) + dy * math.cos(theta)) / b
    angle = np.arctan2(v, u)
    radius = np.hypot(u, v) / (1 + h2 * np.cos(2 * angle + p2) + h3 * np.cos(3 * angle + p3))
    inside = radius <= 1
    labels[y0:y1, x0:x1][inside] = index
    rim[y0:y1, x0:x1][inside] = radius[inside]
    return int(inside.sum())


def _drop_hidden(labels, drawn_area):
    """Keep each object's largest 4-connected visible piece if enough of it shows; renumber 1..K."""
    keep = np.zeros(len(drawn_area), np.int32)
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        mine = labels[box] == index
        pieces, count = ndimage.label(mine)
        if count > 1:
            largest = 1 + np.argmax(np.bincount(pieces.ravel())[1:])
            labels[box][mine & (pieces != largest)] = 0
            mine = pieces == largest
        visible = int(mine.sum())
        if visible >= _MIN_VISIBLE_PIXELS and visible >= _MIN_VISIBLE_FRACTION * drawn_area[index]:
            keep[index] = 1
    renumber = np.cumsum(keep, dtype=np.int32) * keep  # dropped objects -> 0, kept ones -> 1..K
    return renumber[labels], np.flatnonzero(keep)


def _smooth_field(rng, height, width, cells: int) -> np.ndarray:
    """A smooth random field with about ``cells`` bumps per side, zero mean, unit-ish amplitude:
    cubic-spline interpolation of a coarse random grid, done separably. einsum, not matmul: a
    multi-threaded BLAS call this small is 100x slower on a machine busy with other work."""
    coarse = rng.normal(size=(cells + 1, cells + 1))
    along_rows = np.einsum("yi,ij->yj", _spline_matrix(cells, height), coarse)
    return np.einsum("yj,xj->yx", along_rows, _spline_matrix(cells, width))


def _spline_matrix(cells: int, length: int) -> np.ndarray:
    """[length, cells + 1]: cubic-spline interpolation of cells + 1 samples at ``length`` even points."""
    positions = [np.linspace(0, cells, length)]
    return np.stack([ndimage.map_coordinates(unit, positions, order=3, mode="nearest")
                     for unit in np.eye(cells + 1)], axis=1)


def _dome(rim: np.ndarray) -> np.ndarray:
    """Relative intensity at normalised radius ``rim``: a nucleus is a flattened ellipsoid seen in an
    optical section, so its signal follows its thickness sqrt(1 - r^2) where that is below
    ``_SECTION`` of the centre's, and is flat (bar a slight central bulge) inside."""
    thickness = np.sqrt(np.clip(1 - rim * rim, 0, None))
    return (1 - 0.2 * rim * rim) * np.minimum(1, thickness / _SECTION)


def _render(rng, labels, rim, blur_sigma, photons) -> np.ndarray:
    height, width = labels.shape
    count = int(labels.max())
    brightness = np.concatenate([[0.0], rng.uniform(0.45, 0.85, count)]).astype(np.float32)
    texture = ndimage.gaussian_filter(rng.normal(size=(height, width)).astype(np.float32), 1.5)
    texture /= texture.std() + 1e-12
    foreground = labels > 0
    nuclei = brightness[labels] * _dome(rim) * (1 + 0.12 * texture)
    background = rng.uniform(0.06, 0.14) + 0.02 * _smooth_field(rng, height, width, 6)
    image = np.where(foreground, nuclei, background)
    illumination = 1 + 0.15 * _smooth_field(rng, height, width, 2)
    image = image * illumination
    if blur_sigma > 0:
        image = ndimage.gaussian_filter(image, blur_sigma)
    if math.isfinite(photons):
        image = rng.poisson(np.clip(image, 0, None) * photons) / photons
    return np.clip(image, 0, 1).astype(np.float32)
