"""unet_fast.ops.triton.Launch: where a planned kernel launch runs."""
import contextlib

import numpy as np
import pytest
import torch

from unet_fast.ops import triton as triton_kernels


class _OnGpu1:
    """What a launch reads of its first argument: a tensor on cuda:1 (no GPU needed)."""

    device = torch.device("cuda", 1)


def test_a_launch_runs_with_its_tensors_gpu_current(monkeypatch):
    """Triton launches on the current CUDA device and its current stream, not the tensors': a model on cuda:1
    (the current device being 0) failed at its first kernel ("cannot be accessed from Triton"), or ran on
    another GPU's stream. Each launch, and the launch that completes it (a split-K sum), now runs with its
    tensors' GPU current."""
    events = []

    @contextlib.contextmanager
    def device(which):
        events.append(("enter", torch.device(which)))
        yield
        events.append("exit")

    class Kernel:
        def __getitem__(self, grid):
            return lambda *args, **meta: events.append(("launch", grid))

    monkeypatch.setattr(torch.cuda, "device", device)
    second = triton_kernels.Launch(Kernel(), (2,), (_OnGpu1(),), {})
    triton_kernels.Launch(Kernel(), (1,), (_OnGpu1(), 3), {"BLOCK": 4}, then=second).run()
    gpu1 = torch.device("cuda", 1)
    assert events == [("enter", gpu1), ("launch", (1,)), "exit", ("enter", gpu1), ("launch", (2,)), "exit"]
    events.clear()
    triton_kernels.Launch(Kernel(), (1,), (torch.zeros(1),), {}).run()  # the CPU (the interpreter): as it was
    assert events == [("launch", (1,))]


needs_two_gpus = pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2,
                                    reason="needs two CUDA devices")


@pytest.mark.gpu
@needs_two_gpus
def test_a_model_on_the_second_gpu_runs_and_predicts_as_on_the_first():
    """The Triton backend and predict_tiled (its events, stream and CUDA graphs) with the model on cuda:1 while the
    current device is 0: the same logits as on cuda:0."""
    from unet_fast import UNet
    from unet_fast.inference import predict_tiled
    from unet_fast.tile_graphs import forget

    torch.manual_seed(0)
    model = UNet(depth=3, base_channels=16, backend="triton").cuda(0)
    image = np.random.default_rng(1).random((300, 260), dtype=np.float32)
    x = torch.from_numpy(image[:92, :92]).reshape(1, 1, 92, 92)
    with torch.no_grad():
        first = model(x.cuda(0)).cpu()
        expected = predict_tiled(model, image, tile_size=92, batch_size=3, output="logits", cuda_graphs=False)
        model.cuda(1)
        assert torch.cuda.current_device() == 0
        second = model(x.cuda(1)).cpu()
    torch.testing.assert_close(second, first)
    for graphs in (False, True):
        got = predict_tiled(model, image, tile_size=92, batch_size=3, output="logits", cuda_graphs=graphs)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    forget(model)
