"""Sizes of a U-Net, derived by walking the network rather than from tables, and the two
operations on positions every part of the package shares: the centre crop (copy and crop) and
mirroring at a border (overlap-tile extrapolation).

A level of the contracting path is two 3x3 convolutions (each removes 2 pixels when
unpadded) and a 2x2 max-pool (which needs an even size); the expansive path doubles
the size with a 2x2 up-convolution and removes 4 with two convolutions. ``depth``
counts resolution levels: the paper's network has depth 5 (4 pools, 4 up-convs).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

PADDINGS = ("valid", "same")
#: the deepest network anything here describes: at depth 16 the smallest legal input is 393,212 px a side
MAX_DEPTH = 16


def _check_depth(depth: int) -> None:
    if not isinstance(depth, int) or isinstance(depth, bool) or depth < 1:
        raise ValueError(f"depth must be an integer >= 1, got {depth!r}")
    if depth > MAX_DEPTH:
        raise ValueError(f"depth must be at most {MAX_DEPTH} (unet_fast.geometry.MAX_DEPTH: the smallest legal "
                         f"input would already be {_smallest_legal(MAX_DEPTH, 'valid'):,} px a side), got {depth}")


def _check_padding(padding: str) -> None:
    if padding not in PADDINGS:
        raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")


def _conv_loss(padding: str) -> int:
    """Pixels removed by one 3x3 convolution."""
    return 2 if padding == "valid" else 0


@dataclass(frozen=True)
class SizeTrace:
    """Every spatial size one input size produces, or why it is illegal."""

    input_size: int
    skip_sizes: tuple[int, ...]      # encoder level outputs (before pooling), top first
    decoder_sizes: tuple[int, ...]   # decoder level outputs, deepest first
    output_size: int | None
    problem: str | None              # None when the size is legal


def trace_sizes(input_size: int, depth: int = 5, padding: str = "valid") -> SizeTrace:
    """Follow one spatial dimension through the network."""
    _check_depth(depth)
    _check_padding(padding)
    loss = 2 * _conv_loss(padding)
    size = input_size
    skips: list[int] = []
    decoded: list[int] = []

    def fail(msg: str) -> SizeTrace:
        return SizeTrace(input_size, tuple(skips), tuple(decoded), None, msg)

    if size < 1:
        return fail("the size must be positive")
    for level in range(depth - 1):
        size -= loss
        if size < 1:
            return fail(f"nothing is left after the convolutions of level {level + 1}")
        if size % 2:
            return fail(f"level {level + 1} would max-pool an odd size ({size})")
        skips.append(size)
        size //= 2
    size -= loss
    if size < 1:
        return fail("nothing is left after the bottleneck convolutions")
    for level, skip in enumerate(reversed(skips)):
        size = 2 * size - loss
        if size < 1:
            return fail(f"nothing is left after the convolutions of decoder level {level + 1}")
        if size > skip:  # cannot happen for these layers, but never crop to a larger size
            return fail(f"decoder level {level + 1} is larger than its skip connection")
        decoded.append(size)
    return SizeTrace(input_size, tuple(skips), tuple(decoded), size, None)


def is_valid_input_size(n: int, depth: int = 5, padding: str = "valid") -> bool:
    """True when an input of n pixels (along one axis) passes through the network."""
    return trace_sizes(n, depth, padding).problem is None


def output_size(input_size: int, depth: int = 5, padding: str = "valid") -> int:
    """Output size for a legal input size; ValueError naming the nearest legal sizes otherwise."""
    trace = trace_sizes(input_size, depth, padding)
    if trace.problem is not None:
        raise ValueError(size_error_message(input_size, depth, padding, trace.problem))
    return trace.output_size


def size_step(depth: int = 5) -> int:
    """Legal sizes are spaced by this many pixels (one pixel at the bottom level)."""
    _check_depth(depth)
    return 2 ** (depth - 1)


def min_input_size(depth: int = 5, padding: str = "valid") -> int:
    """Smallest legal input size, in closed form (see ``_smallest_legal``)."""
    _check_depth(depth)        # before the cache: only exact ints and known paddings become keys
    _check_padding(padding)
    return _smallest_legal(depth, padding)


@functools.lru_cache(maxsize=None)     # the tile planner asks for it hundreds of times per plan
def _smallest_legal(depth: int, padding: str) -> int:
    """The input of the smallest bottleneck output b whose decoder never vanishes.

    Legal inputs and bottleneck outputs correspond one to one (each encoder level maps s to
    (s - loss) / 2 and back as s = 2 s' + loss), and the input grows with b, so the smallest
    input is the smallest working b mapped back through the encoder. For b >= loss the decoder
    (s -> 2 s - loss) never shrinks, so some b <= loss + 1 works: at most a few O(depth) walks.
    """
    loss = 2 * _conv_loss(padding)
    for bottleneck in range(1, loss + 2):
        n = bottleneck + loss
        for _ in range(depth - 1):
            n = 2 * n + loss
        if trace_sizes(n, depth, padding).problem is None:
            return n
    raise AssertionError(f"no legal input size for depth {depth}, padding {padding!r}")  # unreachable


def valid_input_sizes(depth: int = 5, max_size: int = 1024, padding: str = "valid") -> list[int]:
    """All legal input sizes up to and including max_size, smallest first."""
    start = min_input_size(depth, padding)
    return list(range(start, max_size + 1, size_step(depth)))


def nearest_valid_input_sizes(n: int, depth: int = 5, padding: str = "valid") -> tuple[int | None, int]:
    """The legal sizes just below (None if there is none) and just above n (n itself if legal)."""
    start = min_input_size(depth, padding)
    step = size_step(depth)
    if n <= start:
        return (None if n < start else start), start
    k, rem = divmod(n - start, step)
    below = start + k * step
    above = below if rem == 0 else below + step
    return below, above


def input_size_for(output: int, depth: int = 5, padding: str = "valid") -> int:
    """Smallest legal input size whose output is at least ``output`` pixels."""
    if isinstance(output, bool) or not isinstance(output, int) or output < 1:
        raise ValueError(f"output must be an integer >= 1, got {output!r}")
    # legal sizes keep a fixed context: output = input - 2 * context
    return nearest_valid_input_sizes(output + 2 * context(depth, padding), depth, padding)[1]


def context(depth: int = 5, padding: str = "valid") -> int:
    """Pixels of input consumed on each side of the output (92 for the paper's network)."""
    n = min_input_size(depth, padding)
    return (n - output_size(n, depth, padding)) // 2


def crop_offset(source_size: int, target_size: int) -> int:
    """Offset of a centre crop of target_size out of source_size (copy and crop)."""
    if target_size > source_size:
        raise ValueError(f"cannot crop {source_size} pixels to a larger size {target_size}")
    return (source_size - target_size) // 2


def size_error_message(n: int, depth: int, padding: str, problem: str, tile: bool = False) -> str:
    """Why ``n`` px is no legal input, and what to do: for an image, pad or crop it or tile it; for a ``tile``
    size (tiles need not fit the image), take a legal size."""
    below, above = nearest_valid_input_sizes(n, depth, padding)
    what = "tile size" if tile else "input size"
    if below is None:
        return (f"{what} {n} is too small for a U-Net of depth {depth} with {padding!r} padding "
                f"({problem}); the smallest legal size is {above}. " + (
                    "Give a legal tile size, or none to have one chosen." if tile else
                    "Pad the image, or use unet_fast.inference.predict_tiled, which mirrors the border as needed."))
    return (
        f"{what} {n} is not legal for a U-Net of depth {depth} with {padding!r} padding "
        f"({problem}); the nearest legal sizes are {below} or {above}. "
        f"Legal sizes are spaced by {size_step(depth)} pixels; " + (
            "give one of them (tiles need not fit the image), or no tile size to have one chosen." if tile else
            "pad or crop the image, or use unet_fast.inference.predict_tiled for any size.")
    )


def center_crop(x, size):
    """The centre ``size`` = (h, w) window of x's last two dimensions (a view, no copy): copy and crop."""
    h, w = size
    top, left = crop_offset(x.shape[-2], h), crop_offset(x.shape[-1], w)
    return x[..., top:top + h, left:left + w]


def zero_outside_center(x, size) -> None:
    """Zero x's last two dimensions outside their centre ``size`` window, in place: four strips, for a
    gradient whose window is written next (the decoder's read of an encoder map, about half to three
    quarters of it in the paper's network), so the window is not zeroed only to be overwritten."""
    h, w = size
    top, left = crop_offset(x.shape[-2], h), crop_offset(x.shape[-1], w)
    x[..., :top, :].zero_()
    x[..., top + h:, :].zero_()
    x[..., top:top + h, :left].zero_()
    x[..., top:top + h, left + w:].zero_()


def mirror(positions, length: int):
    """Positions (numpy or torch, integer or fractional) folded into [0, length - 1] by reflection
    about the end pixels without repeating them (numpy's "reflect"; the paper's overlap-tile
    extrapolation), periodic for positions further out than the axis is long:
    ... 2 1 | 0 1 2 ... L-1 | L-2 ...
    """
    if length == 1:
        return positions * 0
    period = 2 * (length - 1)
    folded = positions % period  # Python's and torch's % take the sign of the divisor: never negative
    return folded + (folded > length - 1) * (period - 2 * folded)


def mirror_indices(start: int, stop: int, length: int) -> np.ndarray:
    """Indices of positions start..stop-1 in an axis of ``length`` mirrored at both ends (see ``mirror``)."""
    return mirror(np.arange(start, stop), length)


@dataclass(frozen=True)
class ConvLayer:
    """One 3x3 convolution of the network at a given input size: what a kernel or a benchmark sees."""

    name: str            # "enc{level}.conv{1,2}" or "dec{level}.conv{1,2}" (level 0 = full resolution)
    in_channels: int     # channels of x (for a decoder's first conv: the up-convolution's output)
    out_channels: int
    size: int            # x's height and width
    skip_channels: int = 0   # decoder's first conv: the skip connection read beside x (copy and crop)
    skip_size: int = 0

    @property
    def output_size(self) -> int:
        return self.size - 2

    def flop(self, batch: int = 1) -> int:
        """Multiply-adds x 2 of the forward convolution (the backward costs twice this)."""
        return 2 * batch * self.output_size ** 2 * self.out_channels * (self.in_channels + self.skip_channels) * 9


def conv_layers(input_size: int, depth: int = 5, base_channels: int = 64, in_channels: int = 1) -> list[ConvLayer]:
    """The 3x3 convolutions of a valid-padding U-Net for a square input of ``input_size``, in forward order."""
    trace = trace_sizes(input_size, depth, "valid")
    if trace.problem is not None:
        raise ValueError(size_error_message(input_size, depth, "valid", trace.problem))
    widths = [base_channels * 2 ** level for level in range(depth)]
    layers, channels, size = [], in_channels, input_size
    for level, width in enumerate(widths):
        layers += [ConvLayer(f"enc{level}.conv1", channels, width, size),
                   ConvLayer(f"enc{level}.conv2", width, width, size - 2)]
        channels = width
        size = trace.skip_sizes[level] // 2 if level < depth - 1 else size - 4
    for level in reversed(range(depth - 1)):
        up = 2 * size
        layers += [ConvLayer(f"dec{level}.conv1", widths[level], widths[level], up, widths[level],
                             trace.skip_sizes[level]),
                   ConvLayer(f"dec{level}.conv2", widths[level], widths[level], up - 2)]
        size = up - 4
    return layers
