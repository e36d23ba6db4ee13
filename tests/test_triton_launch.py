"""unet_fast.ops.triton: where a planned kernel launch runs (Launch), and Triton imported at the first kernel
(Kernels), checked to decide as unet_fast did at its import."""
import contextlib
import sys

import numpy as np
import pytest
import torch

from unet_fast import _info
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


@pytest.fixture
def first_kernel(monkeypatch):
    """As if no kernel had been wanted yet in this process: the next Kernels read imports and checks Triton."""
    monkeypatch.setattr(triton_kernels, "_checked", False)


@pytest.mark.skipif(not triton_kernels.available(), reason="triton is not installed")
def test_the_first_kernel_refuses_a_triton_that_decides_otherwise_than_at_import(first_kernel, monkeypatch):
    """TRITON_INTERPRET set (or unset) after unet_fast was imported: the ops would send kernels where Triton
    cannot run them (an interpreted kernel given CUDA tensors, a compiled one given CPU tensors); the first
    kernel wanted says so and names the fix, whichever way it changed."""
    monkeypatch.setattr(triton_kernels, "_DECIDED", not triton_kernels.INTERPRETED)
    with pytest.raises(RuntimeError, match="but unet_fast was imported when it would .* set TRITON_INTERPRET "
                                           "before importing unet_fast"):
        triton_kernels.Kernels("crop_concat").crop_concat_forward
    assert not triton_kernels._checked          # and says it again, rather than running the kernel next time
    monkeypatch.setattr(triton_kernels, "_DECIDED", triton_kernels.INTERPRETED)
    assert callable(triton_kernels.Kernels("crop_concat").crop_concat_forward)


def test_a_triton_that_does_not_import_is_named_with_the_fix(first_kernel, monkeypatch):
    """Installed (the ops route kernels to it) but broken, e.g. built for another Python: the first kernel wanted
    raises naming both ways out, where a bare ImportError came from deep inside an op; info() says it too."""
    monkeypatch.setitem(sys.modules, "triton", None)    # what import finds for a module that fails to import
    with pytest.raises(RuntimeError, match=r"triton is installed but does not import \(.*\): reinstall it "
                                           r"\(pip install triton\) or uninstall it"):
        triton_kernels.Kernels("conv3x3").conv3x3_forward
    monkeypatch.setattr(triton_kernels, "_INSTALLED", True)
    available, why = _info._triton_status()
    assert not available and why.startswith("triton is installed but does not import ("), why
    monkeypatch.setattr(triton_kernels, "_INSTALLED", False)
    assert _info._triton_status() == (False, "triton is not installed")


@pytest.mark.parametrize("value", ["1", "0", "on", "On", "TRUE", "yes", "Y", "", " 1", "true1", "off", "2"])
def test_interpret_is_read_from_the_environment_as_triton_reads_it(monkeypatch, value):
    knobs = pytest.importorskip("triton").knobs if triton_kernels.available() else None
    if knobs is None or not hasattr(knobs, "runtime"):
        pytest.skip("this triton has no knobs.runtime to compare with")
    monkeypatch.setenv("TRITON_INTERPRET", value)
    assert triton_kernels.interpret_requested() == bool(knobs.runtime.interpret), value


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
