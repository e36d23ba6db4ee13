"""UNet(backend="triton"): every 3x3 conv through conv3x3_relu, compared with the reference network."""
import pytest
import torch

from unet_fast import UNet, reference
from unet_fast.ops.triton import conv3x3 as kernels, conv3x3_configs
from tolerances import FP32_SUMMED_GRADIENT, assert_close, relative_error, assert_within_twice_plain_error
from triton_device import DEVICE, exact_fp32, needs_triton

TINY = dict(in_channels=1, num_classes=2, depth=3, base_channels=8)


PLAIN = dict(pool_epilogue=False, direct_first_layer=False)


@pytest.fixture(autouse=True)
def few_interpreted_programs(monkeypatch):
    """The interpreter's time goes per program and per loop step, not per pixel: these tests check how the
    network wires its kernels, so they take tiles of 1024 rows and 32 channels per step (a third less time
    for the file). Tile edges are tests/test_conv3x3*.py's, under the shipped interpreter tiles and others.
    Nothing changes on a GPU, where the interpreter's tiles are not used."""
    rows = conv3x3_configs.Config(1024, 32, 32, 4, 1)
    for kind in ("forward", "pool", "dgrad"):
        monkeypatch.setitem(conv3x3_configs.INTERPRETER, kind, rows)
    monkeypatch.setitem(conv3x3_configs.INTERPRETER, "wgrad", conv3x3_configs.Config(32, 32, 512, 4, 1))


def twins(switches=None, **kwargs):
    """The reference and UNet(backend="triton") with the same weights; switches None: both kernel options off."""
    torch.manual_seed(0)
    ref = reference.UNet(**kwargs).to(DEVICE)
    fast = UNet(backend="triton", **(switches or PLAIN), **kwargs).to(DEVICE)
    fast.load_state_dict(ref.state_dict())
    return ref, fast


POOL_AND_DIRECT = dict(pool_epilogue=True, direct_first_layer=True)


def spy_forward_launches(monkeypatch):
    """Record every forward conv launch (conv3x3_forward plans it with kernels.plan_forward):
    (kernel name, pooled epilogue, input channels), in call order."""
    launches = []
    plan_forward = kernels.plan_forward

    def spy(x, *args, **kwargs):
        launch = plan_forward(x, *args, **kwargs)
        launches.append((launch.kernel.__name__, launch.meta.get("POOL", False), x.shape[1]))
        return launch

    monkeypatch.setattr(kernels, "plan_forward", spy)
    return launches


def expected_launches(depth, pool_epilogue, direct_first_layer):
    """Encoder: two convs per level, the second pooled in its epilogue on every level but the last;
    the first conv of all (1 input channel) on the direct kernel. Decoder: two plain convs per level."""
    flags = []
    for level in range(depth):
        flags += [(direct_first_layer and level == 0, False), (False, pool_epilogue and level < depth - 1)]
    flags += [(False, False)] * (2 * (depth - 1))
    return [("conv3x3_direct_kernel" if direct else "conv3x3_kernel", pool) for direct, pool in flags]


@needs_triton
@pytest.mark.parametrize("padding, size, batch, switches", [
    ("valid", (44, 60), 2, None), ("same", (16, 24), 1, None),
    pytest.param("valid", (44, 44), 1, POOL_AND_DIRECT, id="valid-pool-epilogue-direct-first-layer"),
    pytest.param("same", (16, 20), 1, POOL_AND_DIRECT, id="same-pool-epilogue-direct-first-layer"),
    # 44 x 48: the second pooled epilogue writes 8 x 9 (odd width), the bottleneck is 4 x 5
    pytest.param("valid", (44, 48), 2, POOL_AND_DIRECT, id="valid-odd-batch-2-pool-epilogue-direct-first-layer")])
def test_forward_and_backward_match_reference(padding, size, batch, switches, monkeypatch):
    ref, fast = twins(switches, padding=padding, **TINY)
    x = torch.randn(batch, 1, *size, device=DEVICE)
    launches = spy_forward_launches(monkeypatch)
    with exact_fp32():
        out_ref, out_fast = ref(x), fast(x.contiguous(memory_format=torch.channels_last))
    # the switches reach the kernels: pooled epilogue on each encoder level but the last, direct kernel
    # on the first conv only (and neither with the switches off)
    on = switches or {}  # what was asked for, not what the model says it holds
    assert [(name, pool) for name, pool, _ in launches] == expected_launches(
        TINY["depth"], on.get("pool_epilogue", False), on.get("direct_first_layer", False))
    assert launches[0][2] == TINY["in_channels"]
    assert_close(out_fast, out_ref)
    grad = torch.randn_like(out_ref)
    with exact_fp32():
        out_ref.backward(grad)
        out_fast.backward(grad)
    for (name, p_ref), p_fast in zip(ref.named_parameters(), fast.parameters()):
        error = relative_error(p_fast.grad, p_ref.grad)
        assert error <= FP32_SUMMED_GRADIENT, f"gradient of {name}: relative error {error:.2e}"


@needs_triton
def test_dropout_in_training_and_inference():
    ref, fast = twins(dropout=0.5, **TINY)
    x = torch.randn(1, 1, 44, 44, device=DEVICE)
    fast.eval()
    ref.eval()
    with torch.no_grad(), exact_fp32():
        assert_close(fast(x), ref(x))
    fast.train()
    assert not torch.equal(fast(x), fast(x))


def test_switches_default_on_and_are_not_architecture():
    """pool_epilogue and direct_first_layer: on by default (measured faster on an H200), not in config()."""
    model = UNet(backend="triton", **TINY)
    assert model.pool_epilogue and model.direct_first_layer
    assert UNet(backend="triton", **POOL_AND_DIRECT, **TINY).config() == model.config()
    with pytest.raises(TypeError, match="pool_epilogue must be True or False"):
        UNet(pool_epilogue="yes", **TINY)


def test_state_dict_is_the_reference_one():
    assert list(UNet(backend="triton", **TINY).state_dict()) == list(reference.UNet(**TINY).state_dict())


def test_auto_resolves_to_torch_on_cpu():
    assert UNet(**TINY).resolved_backend(torch.device("cpu")) == "torch"
    assert UNet(backend="triton", **TINY).resolved_backend(torch.device("cpu")) == "triton"


@pytest.mark.gpu
def test_auto_resolves_to_triton_on_cuda():
    assert UNet(**TINY).resolved_backend(torch.device("cuda")) == "triton"


@pytest.mark.gpu
@pytest.mark.parametrize("switches", [None, POOL_AND_DIRECT], ids=["default", "pool-epilogue-direct-first-layer"])
@pytest.mark.parametrize("batch", [1, 3])
def test_bf16_autocast_error_within_twice_reference(batch, switches):
    """bf16: error against a float64 reference at most about twice that of the reference in bf16."""
    ref, fast = twins(switches, **TINY)
    x = torch.randn(batch, 1, 60, 60, device="cuda")
    ref64 = reference.UNet(**TINY).to("cuda").double()
    ref64.load_state_dict(ref.state_dict())
    expected = ref64(x.double())
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out_ref, out_fast = ref(x), fast(x)
    assert out_fast.dtype == torch.bfloat16
    assert_within_twice_plain_error(out_fast, out_ref, expected, msg="bf16 network output")


@needs_triton
@pytest.mark.parametrize("switches", [pytest.param(None, marks=pytest.mark.gpu), POOL_AND_DIRECT],
                         ids=["default", "pool-epilogue-direct-first-layer"])
def test_torch_compile_fullgraph_matches(switches):
    """The compiled network's output and every gradient equal the reference's (Inductor on a GPU;
    AOTAutograd's eager backend on the CPU, where Inductor would only recompile aten's ops). On the
    CPU one variant, the one that reaches every kernel: the interpreter makes it the costliest test."""
    ref, fast = twins(switches, **TINY)
    compiled = torch.compile(fast, fullgraph=True, backend="inductor" if DEVICE.type == "cuda" else "aot_eager")
    x = torch.randn(2 if DEVICE.type == "cuda" else 1, 1, 44, 44, device=DEVICE)
    x_ref, x_fast = x.clone().requires_grad_(), x.clone().requires_grad_()
    with exact_fp32():
        out = compiled(x_fast)
        out_ref = ref(x_ref)
        grad = torch.randn_like(out_ref)
        out.backward(grad)
        out_ref.backward(grad)
    assert_close(out, out_ref, msg="output")
    assert_close(x_fast.grad, x_ref.grad, msg="gradient of the input")
    for (name, p_ref), p_fast in zip(ref.named_parameters(), fast.parameters()):
        assert_close(p_fast.grad, p_ref.grad, msg=f"gradient of {name}")


@needs_triton
def test_predict_tiled_packs_each_weight_once_and_matches_the_reference(monkeypatch):
    """predict_tiled runs its tiles inside frozen_weights: over several batches of tiles, each of the
    network's 3x3 weights is packed once, and the labels are the reference network's."""
    from unet_fast.inference import predict_tiled

    ref, fast = twins(**TINY)
    packs = []
    real = kernels.pack_forward_weight
    monkeypatch.setattr(kernels, "pack_forward_weight", lambda w: packs.append(w.shape) or real(w))
    image = torch.rand(36, 17, generator=torch.Generator().manual_seed(4)).numpy()  # 2 x 1 tiles of 20
    with exact_fp32():
        got = predict_tiled(fast, image, tile_size=60, batch_size=1, device=DEVICE, output="logits",
                            cuda_graphs=False)  # a captured graph packs anew on every replay, by design
        want = predict_tiled(ref, image, tile_size=60, batch_size=1, device=DEVICE, output="logits")
    assert len(packs) == 4 * TINY["depth"] - 2  # the 3x3 convs, once each, over two batches
    assert_close(torch.as_tensor(got), torch.as_tensor(want), dtype=torch.float32)


@needs_triton
@pytest.mark.parametrize("aten", ["forward", "backward", "every-other", "dgrad-only"])
def test_network_with_the_parts_the_table_gives_cudnn(aten, monkeypatch):
    """The default implementation on a GPU (measured): each layer's forward, dgrad and wgrad run where the table
    says. Here cuDNN takes every forward, every backward part, or alternate layers' parts (a layer whose input
    gradient cuDNN makes beside one whose next layer's dgrad masks it): the network still matches the reference."""
    from unet_fast.ops import _library
    from unet_fast import model as model_module
    calls = []

    def triton_by_default(name, device, dtype):  # as on a GPU: the measured route, not implementation="triton"
        return "triton" if name == "conv3x3_relu" and dtype == torch.float32 else original(name, device, dtype)

    def by_layer(kind):
        def prefers(*args, **kwargs):
            calls.append(kind)
            weight = args[1]
            return aten == kind or (aten == "every-other" and weight.shape[0] % 16 == 8)
        return prefers

    original = _library.backend
    monkeypatch.setattr(_library, "backend", triton_by_default)
    monkeypatch.setattr(model_module.ops, "backend", triton_by_default)
    monkeypatch.setattr(kernels, "forward_prefers_aten", by_layer("forward"))
    prefers_backward = by_layer("backward")
    if aten == "dgrad-only":  # cuDNN's dgrad (no concatenation made for it) beside our wgrad
        monkeypatch.setattr(kernels, "backward_prefers_aten", lambda *args: (calls.append("backward") or True, False))
    else:
        monkeypatch.setattr(kernels, "backward_prefers_aten", lambda *args: (prefers_backward(*args),) * 2)
    ref, fast = twins(POOL_AND_DIRECT, **TINY)
    with torch.no_grad():  # biases start at 0: give them values, so a lost bias shows
        for p_ref, p_fast in zip(ref.parameters(), fast.parameters()):
            if p_ref.dim() == 1:
                p_fast.copy_(p_ref.normal_(0.0, 0.1))
    x = torch.randn(2, 1, 44, 48, device=DEVICE)
    with exact_fp32():
        out_ref, out_fast = ref(x), fast(x.contiguous(memory_format=torch.channels_last))
        assert_close(out_fast, out_ref)
        grad = torch.randn_like(out_ref)
        out_ref.backward(grad)
        out_fast.backward(grad)
    assert "forward" in calls and "backward" in calls  # the measured route was taken
    for (name, p_ref), p_fast in zip(ref.named_parameters(), fast.parameters()):
        error = relative_error(p_fast.grad, p_ref.grad)
        assert error <= FP32_SUMMED_GRADIENT, f"gradient of {name}: relative error {error:.2e}"
