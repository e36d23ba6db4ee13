"""The one tolerance table of the test suite: every allowed numerical difference, named, with why."""
import torch

# A result against an exact (or float64) oracle of the same computation, by the result's dtype.
TOLERANCES = {
    torch.float64: (1e-10, 1e-12),
    torch.float32: (1e-4, 1e-5),
    torch.float16: (1e-2, 1e-3),
    torch.bfloat16: (2e-2, 1e-2),
}
# float32 results of one formula evaluated in another order (NumPy against torch, cached against fresh).
REORDERED_FP32 = dict(rtol=1e-6, atol=0.0)
# fp32 weight gradients of a whole network: sums over every pixel in another order (split-K partial
# sums against cuDNN's), judged against the gradient's own scale: ||ours - theirs|| / ||theirs||. An
# H200 put single elements 1.3e-5 off (absolute) where the elementwise fp32 tolerance allows 1e-5.
FP32_SUMMED_GRADIENT = 1e-5
# The low-precision rule (flash-attention's): error against float64 at most about twice that of plain
# PyTorch in the same dtype; this absolute slack covers both errors being at the level of rounding.
LOW_PRECISION_SLACK = 1e-6
# A bf16-autocast network output against the fp32 one: twenty-odd layers of bf16 rounding.
BF16_NETWORK = dict(rtol=2e-2, atol=0.05)
# bf16 tiled inference against fp32: a share of the largest |logit|, plus an absolute floor.
BF16_TILED = dict(of_max=0.05, atol=0.02)
# A sample standard deviation (thousands of draws) against the one drawn from, relative.
SAMPLE_STD = 0.12
# Percentiles of a strided subsample against the exact ones.
SUBSAMPLED_PERCENTILE = dict(rtol=0.02)
# Elastic deformation: share of nearest-neighbour labels that fp32 sampling points may flip (a pixel
# rounded to the other side of a half-way point); Keys cubic against elasticdeform's cubic B-spline,
# as a share of the value range; a GPU against the CPU (other fp32 rounding in grid_sample).
ELASTIC_FP32_LABEL_MISMATCH = 1e-2
KEYS_VS_BSPLINE = 0.01
GPU_RESAMPLING = dict(rtol=1e-4, atol=1e-4)
GPU_LABEL_MISMATCH = 1e-3
# The windowed weight map against the naive full-image one, absolute.
WEIGHT_MAP_AGREEMENT = 1e-4


def assert_close(actual, expected, dtype=None, msg=None, **overrides):
    """torch.testing.assert_close with the table's tolerance for ``dtype`` (default: actual's); ``msg``
    names what is compared in the failure; ``equal_nan=True``: NaN equals NaN (at the same positions)."""
    rtol, atol = TOLERANCES[dtype or actual.dtype]
    torch.testing.assert_close(actual, expected, rtol=overrides.get("rtol", rtol), atol=overrides.get("atol", atol),
                               equal_nan=overrides.get("equal_nan", False), check_dtype=False, check_device=False,
                               msg=None if msg is None else (lambda default: f"{msg}: {default}"))


def relative_error(actual, expected):
    """||actual - expected|| / ||expected|| in float64."""
    a, e = actual.detach().double().cpu(), expected.detach().double().cpu()
    return ((a - e).norm() / e.norm().clamp_min(1e-30)).item()


def assert_within_twice_plain_error(actual, plain, exact, msg=""):
    """The low-precision rule: ``actual``'s error against ``exact`` at most about twice ``plain``'s
    (plain PyTorch in the same dtype)."""
    ours, theirs = relative_error(actual, exact), relative_error(plain, exact)
    assert ours <= 2 * theirs + LOW_PRECISION_SLACK, f"{msg}: relative error {ours:.3g}, plain PyTorch's {theirs:.3g}"
