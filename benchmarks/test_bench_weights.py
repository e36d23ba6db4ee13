"""The paper's weight map on a 512x512 image with about 120 touching nuclei, one run, side by side:

- unet_fast: unet_fast.weights.unet_weight_map (a distance transform per object inside its bounding
  box grown by the border term's reach, objects with no neighbour in reach skipped);
- naive: one full-image distance transform per object (tests/weight_map_oracle.py, the tests' oracle).

The labels are separated first (separate_touching), as in training. Same result: tests/test_weights.py.
"""
import numpy as np
import pytest
from weight_map_oracle import unet_weight_map_naive  # tests/ is on pytest's pythonpath (pyproject.toml)

from unet_fast.synthetic import synthetic_nuclei
from unet_fast.weights import separate_touching, unet_weight_map

IMPLEMENTATIONS = {"unet_fast": unet_weight_map, "naive": unet_weight_map_naive}


@pytest.fixture(scope="module")
def separated_nuclei():
    _, labels = synthetic_nuclei(1, 512, seed=0, num_objects=120)
    return separate_touching(labels[0], return_instances=True)[1]


@pytest.mark.parametrize("impl", list(IMPLEMENTATIONS))
def test_weight_map_512(timed, benchmark, separated_nuclei, impl):
    benchmark.group = "unet_weight_map 512x512, ~120 touching nuclei, w0=10 sigma=5"
    benchmark.extra_info.update(objects=len(np.unique(separated_nuclei)) - 1)
    timed(IMPLEMENTATIONS[impl], separated_nuclei, rounds=30 if impl == "unet_fast" else 3)
