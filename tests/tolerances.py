"""The one tolerance table of the test suite: dtype -> (rtol, atol)."""
import torch

TOLERANCES = {
    torch.float64: (1e-10, 1e-12),
    torch.float32: (1e-4, 1e-5),
    torch.float16: (1e-2, 1e-3),
    torch.bfloat16: (2e-2, 1e-2),
}


def assert_close(actual, expected, dtype=None, **overrides):
    """torch.testing.assert_close with the table's tolerance for ``dtype`` (default: actual's)."""
    rtol, atol = TOLERANCES[dtype or actual.dtype]
    torch.testing.assert_close(actual, expected, rtol=overrides.get("rtol", rtol),
                               atol=overrides.get("atol", atol), check_dtype=False, msg=overrides.get("msg"))


def relative_error(actual, expected):
    """||actual - expected|| / ||expected|| in float64."""
    a, e = actual.double(), expected.double()
    return ((a - e).norm() / e.norm().clamp_min(1e-30)).item()
