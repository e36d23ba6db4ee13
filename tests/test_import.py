"""What importing the package costs: torch._dynamo (a second or more to import) stays out of every
command-line start that does not compile or train (training imports it through torch.optim), triton
(half a second) out of every process that launches no Triton kernel, and scipy (a third of a second) out of
the package's import, the command line's start and the segment command's."""
import json
import sys

import pytest
import torch

import ahead
from unet_fast.ops.triton.conv3x3 import mark_constant_for_dynamo

SEGMENTING_MODULES = ["unet_fast", "unet_fast.cli", "unet_fast.segment", "unet_fast.evaluation",
                      "unet_fast.inference"]


_IMPORTS = "; ".join(f"import {name}" for name in SEGMENTING_MODULES)
# A process of its own, started ahead, beside the suite (tests/ahead.py), in the suite's environment
# (TRITON_INTERPRET=1 where there is no GPU): what each step has imported, as JSON.
_STEPS = f"""
import json, sys
def loaded(prefix):
    return sorted(m for m in sys.modules if m.split(".")[0] == prefix)
import torch, unet_fast, unet_fast.cli, unet_fast.segment, unet_fast.inference
unet_fast.cli.build_parser()
seen = {{"scipy after the package, the command line's parser and segment": loaded("scipy")}}
{_IMPORTS}
seen["torch._dynamo after the segmenting modules"] = [m for m in loaded("torch") if m.startswith("torch._dynamo")]
unet_fast.UNet(depth=2, base_channels=4)(torch.zeros(1, 1, 44, 44))
seen["triton after a forward on the CPU"] = loaded("triton")
print(json.dumps(seen))
"""
IMPORTS_ALONE = ahead.Command("imports-alone", lambda folder: ([sys.executable, "-c", _STEPS], {}, None), timeout=120)


def _imported(step: str) -> list[str]:
    run = IMPORTS_ALONE.result().done
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)[step]


@IMPORTS_ALONE.mark
def test_importing_the_package_and_segmenting_leaves_dynamo_out():
    assert _imported("torch._dynamo after the segmenting modules") == [], "torch._dynamo imported"


@IMPORTS_ALONE.mark
def test_importing_the_package_and_a_cpu_forward_leave_triton_out():
    """The interpreter is there, but nothing asked for a Triton kernel."""
    assert _imported("triton after a forward on the CPU") == [], "triton imported"


@IMPORTS_ALONE.mark
def test_importing_the_package_and_the_segment_command_leaves_scipy_out():
    """scipy serves the weight maps, synthetic images, instances and scores: unet_fast's names for them load it
    when first read, and the command line's instance flags read their defaults from unet_fast.instance_options."""
    assert _imported("scipy after the package, the command line's parser and segment") == [], "scipy imported"


def test_the_package_names_its_lazy_functions_and_loads_them_on_first_read():
    import unet_fast
    from unet_fast import synthetic, weights

    assert {"synthetic_nuclei", "separate_touching", "unet_weight_map"} <= set(dir(unet_fast))
    assert unet_fast.synthetic_nuclei is synthetic.synthetic_nuclei
    assert unet_fast.unet_weight_map is weights.unet_weight_map and unet_fast.separate_touching is weights.separate_touching
    with pytest.raises(AttributeError, match="module 'unet_fast' has no attribute 'unet_weightmap'"):
        unet_fast.unet_weightmap


def test_the_constant_mark_is_what_torch_compiler_sets():
    """mark_constant_for_dynamo stands in for torch.compiler.assume_constant_result: both must leave a
    function with the same attributes (test_conv3x3 checks the effect inside a compiled graph)."""
    def by_torch():
        return 1

    def by_us():
        return 1

    marked = torch.compiler.assume_constant_result(by_torch)
    assert marked is by_torch
    assert mark_constant_for_dynamo(by_us) is by_us
    assert vars(by_us) == vars(by_torch) and vars(by_us), vars(by_torch)

