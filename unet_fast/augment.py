"""The paper's data augmentation in torch: elastic deformation, shifts, rotations, flips, grey values;
zooms (``RandomZoom``: objects of other sizes); and what another microscope changes in an image
(``RandomImaging``: defocus, uneven illumination, noise).

Every geometric transform is "output pixel p takes the input at a sampling point s(p)", resampled
with one ``F.grid_sample`` call per tensor (one field per sample, any device):

- the image with bicubic interpolation (Keys cubic convolution, a = -0.75, as grid_sample does),
- label maps (integer or bool tensors) with nearest neighbour: never a label value that was not
  there, dtype kept (grid_sample on a float copy while the labels fit a float exactly, |label| <= 2^24
  for float32, else an index gather),
- weight maps (other floating targets) with bilinear interpolation.

Borders are mirrored *without repeating the edge pixel* (... c b | a b c d | c b ...), as the paper's
overlap-tile strategy does: pixel coordinates run from 0 to size - 1 and grid_sample is called with
``align_corners=True, padding_mode="reflection"``, which reflects about the centres of the edge
pixels (scipy.ndimage's mode="mirror"). With align_corners=False it would reflect about the outer
pixel edges and repeat the edge pixel (scipy's mode="reflect").

Elastic deformation (Ronneberger et al. 2015): displacements on a coarse grid x grid lattice drawn
from N(0, sigma^2) pixels, interpolated to every pixel with a cubic *interpolating B-spline* (the
spline passes through the lattice values; scipy.ndimage.map_coordinates(order=3, mode="mirror") and
elasticdeform compute the same field). Lattice point (a, b) sits on pixel
(a * (H - 1) / (gy - 1), b * (W - 1) / (gx - 1)): the first and last lattice points lie on the image
corners, as in elasticdeform. The output is ``out(p) = in(p + d(p))``. The dense field is separable,
``d = Wy @ lattice @ Wx^T`` with tiny (size x grid) weight matrices, so the whole sampling grid
(field + pixel position, normalised) comes out of one small matmul: no per-pixel passes before
grid_sample. Bicubic resampling can overshoot the input's range slightly, as any cubic does.

Shapes: the image is (N, C, H, W) (a batch) or (C, H, W) / (H, W) (one sample). Each target has the
image's batch and spatial size, with or without a channel axis: (N, H, W) or (N, C', H, W) for a
batch, (H, W) or (C', H, W) for one sample. Functions and transforms return the image alone when
called without targets, else the tuple (image, *targets), every tensor in its input's shape.

Randomness: parameters are drawn from ``generator`` (a torch.Generator; the global RNG when None)
on the generator's device, so a CPU generator gives the same augmentation on every device. Only the
noise of ``RandomNoise`` and ``RandomImaging`` is image-sized: pass a generator on the image's device to
draw it there.
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

import torch
import torch.nn.functional as F

from . import geometry

TARGET_MODES = ("nearest", "linear", "cubic")
_GRID_SAMPLE_MODE = {"linear": "bilinear", "cubic": "bicubic"}


# ---------------------------------------------------------------------------------------------
# input checks and shapes

class _Batch:
    """The image and targets as (N, C, H, W) tensors, and how to give each its own shape back."""

    def __init__(self, image, targets, target_modes, interpolated=True, name="image"):
        if not isinstance(image, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(image).__name__}")
        if image.ndim not in (2, 3, 4):
            raise ValueError(f"{name} must be (N, C, H, W), (C, H, W) or (H, W), got shape {tuple(image.shape)}")
        if interpolated and not image.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor (it is interpolated), got {image.dtype}")
        if image.shape[-1] < 1 or image.shape[-2] < 1 or image.numel() == 0:
            raise ValueError(f"{name} must not be empty, got shape {tuple(image.shape)}")
        self.batched = image.ndim == 4
        self.shapes = [image.shape] + [t.shape if isinstance(t, torch.Tensor) else None for t in targets]
        self.dtypes = [image.dtype] + [t.dtype if isinstance(t, torch.Tensor) else None for t in targets]
        image4 = image if self.batched else image.reshape(1, -1, *image.shape[-2:])
        self.n, _, self.h, self.w = image4.shape
        self.device = image.device
        self.tensors = [_signed_view(image4)] + [_signed_view(self._target(i, t)) for i, t in enumerate(targets)]
        self.modes = ["cubic"] + _target_modes(targets, target_modes)

    def _target(self, i, t):
        name = f"targets[{i}]"
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        expected = ("(N, H, W) or (N, C, H, W)" if self.batched else "(H, W) or (C, H, W)")
        lead = t.shape[:-2] if t.ndim >= 2 else None
        ok_rank = t.ndim in ((3, 4) if self.batched else (2, 3))
        if not ok_rank or tuple(t.shape[-2:]) != (self.h, self.w) or (self.batched and lead[0] != self.n):
            raise ValueError(f"{name} must be {expected} with N={self.n}, H={self.h}, W={self.w} "
                             f"like the image, got shape {tuple(t.shape)}")
        if t.device != self.device:
            raise ValueError(f"{name} is on {t.device} but the image is on {self.device}")
        if self.batched:
            return t if t.ndim == 4 else t.unsqueeze(1)
        return t.reshape(1, -1, self.h, self.w)

    def restore(self, tensors):
        out = [t.reshape(shape).view(dtype) if t.dtype != dtype else t.reshape(shape)
               for t, shape, dtype in zip(tensors, self.shapes, self.dtypes)]
        return out[0] if len(out) == 1 else tuple(out)


#: unsigned integer types torch flips, gathers and measures (aminmax) only as the signed type of their width
_SIGNED = {getattr(torch, f"uint{bits}"): getattr(torch, f"int{bits}") for bits in (16, 32, 64)
           if hasattr(torch, f"uint{bits}")}


def _signed_view(t: torch.Tensor) -> torch.Tensor:
    """uint16/32/64 labels (uint16 instance masks are common) as the signed type of their width, the same bits:
    flips, rotations and nearest-neighbour resampling only copy values, so ``restore`` views them back."""
    signed = _SIGNED.get(t.dtype)
    return t if signed is None else t.view(signed)


def _target_modes(targets, target_modes) -> list[str]:
    if target_modes is None:
        return ["linear" if t.is_floating_point() else "nearest" for t in targets]
    if isinstance(target_modes, str):
        target_modes = [target_modes] * len(targets)
    target_modes = list(target_modes)
    if len(target_modes) != len(targets):
        raise ValueError(f"target_modes must give one mode per target ({len(targets)}), got {target_modes!r}")
    for i, (mode, t) in enumerate(zip(target_modes, targets)):
        if mode not in TARGET_MODES:
            raise ValueError(f"target_modes[{i}] must be one of {TARGET_MODES}, got {mode!r}")
        if mode != "nearest" and not t.is_floating_point():
            raise ValueError(f"target_modes[{i}] is {mode!r} but targets[{i}] has dtype {t.dtype}: "
                             f"integer label maps can only be resampled with 'nearest'")
    return target_modes


def _pair(value, name) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) and not isinstance(value, bool) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair):
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    return pair


def _check_generator(generator):
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")


def _draw(shape, generator, kind="normal") -> torch.Tensor:
    """Small random parameter tensors, drawn on the generator's device (CPU by default), float32."""
    _check_generator(generator)
    device = generator.device if generator is not None else "cpu"
    fn = torch.randn if kind == "normal" else torch.rand
    return fn(shape, generator=generator, device=device, dtype=torch.float32)


def _check_range(value, name, low=-math.inf):
    lo, hi = (-value, value) if isinstance(value, (int, float)) else tuple(value)
    if not (low <= lo <= hi):
        raise ValueError(f"{name} must be a number >= 0 or a (low, high) range with {low} <= low <= high, got {value!r}")
    return float(lo), float(hi)


def _uniform(n, value_range, generator):
    lo, hi = value_range
    return lo + (hi - lo) * _draw((n,), generator, kind="uniform")


# ---------------------------------------------------------------------------------------------
# resampling

def _axis_scale(size: int) -> float:
    """Pixel -> normalised coordinate factor for align_corners=True (pixel 0 is -1, size - 1 is +1)."""
    return 2.0 / (size - 1) if size > 1 else 1.0


def _exactly_representable(t: torch.Tensor, dtype: torch.dtype) -> bool:
    """Whether every value of the integer tensor t survives a round trip through the float dtype."""
    if t.dtype in (torch.bool, torch.uint8, torch.int8, torch.int16) or t.numel() == 0:
        return True
    limit = 2 ** 24 if dtype == torch.float32 else 2 ** 53
    low, high = torch.aminmax(t)
    return bool(-limit <= low) and bool(high <= limit)


def _gather_nearest(t: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour lookup by index, for integers a float cannot hold exactly."""
    n, c, h, w = t.shape
    ix = geometry.mirror((grid[..., 0] + 1) / _axis_scale(w), w).round_().long()
    iy = geometry.mirror((grid[..., 1] + 1) / _axis_scale(h), h).round_().long()
    index = (iy * w + ix).reshape(n, 1, h * w).expand(-1, c, -1)
    return t.reshape(n, c, h * w).gather(2, index).reshape(t.shape)


def _resample(batch: _Batch, grid: torch.Tensor):
    """Resample every tensor of ``batch`` at the normalised (x, y) points ``grid`` (N, H, W, 2)."""
    out = []
    for t, mode in zip(batch.tensors, batch.modes):
        if mode == "nearest" and not t.is_floating_point():
            if _exactly_representable(t, grid.dtype):  # one grid_sample beats an index gather
                sampled = F.grid_sample(t.to(grid.dtype), grid, mode="nearest", padding_mode="reflection",
                                        align_corners=True)
                out.append(sampled.to(t.dtype))
            else:
                out.append(_gather_nearest(t, grid))
            continue
        sampled = F.grid_sample(t.to(grid.dtype), grid, mode=_GRID_SAMPLE_MODE.get(mode, mode),
                                padding_mode="reflection", align_corners=True)
        out.append(sampled.to(t.dtype))
    return batch.restore(out)


def _grid_dtype(image: torch.Tensor):
    """float64 images are resampled in float64; everything else in float32 (half types too)."""
    return torch.float64 if image.dtype == torch.float64 else torch.float32


# ---------------------------------------------------------------------------------------------
# elastic deformation

def _cubic_bspline(t: torch.Tensor) -> torch.Tensor:
    t = t.abs()
    return torch.where(t < 1, 2.0 / 3.0 - t ** 2 + t ** 3 / 2,
                       torch.where(t < 2, (2 - t) ** 3 / 6, torch.zeros_like(t)))


@functools.lru_cache(maxsize=64)
def _spline_weights_cpu(size: int, points: int) -> torch.Tensor:
    """(size, points) float64 matrix W with field = W @ lattice: the interpolating cubic B-spline
    through ``points`` lattice values (mirror boundary), lattice spanning pixels 0 .. size - 1."""
    knots = torch.arange(points, dtype=torch.float64)
    where = torch.linspace(0, points - 1, size, dtype=torch.float64) if size > 1 else torch.zeros(1, dtype=torch.float64)
    collocation = torch.zeros(points, points, dtype=torch.float64)
    evaluation = torch.zeros(size, points, dtype=torch.float64)
    for j in range(-2, points + 2):  # coefficients beyond the ends are mirrored copies
        m = geometry.mirror(j, points)
        collocation[:, m] += _cubic_bspline(knots - j)
        evaluation[:, m] += _cubic_bspline(where - j)
    return evaluation @ torch.linalg.inv(collocation)


@functools.lru_cache(maxsize=64)
def _row_weights(size: int, points: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """[spline weights | 1 | normalised row coordinate]: (size, points + 2), see _elastic_grid."""
    coordinate = torch.arange(size, dtype=torch.float64) * _axis_scale(size) - (1.0 if size > 1 else 0.0)
    rows = torch.cat((_spline_weights_cpu(size, points), torch.ones(size, 1, dtype=torch.float64),
                      coordinate[:, None]), dim=1)
    return rows.to(device=device, dtype=dtype)


@functools.lru_cache(maxsize=64)
def _column_weights(size: int, points: int, dtype: torch.dtype, device: torch.device):
    """(spline weights (size, points), normalised column coordinate (size,)) on the device."""
    coordinate = torch.arange(size, dtype=torch.float64) * _axis_scale(size) - (1.0 if size > 1 else 0.0)
    return (_spline_weights_cpu(size, points).to(device=device, dtype=dtype),
            coordinate.to(device=device, dtype=dtype))


def _elastic_grid(lattice: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Normalised grid (N, H, W, 2) of out(p) = in(p + d(p)) in one matmul, no per-pixel passes.

    grid[n, i, (j, c)] = sum_a rows[i, a] * coef[n, a, (j, c)] with rows = [Wy | 1 | y_i] and
    coef = [s_c * L_c @ Wx^T ; base x_j for c = x ; 1 for c = y]: the spline field, the pixel's own
    position and the normalisation all folded into the small factors."""
    n, _, gy, gx = lattice.shape
    rows = _row_weights(h, gy, lattice.dtype, lattice.device)           # (H, gy + 2)
    wx, x_base = _column_weights(w, gx, lattice.dtype, lattice.device)  # (W, gx), (W,)
    scale = torch.tensor([_axis_scale(w), _axis_scale(h)], dtype=lattice.dtype, device=lattice.device)
    field = lattice.flip(1) @ wx.T * scale.view(1, 2, 1, 1)             # (N, 2 = (x, y), gy, W)
    coef = lattice.new_zeros(n, gy + 2, w, 2)
    coef[:, :gy] = field.permute(0, 2, 3, 1)
    coef[:, gy, :, 0] = x_base
    coef[:, gy + 1, :, 1] = 1.0
    return (rows @ coef.reshape(n, gy + 2, 2 * w)).view(n, h, w, 2)


def displacement_field(lattice: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Per-pixel displacements (N, 2, H, W) from a lattice (N, 2, gy, gx), in pixels.

    Component 0 moves along rows (y), component 1 along columns (x). The interpolating cubic
    B-spline with mirror boundary, lattice points spanning the image corners (see the module doc).
    """
    if not isinstance(lattice, torch.Tensor) or lattice.ndim != 4 or lattice.shape[1] != 2:
        got = tuple(lattice.shape) if isinstance(lattice, torch.Tensor) else type(lattice).__name__
        raise ValueError(f"lattice must be a (N, 2, gy, gx) tensor, got {got}")
    if not lattice.is_floating_point():
        raise TypeError(f"lattice must be floating point, got {lattice.dtype}")
    h, w = _pair(tuple(size), "size")
    wy = _spline_weights_cpu(h, lattice.shape[2]).to(device=lattice.device, dtype=lattice.dtype)
    wx = _spline_weights_cpu(w, lattice.shape[3]).to(device=lattice.device, dtype=lattice.dtype)
    return wy @ lattice @ wx.T


def random_displacement(n: int, grid=3, sigma: float = 10.0, generator=None) -> torch.Tensor:
    """A (n, 2, gy, gx) float32 lattice of displacements drawn from N(0, sigma^2) pixels."""
    gy, gx = _pair(grid, "grid")
    if gy < 2 or gx < 2:
        raise ValueError(f"grid must be >= 2 lattice points per axis, got {grid!r}")
    if not (isinstance(sigma, (int, float)) and sigma >= 0 and math.isfinite(sigma)):
        raise ValueError(f"sigma must be a finite number >= 0 (pixels), got {sigma!r}")
    return _draw((n, 2, gy, gx), generator) * float(sigma)


def elastic_deform(image, *targets, grid=3, sigma: float = 10.0, generator=None, target_modes=None,
                   displacement=None, zoom=None):
    """The paper's elastic deformation of ``image`` and its ``targets`` (one field per sample).

    grid: lattice points per axis (int or (gy, gx), >= 2); sigma: standard deviation of the
    lattice displacements in pixels; generator: torch.Generator for the lattice (the global RNG when
    None); target_modes: one of "nearest" / "linear" / "cubic" per target (default: "nearest" for
    integer and bool targets, "linear" for floating ones); displacement: an explicit lattice in pixels,
    (2, gy, gx) for every sample or (N, 2, gy, gx), component 0 along rows; when given, grid, sigma and
    generator are not used; zoom: a magnification about the image centre in the same resampling (a number > 0 or
    one per sample): the image zoomed, then deformed, out(p) = in(c + (p + d(p) - c) / zoom), labels resampled once.
    Returns the image, or (image, *targets), in the input shapes and dtypes.
    """
    batch = _Batch(image, targets, target_modes)
    if displacement is None:
        lattice = random_displacement(batch.n, grid, sigma, generator)
    else:
        if not isinstance(displacement, torch.Tensor):
            raise TypeError(f"displacement must be a torch.Tensor, got {type(displacement).__name__}")
        lattice = displacement if displacement.ndim == 4 else displacement.unsqueeze(0)
        if (lattice.ndim != 4 or lattice.shape[1] != 2 or lattice.shape[0] not in (1, batch.n)
                or min(lattice.shape[2:]) < 2):
            raise ValueError(f"displacement must be (2, gy, gx) or ({batch.n}, 2, gy, gx) with gy, gx >= 2, "
                             f"got shape {tuple(displacement.shape)}")
        if not torch.isfinite(lattice).all():
            raise ValueError("displacement must be finite")
        lattice = lattice.expand(batch.n, -1, -1, -1)
    lattice = lattice.to(device=batch.device, dtype=_grid_dtype(image))
    grid = _elastic_grid(lattice, batch.h, batch.w)
    if zoom is not None:       # normalised coordinates are centred on the image: a zoom divides them
        factor = _zoom_factors(zoom, batch.n)
        grid = grid / factor.to(device=batch.device, dtype=grid.dtype).view(-1, 1, 1, 1)
    return _resample(batch, grid)


# ---------------------------------------------------------------------------------------------
# affine transforms and flips

def _per_sample(value, n, name) -> torch.Tensor:
    """A number or a length-n sequence/tensor as a float64 CPU tensor of n values."""
    v = torch.as_tensor(value, dtype=torch.float64).flatten().cpu()
    if v.numel() == 1:
        v = v.expand(n)
    if v.numel() != n or not torch.isfinite(v).all():
        raise ValueError(f"{name} must be a finite number or {n} finite numbers (one per sample), got {value!r}")
    return v


def _affine(batch: _Batch, matrix: torch.Tensor, offset: torch.Tensor, dtype):
    """Sample at s(p) = c + matrix @ (p - c) + offset for every pixel p, c the image centre.

    matrix (N, 2, 2) and offset (N, 2) act on pixel (y, x) coordinates. The image centre is 0 in
    normalised coordinates, so affine_grid's theta is D matrix D^-1 and D offset, D the scales."""
    scale = torch.tensor([_axis_scale(batch.h), _axis_scale(batch.w)], dtype=torch.float64)
    m = matrix * scale.view(1, 2, 1) / scale.view(1, 1, 2)
    o = offset * scale
    theta = torch.stack((torch.stack((m[:, 1, 1], m[:, 1, 0], o[:, 1]), -1),     # rows and columns
                         torch.stack((m[:, 0, 1], m[:, 0, 0], o[:, 0]), -1)), -2)  # in (x, y) order
    grid = F.affine_grid(theta.to(device=batch.device, dtype=dtype), [batch.n, 1, batch.h, batch.w],
                         align_corners=True)
    return _resample(batch, grid)


def shift(image, *targets, offset, target_modes=None):
    """Move the content by ``offset`` = (dy, dx) pixels (a pair, or (N, 2) for one per sample);
    sub-pixel offsets interpolate, uncovered borders are mirrored."""
    batch = _Batch(image, targets, target_modes)
    off = torch.as_tensor(offset, dtype=torch.float64).cpu()
    if off.shape not in ((2,), (batch.n, 2)) or not torch.isfinite(off).all():
        raise ValueError(f"offset must be finite (dy, dx) or ({batch.n}, 2) pixels, got {offset!r}")
    eye = torch.eye(2, dtype=torch.float64).expand(batch.n, 2, 2)
    return _affine(batch, eye, -off.expand(batch.n, 2), _grid_dtype(image))


def rotate(image, *targets, angle, target_modes=None):
    """Rotate the content counter-clockwise (as displayed, rows downwards) by ``angle`` degrees about
    the image centre: a number, or one per sample. Corners are filled by mirroring."""
    batch = _Batch(image, targets, target_modes)
    rad = torch.deg2rad(_per_sample(angle, batch.n, "angle"))
    cos, sin = torch.cos(rad), torch.sin(rad)
    # output pixel p takes the input at R(-angle) p; in (y, x) with y downwards that is:
    matrix = torch.stack((torch.stack((cos, sin), -1), torch.stack((-sin, cos), -1)), -2)
    return _affine(batch, matrix, torch.zeros(batch.n, 2, dtype=torch.float64), _grid_dtype(image))


def _zoom_factors(value, n, name="zoom") -> torch.Tensor:
    f = _per_sample(value, n, name)
    if not (f > 0).all():
        raise ValueError(f"{name} must be > 0 (1: unchanged), got {value!r}")
    return f


def _log_uniform(n, log_range, generator) -> torch.Tensor:
    """n float64 CPU values drawn log-uniformly (in float64 after the float32 draw: exact at the range's ends)."""
    low, high = log_range
    return torch.exp(low + (high - low) * _draw((n,), generator, kind="uniform").double()).cpu()


def _zoom_range(factors, name) -> tuple[float, float]:
    """(log low, log high) of a (low, high) range of magnifications."""
    if isinstance(factors, (int, float)):
        raise ValueError(f"{name} must be a (low, high) range with 0 < low <= high, got {factors!r}")
    low, high = _check_range(factors, name, low=0.0)
    if not (low > 0 and math.isfinite(high)):
        raise ValueError(f"{name} must be a (low, high) range with 0 < low <= high, got {factors!r}")
    return math.log(low), math.log(high)


def zoom(image, *targets, factor, target_modes=None):
    """Magnify the content by ``factor`` about the image centre (a number > 0, or one per sample):
    objects grow by ``factor`` (< 1 shrinks them); the shape is kept and borders that a factor < 1
    uncovers are mirrored."""
    batch = _Batch(image, targets, target_modes)
    f = _zoom_factors(factor, batch.n, "factor")
    matrix = torch.eye(2, dtype=torch.float64) / f.view(-1, 1, 1)   # output p takes the input at c + (p - c) / f
    return _affine(batch, matrix, torch.zeros(batch.n, 2, dtype=torch.float64), _grid_dtype(image))


def flip(image, *targets, vertical=False, horizontal=False):
    """Mirror rows (vertical) and/or columns (horizontal); bools, or one bool per sample."""
    batch = _Batch(image, targets, None, interpolated=False)
    out = batch.tensors
    for flag, dim, name in ((vertical, 2, "vertical"), (horizontal, 3, "horizontal")):
        mask = torch.as_tensor(flag).flatten()
        if mask.dtype != torch.bool or mask.numel() not in (1, batch.n):
            raise ValueError(f"{name} must be a bool or {batch.n} bools (one per sample), got {flag!r}")
        if mask.all():
            out = [t.flip(dim) for t in out]
        elif mask.any():
            keep = mask.to(batch.device).view(-1, 1, 1, 1)
            out = [torch.where(keep, t.flip(dim), t) for t in out]
    return batch.restore(out)


# ---------------------------------------------------------------------------------------------
# grey values

def adjust_grey_values(image, gamma=1.0, contrast=1.0, brightness=0.0):
    """Grey-value change of the image (no targets: labels do not change).

    gamma: x -> lo + (hi - lo) * ((x - lo) / (hi - lo)) ** gamma with lo, hi the sample's min and max
    (keeps the range); contrast: x -> mean + contrast * (x - mean); brightness: x -> x + brightness.
    Each a number or one per sample, applied in that order."""
    batch = _Batch(image, (), None)
    x = batch.tensors[0]
    dtype = _grid_dtype(image)
    params = [_per_sample(v, batch.n, name).to(device=batch.device, dtype=dtype).view(-1, 1, 1, 1)
              for v, name in ((gamma, "gamma"), (contrast, "contrast"), (brightness, "brightness"))]
    g, c, b = params
    if (g <= 0).any():
        raise ValueError(f"gamma must be > 0, got {gamma!r}")
    y = x.to(dtype)
    flat = y.flatten(1)
    lo = flat.amin(1).view(-1, 1, 1, 1)
    span = (flat.amax(1).view(-1, 1, 1, 1) - lo).clamp_min(torch.finfo(dtype).tiny)
    y = lo + span * ((y - lo) / span).clamp(0, 1) ** g
    mean = y.flatten(1).mean(1).view(-1, 1, 1, 1)
    y = mean + c * (y - mean) + b
    return batch.restore([y.to(image.dtype)])


def _check_amount(value, name) -> float:
    """A finite number >= 0 (a standard deviation, an amplitude), as a float."""
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < math.inf):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def add_noise(image, std: float = 0.05, generator=None):
    """Add Gaussian noise N(0, std^2) to the image (std: a number or one per sample), drawn on the
    generator's device (the image's device with the global RNG when generator is None)."""
    batch = _Batch(image, (), None)
    if isinstance(std, (int, float)):
        _check_amount(std, "std")
    else:
        std = _per_sample(std, batch.n, "std")
        if (std < 0).any():
            raise ValueError(f"std must be >= 0, got {std.tolist()!r}")
    _check_generator(generator)
    device = generator.device if generator is not None else batch.device
    if isinstance(std, torch.Tensor):
        std = std.to(device=device, dtype=torch.float32).view(-1, 1, 1, 1)
    x = batch.tensors[0]
    noise = torch.randn(x.shape, generator=generator, device=device, dtype=torch.float32)
    return batch.restore([x + (std * noise).to(device=batch.device, dtype=x.dtype)])


# imaging conditions: defocus and uneven illumination (noise: add_noise, a std per sample)

def gaussian_blur(image, sigma):
    """Blur each sample with a Gaussian of standard deviation ``sigma`` px (a number or one per sample; 0
    leaves it unchanged), its edges reflected (no targets: the labels stay sharp, as a defocused image of
    the same cells would be labelled)."""
    batch = _Batch(image, (), None)
    sigmas = _per_sample(sigma, batch.n, "sigma")
    if (sigmas < 0).any():
        raise ValueError(f"sigma must be >= 0, got {sigma!r}")
    x = batch.tensors[0]
    dtype = _grid_dtype(image)
    out = []
    for sample, s in zip(x.to(dtype).split(1), sigmas.tolist()):
        if s == 0:
            out.append(sample)
            continue
        c = sample.shape[1]
        for axis, size in ((3, batch.w), (2, batch.h)):
            # 3 sigma a side (as scipy.ndimage.gaussian_filter), no wider than reflection allows on this axis
            radius = min(int(3 * s + 0.5), size - 1)
            if radius < 1:
                continue
            t = torch.arange(-radius, radius + 1, dtype=torch.float64)
            kernel = torch.exp(-0.5 * (t / s) ** 2)
            kernel = (kernel / kernel.sum()).to(device=batch.device, dtype=dtype)
            shape = (c, 1, 1, -1) if axis == 3 else (c, 1, -1, 1)
            pad = (radius, radius, 0, 0) if axis == 3 else (0, 0, radius, radius)
            sample = F.conv2d(F.pad(sample, pad, mode="reflect"), kernel.view(1, 1, *shape[2:]).expand(*shape),
                              groups=c)
        out.append(sample)
    return batch.restore([torch.cat(out).to(image.dtype)])


def illuminate(image, amplitude, angle):
    """Add uneven illumination: a linear ramp of slope ``amplitude`` per image width (image units; a number
    or one per sample) in the direction ``angle`` (radians, 0 = along the columns to the right; a number or
    one per sample), zero at the centre: from -amplitude/2 to +amplitude/2 along an axis, up to sqrt(2) times
    that span along a diagonal of a square sample."""
    batch = _Batch(image, (), None)
    a = _per_sample(amplitude, batch.n, "amplitude")
    theta = _per_sample(angle, batch.n, "angle")
    dtype = _grid_dtype(image)
    yy = torch.linspace(-0.5, 0.5, batch.h, dtype=torch.float64).view(1, -1, 1)
    xx = torch.linspace(-0.5, 0.5, batch.w, dtype=torch.float64).view(1, 1, -1)
    ramp = a.view(-1, 1, 1) * (torch.cos(theta).view(-1, 1, 1) * xx + torch.sin(theta).view(-1, 1, 1) * yy)
    x = batch.tensors[0].to(dtype) + ramp.unsqueeze(1).to(device=batch.device, dtype=dtype)
    return batch.restore([x.to(image.dtype)])


# ---------------------------------------------------------------------------------------------
# random transforms: callables (image, *targets, generator=None) -> image or (image, *targets)

class RandomElasticDeform:
    """``elastic_deform`` with a new random lattice per sample at every call; with ``zoom`` = (low, high)
    also a magnification drawn log-uniformly per sample (as ``RandomZoom``) in the same resampling."""

    def __init__(self, grid=3, sigma: float = 10.0, target_modes=None, zoom=(1.0, 1.0)):
        random_displacement(1, grid, sigma)  # validates grid and sigma now, not at the first call
        self.grid, self.sigma, self.target_modes = grid, sigma, target_modes
        self.zoom = _zoom_range(zoom, "zoom")

    def __call__(self, image, *targets, generator=None):
        n = _Batch(image, targets, self.target_modes).n
        lattice = random_displacement(n, self.grid, self.sigma, generator)
        factor = None if self.zoom == (0.0, 0.0) else _log_uniform(n, self.zoom, generator)
        return elastic_deform(image, *targets, target_modes=self.target_modes, displacement=lattice, zoom=factor)


class RandomShift:
    """Shift by dy, dx drawn uniformly from [-max_shift, max_shift] pixels (per sample)."""

    def __init__(self, max_shift: float, target_modes=None):
        self.range = _check_range(max_shift, "max_shift")
        self.target_modes = target_modes

    def __call__(self, image, *targets, generator=None):
        n = _Batch(image, targets, self.target_modes).n
        offset = torch.stack((_uniform(n, self.range, generator), _uniform(n, self.range, generator)), -1)
        return shift(image, *targets, offset=offset.cpu(), target_modes=self.target_modes)


class RandomRotation:
    """Rotate by an angle drawn uniformly from ``degrees`` (a number d means [-d, d]; default any angle)."""

    def __init__(self, degrees=180.0, target_modes=None):
        self.range = _check_range(degrees, "degrees")
        self.target_modes = target_modes

    def __call__(self, image, *targets, generator=None):
        n = _Batch(image, targets, self.target_modes).n
        angle = _uniform(n, self.range, generator).cpu()
        return rotate(image, *targets, angle=angle, target_modes=self.target_modes)


class RandomZoom:
    """Magnify by a factor drawn log-uniformly from ``factors`` = (low, high) per sample (``zoom``): the
    same objects at other sizes, as another magnification or cell line shows them."""

    def __init__(self, factors=(0.8, 1.25), target_modes=None):
        self.range, self.target_modes = _zoom_range(factors, "factors"), target_modes

    def __call__(self, image, *targets, generator=None):
        n = _Batch(image, targets, self.target_modes).n
        return zoom(image, *targets, factor=_log_uniform(n, self.range, generator), target_modes=self.target_modes)


class RandomRot90:
    """Rotate by k x 90 degrees, k drawn uniformly from 0..3 per call (the same k for every sample of a
    batch): exact, no interpolation. Non-square inputs turn only by 0 or 180 degrees, keeping their shape."""

    def __call__(self, image, *targets, generator=None):
        batch = _Batch(image, targets, None, interpolated=False)
        k = int(_draw((1,), generator, "uniform").cpu() * 4) % 4
        if batch.h != batch.w:
            k = 2 * (k % 2)
        return batch.restore([torch.rot90(t, k, dims=(-2, -1)) for t in batch.tensors])


class RandomFlip:
    """Flip rows and/or columns, each with probability p, independently per sample."""

    def __init__(self, vertical=True, horizontal=True, p: float = 0.5):
        if not 0 <= p <= 1:
            raise ValueError(f"p must be a probability in [0, 1], got {p!r}")
        self.vertical, self.horizontal, self.p = bool(vertical), bool(horizontal), p

    def __call__(self, image, *targets, generator=None):
        n = _Batch(image, targets, None, interpolated=False).n
        v = (_draw((n,), generator, "uniform") < self.p).cpu() & self.vertical
        h = (_draw((n,), generator, "uniform") < self.p).cpu() & self.horizontal
        return flip(image, *targets, vertical=v, horizontal=h)


class RandomGreyValue:
    """``adjust_grey_values`` with gamma, contrast and brightness drawn uniformly from their ranges
    (ranges are (low, high); None keeps that quantity unchanged). Targets pass through unchanged."""

    def __init__(self, gamma=(0.7, 1.4), contrast=(0.8, 1.2), brightness=(-0.1, 0.1)):
        self.gamma = None if gamma is None else _check_range(gamma, "gamma", low=1e-6)
        self.contrast = None if contrast is None else _check_range(contrast, "contrast", low=0.0)
        self.brightness = None if brightness is None else _check_range(brightness, "brightness")

    def __call__(self, image, *targets, generator=None):
        n = _Batch(image, targets, None).n
        draw = (lambda r, default: default if r is None else _uniform(n, r, generator).cpu())
        out = adjust_grey_values(image, draw(self.gamma, 1.0), draw(self.contrast, 1.0),
                                 draw(self.brightness, 0.0))
        return (out, *targets) if targets else out


class RandomNoise:
    """Add Gaussian noise with standard deviation ``std``. Targets pass through unchanged."""

    def __init__(self, std: float = 0.05):
        self.std = _check_amount(std, "std")

    def __call__(self, image, *targets, generator=None):
        _Batch(image, targets, None)
        out = add_noise(image, self.std, generator)
        return (out, *targets) if targets else out


class RandomImaging:
    """What another microscope or another day changes in an image, each applied independently to a random
    fraction ``p`` of the samples: a Gaussian blur of sigma drawn from ``blur`` (px: defocus), a linear
    illumination ramp of amplitude drawn from 0 to ``illumination`` in a random direction, and Gaussian
    noise of standard deviation drawn from 0 to ``noise`` (both in the image's units: the normalised
    inputs' range is about 1). Targets pass through unchanged.

    Models trained without it lose much of their accuracy on noisier, blurred or unevenly lit images of
    the same cells (benchmarks/results/2026-11-26-recipe-experiments.md, session 24)."""

    # A recipe's imaging=True means these defaults, and model files record only that bool: changing them
    # needs a recipe field of their own (a resumed run must train with the same augmentation).
    def __init__(self, p: float = 0.2, blur=(0.5, 1.5), illumination: float = 0.5, noise: float = 0.1):
        if not (isinstance(p, (int, float)) and 0 <= p <= 1):
            raise ValueError(f"p must be a probability in [0, 1], got {p!r}")
        self.p = float(p)
        if isinstance(blur, (int, float)):
            raise ValueError(f"blur must be a (low, high) range of sigmas in px with 0 <= low <= high, got {blur!r}")
        self.blur = _check_range(blur, "blur", low=0.0)
        self.illumination, self.noise = _check_amount(illumination, "illumination"), _check_amount(noise, "noise")

    def __call__(self, image, *targets, generator=None):
        n = _Batch(image, targets, None).n
        chosen = lambda: (_draw((n,), generator, kind="uniform") < self.p).double()  # noqa: E731
        out = image
        blurred = chosen()
        if blurred.any():
            out = gaussian_blur(out, blurred * _uniform(n, self.blur, generator).double())
        lit = chosen()
        if lit.any():
            out = illuminate(out, lit * _uniform(n, (0.0, self.illumination), generator).double(),
                             _uniform(n, (0.0, 2 * math.pi), generator).double())
        noisy = chosen()
        if noisy.any():
            out = add_noise(out, noisy * _uniform(n, (0.0, self.noise), generator).double(), generator)
        return (out, *targets) if targets else out


class Compose:
    """Apply transforms in order, passing the same generator to each."""

    def __init__(self, transforms):
        self.transforms = list(transforms)
        for i, t in enumerate(self.transforms):
            if not callable(t):
                raise TypeError(f"transforms[{i}] must be callable, got {type(t).__name__}")

    def __call__(self, image, *targets, generator=None):
        for transform in self.transforms:
            out = transform(image, *targets, generator=generator)
            image, targets = (out[0], tuple(out[1:])) if targets else (out, ())
        return (image, *targets) if targets else image
