"""benchmarks/step_traffic.py: a GPU training step's ops on fake tensors, and the layouts its gradients reach
the kernels in (a gradient in NCHW in a channels_last network costs cuDNN a copy and our kernels strided reads)."""
import pytest
import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode

import benchmark_scripts
from unet_fast import UNet


step_traffic = benchmark_scripts.load("step_traffic")
TINY = dict(depth=3, base_channels=8)


@pytest.mark.parametrize("aten_everywhere", [None, True, False], ids=["table", "cudnn", "triton"])
@pytest.mark.parametrize("pool_epilogue", [True, False])
def test_gpu_step_hands_every_kernel_channels_last_gradients(aten_everywhere, pool_epilogue):
    """cuDNN's parts (aten_everywhere True: the composite forward and aten's backward), the Triton kernels (False)
    or the GPU's default for unmeasured layers (None): after the caller's output gradient, every data-moving op
    gets channels-innermost tensors. masked_fill's NCHW result (the composite's input-gradient mask) and the
    crop's slice_backward (the composite's skip) broke this."""
    with step_traffic.gpu_path(aten_everywhere=aten_everywhere):
        ops = step_traffic.record_step(UNet(backend="triton", pool_epilogue=pool_epilogue, **TINY), batch=2, size=92)
    names = [op.name for op in ops]
    # cuDNN's backward: the up-convolutions' and the head's (depth in all), and the 3x3 convs' where it runs them
    assert (names.count("convolution_backward") == TINY["depth"]) == (aten_everywhere is False)
    assert ("conv3x3_input_grad_triton" in names) == (aten_everywhere is False)
    assert step_traffic.misplaced_layouts(ops) == []


def test_an_nchw_gradient_is_reported():
    """The check can fail: the output gradient (NCHW, given by the caller) reaches the head's backward."""
    with step_traffic.gpu_path(aten_everywhere=False):
        ops = step_traffic.record_step(UNet(backend="triton", **TINY), batch=2, size=92)
    misplaced = step_traffic.misplaced_layouts(ops, skip_first_backward=False)
    assert [op.name for op in misplaced] == ["convolution_backward"]
    assert misplaced[0].arguments[0] == ((2, 2, 52, 52), (5408, 2704, 52, 1))


def test_bytes_count_each_argument_and_result_once():
    recorder = step_traffic._Recorder()
    with FakeTensorMode():
        x = torch.empty(2, 3, 5, 7)
        with recorder:
            F.relu(x)
            x.view(6, 35)
            torch.add(x, x[:, :1])
    assert [op.name for op in recorder.ops if op.name in ("view", "slice")] == ["view", "slice"]
    relu, add = (op for op in recorder.ops if op.moves_data)  # not the views, nor the device queries
    assert (relu.name, relu.read, relu.written) == ("relu", 840, 840)
    assert (add.name, add.read, add.written) == ("add", 840 + 280, 840)
    assert step_traffic.summary(recorder.ops) == {("forward", "relu"): [1, 840, 840],
                                                  ("forward", "add"): [1, 1120, 840]}


@pytest.mark.parametrize("shape, strides, expected", [
    ((2, 3, 4, 5), (60, 20, 5, 1), False),                                    # NCHW
    ((2, 3, 4, 5), (60, 1, 15, 3), True),                                     # channels_last
    ((2, 3, 4, 5), (120, 1, 30, 6), True),                                    # a channel slice of channels_last
    ((2, 1, 4, 5), (20, 20, 5, 1), True),                                     # one channel: either
    ((2, 3, 1, 1), (3, 1, 1, 1), True),                                       # one pixel: either
])
def test_channels_fastest(shape, strides, expected):
    assert step_traffic.channels_fastest(shape, strides) is expected


def test_the_paper_network_on_the_shipped_table(capsys):
    """The command line on the paper's network with the shipped H100 table: ours and the eager reference, and
    none of our gradients in another layout (the eager reference's skip gradients are NCHW: it lists them)."""
    step_traffic.main(["--batch", "1", "--size", "188"])
    ours, reference = capsys.readouterr().out.split("## reference.UNet")
    assert "arguments whose channels are not innermost (after the output gradient): 0" in ours
    # cuDNN's wgrad (the table's choice): the fused ReLU + pool backward sums the bias too, and every ReLU mask
    # is one Triton pass (aten's y <= 0 and where were two)
    assert "| backward | relu_pool_backward_bias_triton |" in ours
    assert "| backward | where |" not in ours and "| backward | le |" not in ours
    assert "arguments whose channels are not innermost (after the output gradient): 12" in reference


def test_an_unknown_device_is_refused(capsys):
    with pytest.raises(SystemExit) as exit:
        step_traffic.main(["--device", "sm75-40"])
    assert exit.value.code == 2
    assert "--device 'sm75-40' is not in the shipped table" in capsys.readouterr().err
