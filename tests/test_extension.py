"""The package works, and says why, when the compiled extension is missing."""
import json
import os
import sys
from pathlib import Path

import pytest
import torch

import ahead
from tolerances import assert_close

CODE = """
import json, sys, torch, unet_fast
from unet_fast import ops, reference
torch.manual_seed(0)
ref = reference.UNet(depth=3, base_channels=4)
fast = unet_fast.UNet(depth=3, base_channels=4)
fast.load_state_dict(ref.state_dict())
x = torch.randn(2, 1, 44, 44)
logits, target = torch.randn(2, 3, 5, 7), torch.randint(0, 3, (2, 5, 7))
torch.save({"reference": ref(x), "fast": fast(x), "loss": ops.weighted_softmax_cross_entropy(logits, target),
            "oracle_loss": reference.weighted_cross_entropy(logits, target)}, sys.argv[1])
print(json.dumps({"info": unet_fast.info(), "loss_backend": ops.backend("weighted_cross_entropy",
                                                                         torch.device("cpu"), torch.float32)}))
"""


# CODE in a process of its own, without the extension: a command started ahead, beside the suite (tests/ahead.py)
WITHOUT_EXTENSION = ahead.Command("without-extension", lambda folder: (
    [sys.executable, "-c", CODE, str(Path(folder) / "outputs.pt")],
    {"env": {**os.environ, "UNET_FAST_DISABLE_EXTENSION": "1"}}, None), timeout=300)


@WITHOUT_EXTENSION.mark
def test_package_works_without_the_extension():
    run = WITHOUT_EXTENSION.result()
    assert run.done.returncode == 0, run.done.stderr
    result = json.loads(run.done.stdout.strip().splitlines()[-1])
    outputs = torch.load(Path(run.folder) / "outputs.pt")
    assert_close(outputs["fast"], outputs["reference"], msg="network")
    assert result["loss_backend"] == "composite"
    assert_close(outputs["loss"], outputs["oracle_loss"], msg="loss")
    assert "UNET_FAST_DISABLE_EXTENSION" in result["info"]["extension"]
    backend = result["info"]["backends"]["extension-cpu"]
    assert not backend["available"] and "not loaded" in backend["why"]
    assert result["info"]["backends"]["torch"]["available"]


def test_info_reports_the_kernels_the_ops_run():
    """info() names the compiled kernels that exist and the implementation each op runs by default."""
    import unet_fast
    from unet_fast import _extension, ops

    report = unet_fast.info()
    assert report["backends"]["torch"]["available"]
    assert report["backends"]["extension-cpu"]["available"] == bool(_extension.kernels("cpu"))
    if _extension.available():
        assert report["backends"]["extension-cpu"]["why"] == "compiled CPU kernels: watershed_flood, weighted_cross_entropy"
    assert report["extension"].startswith("loaded" if _extension.available() else "missing")
    cpu = torch.device("cpu")
    assert report["ops"]["cpu"] == {op: ops.backend(op, cpu, torch.float32) for op in ops.OPS}
    assert report["ops"]["cpu"]["crop_concat"] == "composite"


def test_implementations_names_the_ops_and_takes_a_device_name():
    """implementations("no_such_op", ...) said ("composite",), and the loss's public name
    (weighted_softmax_cross_entropy, not the op's) said the extension cannot run it; a device given as "cpu"
    raised AttributeError."""
    from unet_fast import ops

    for wrong in ("no_such_op", "weighted_softmax_cross_entropy"):
        with pytest.raises(ValueError, match=r"name must be one of the ops .*'weighted_cross_entropy'"):
            ops.implementations(wrong, torch.device("cpu"), torch.float32)
    assert ops.implementations("crop_concat", "cpu", torch.float32) == \
        ops.implementations("crop_concat", torch.device("cpu"), torch.float32)
