"""Shared by tests/ and benchmarks/: GPU-marked items are skipped where torch sees no CUDA device.

Decided at collection, not when test modules are imported, so nothing touches CUDA on import. torch is
imported there too, not here: tests/conftest.py sets the environment torch is loaded with.
"""
import pytest


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
