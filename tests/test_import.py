"""What importing the package costs: torch._dynamo (a second or more to import) stays out of every
command-line start that does not compile or train (training imports it through torch.optim), and triton
(half a second) out of every process that launches no Triton kernel."""
import sys

import torch

import ahead
from unet_fast.ops.triton.conv3x3 import mark_constant_for_dynamo

SEGMENTING_MODULES = ["unet_fast", "unet_fast.cli", "unet_fast.segment", "unet_fast.evaluation",
                      "unet_fast.inference"]


_IMPORTS = "; ".join(f"import {name}" for name in SEGMENTING_MODULES)
# a process of its own, started ahead, beside the suite (tests/ahead.py)
# then a forward on the CPU, which launches no Triton kernel: triton (half a second) is not imported either
_FORWARD = "import torch; unet_fast.UNet(depth=2, base_channels=4)(torch.zeros(1, 1, 44, 44))"
IMPORTS_ALONE = ahead.Command("imports-alone", lambda folder: ([sys.executable, "-c", (
    f"import sys; {_IMPORTS}; print(sorted(m for m in sys.modules if m.startswith('torch._dynamo'))); "
    f"{_FORWARD}; print(sorted(m for m in sys.modules if m.split('.')[0] == 'triton'))")], {}, None),
    timeout=120)


@IMPORTS_ALONE.mark
def test_importing_the_package_and_segmenting_leaves_dynamo_out():
    run = IMPORTS_ALONE.result().done
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[0] == "[]", f"torch._dynamo imported: {run.stdout}"


@IMPORTS_ALONE.mark
def test_importing_the_package_and_a_cpu_forward_leave_triton_out():
    """The suite's environment (TRITON_INTERPRET=1 where there is no GPU) included: the interpreter is there,
    but nothing asked for a Triton kernel."""
    run = IMPORTS_ALONE.result().done
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines()[1] == "[]", f"triton imported: {run.stdout}"


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

