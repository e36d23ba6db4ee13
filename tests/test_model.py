import pytest
import torch

from unet_fast import UNet, reference
from tolerances import BF16_NETWORK, SAMPLE_STD, assert_close

SMALL = dict(in_channels=2, num_classes=3, depth=3, base_channels=4)


def twins(**kwargs):
    """A reference net and a unet_fast.UNet holding the same weights."""
    torch.manual_seed(0)
    ref = reference.UNet(**kwargs)
    fast = UNet(**kwargs)
    fast.load_state_dict(ref.state_dict())
    return ref, fast


def test_paper_network_shape_and_parameters():
    model = UNet()
    assert sum(p.numel() for p in model.parameters()) == 31_030_658
    assert model.output_size(572) == 388
    assert model.input_size_for(388) == 572


@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("size", [(44, 44), (60, 76), (52, 44)])
def test_forward_and_gradients_match_reference(padding, size):
    ref, fast = twins(padding=padding, **SMALL)
    if padding == "same":
        size = (size[0] - size[0] % 4, size[1] - size[1] % 4)
    x = torch.randn(2, 2, *size)
    out_ref, out_fast = ref(x), fast(x)
    assert out_fast.shape == (2, 3, fast.output_size(size[0]), fast.output_size(size[1]))
    assert_close(out_fast, out_ref)
    grad = torch.randn_like(out_ref)
    out_ref.backward(grad)
    out_fast.backward(grad)
    for (name, p_ref), p_fast in zip(ref.named_parameters(), fast.parameters()):
        assert_close(p_fast.grad, p_ref.grad, msg=f"gradient of {name}")


def test_channels_last_and_non_contiguous_inputs():
    ref, fast = twins(**SMALL)
    base = torch.randn(3, 2, 60, 120)
    strided = base[:, :, :, ::2]  # non-contiguous view, 60 x 60
    expected = ref(strided.contiguous())
    assert_close(fast(strided), expected)
    assert_close(fast(strided.contiguous(memory_format=torch.channels_last)), expected)
    fast_cl = fast.to(memory_format=torch.channels_last)
    assert_close(fast_cl(strided.contiguous(memory_format=torch.channels_last)), expected)


def test_state_dict_round_trip_both_ways():
    torch.manual_seed(1)
    ref = reference.UNet(**SMALL)
    fast = UNet(**SMALL)
    assert list(ref.state_dict()) == list(fast.state_dict())
    fast.load_state_dict(ref.state_dict())
    ref2 = reference.UNet(**SMALL)
    ref2.load_state_dict(fast.state_dict())
    for key, value in ref.state_dict().items():
        assert torch.equal(value, ref2.state_dict()[key]), key
    x = torch.randn(1, 2, 44, 44)
    assert torch.equal(ref2(x), ref(x))


def test_he_initialisation_std():
    torch.manual_seed(0)
    model = reference.UNet(base_channels=16, depth=3)
    conv = model.encoder[1].conv2  # 32 -> 32, N = 9 * 32
    assert abs(conv.weight.std().item() - (2 / (9 * 32)) ** 0.5) < SAMPLE_STD * (2 / (9 * 32)) ** 0.5
    up = model.decoder[0].upconv  # 64 -> 32, N = 64
    assert abs(up.weight.std().item() - (2 / 64) ** 0.5) < SAMPLE_STD * (2 / 64) ** 0.5
    assert all(torch.count_nonzero(m.bias) == 0 for m in model.modules() if hasattr(m, "bias") and m.bias is not None)


def test_decoder_concatenates_skip_first():
    torch.manual_seed(0)
    model = reference.UNet(depth=2, base_channels=2)
    x = torch.randn(1, 1, 18, 18)
    block = model.decoder[0]
    captured = {}
    block.conv1.register_forward_hook(lambda m, inp, out: captured.update(input=inp[0]))
    model(x)
    skip = torch.relu(model.encoder[0].conv2(torch.relu(model.encoder[0].conv1(x))))
    cat = captured["input"]
    assert cat.shape[1] == 4
    assert_close(cat[:, :2], reference.center_crop(skip, cat.shape[-2:]))


def test_dropout_acts_only_in_training():
    ref, fast = twins(dropout=0.5, **SMALL)
    x = torch.randn(1, 2, 44, 44)
    fast.eval()
    assert torch.equal(fast(x), fast(x))
    fast.train()
    assert not torch.equal(fast(x), fast(x))


def test_no_grad_and_autocast_bf16():
    ref, fast = twins(**SMALL)
    x = torch.randn(2, 2, 44, 44)
    with torch.no_grad():
        expected = ref(x)
        assert_close(fast(x), expected)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = fast(x)
    assert out.dtype == torch.bfloat16
    assert_close(out.float(), expected, **BF16_NETWORK)


def test_torch_compile_fullgraph():
    """Dynamo traces the torch backend whole (AOTAutograd's eager backend: Inductor would only recompile
    aten's ops); the output and every gradient equal the reference's."""
    ref, fast = twins(**SMALL)
    compiled = torch.compile(fast, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 2, 44, 44)
    x_ref, x_fast = x.clone().requires_grad_(), x.clone().requires_grad_()
    out, out_ref = compiled(x_fast), ref(x_ref)
    assert_close(out, out_ref, msg="output")
    grad = torch.randn_like(out_ref)
    out.backward(grad)
    out_ref.backward(grad)
    assert_close(x_fast.grad, x_ref.grad, msg="gradient of the input")
    for (name, p_ref), p_fast in zip(ref.named_parameters(), fast.parameters()):
        assert_close(p_fast.grad, p_ref.grad, msg=f"gradient of {name}")


def test_illegal_size_names_neighbours():
    with pytest.raises(ValueError, match=r"500.*depth 5.*492 or 508"):
        UNet()(torch.randn(1, 1, 500, 500))


def test_illegal_width_only():
    model = UNet(**SMALL)
    with pytest.raises(ValueError, match=r"input width.*45.*44 or 48"):
        model(torch.randn(1, 2, 44, 45))


@pytest.mark.parametrize("model_cls", [UNet, reference.UNet])
def test_bad_inputs(model_cls):
    model = model_cls(**SMALL)
    with pytest.raises(ValueError, match="3 channels but the network was built with in_channels=2"):
        model(torch.randn(1, 3, 44, 44))
    with pytest.raises(ValueError, match=r"4 dimensions.*unsqueeze\(0\)"):
        model(torch.randn(2, 44, 44))
    with pytest.raises(ValueError, match="4 dimensions"):
        model(torch.randn(1, 1, 2, 44, 44))
    with pytest.raises(ValueError, match=r"20 is too small.*smallest legal size is 44"):
        model(torch.randn(1, 2, 20, 20))
    with pytest.raises(TypeError, match="floating-point"):
        model(torch.zeros(1, 2, 44, 44, dtype=torch.long))
    with pytest.raises(TypeError, match="torch.Tensor"):
        model([[1.0]])


@pytest.mark.parametrize("kwargs, match", [
    (dict(depth=0), "depth"), (dict(in_channels=0), "in_channels"), (dict(num_classes=1.5), "num_classes"),
    (dict(base_channels=-4), "base_channels"), (dict(padding="reflect"), "padding"),
    (dict(dropout=1.0), "dropout"), (dict(backend="cudnn"), "backend"),
])
def test_bad_constructor_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        UNet(**kwargs)


def test_config_rebuilds_the_architecture():
    model = UNet(**SMALL, dropout=0.1)
    clone = UNet(**model.config())
    assert clone.config() == model.config()
    assert reference.UNet(**reference.UNet(**SMALL).config()).config() == reference.UNet(**SMALL).config()


@pytest.mark.parametrize("capability, expected", [((7, 0), "torch"), ((7, 5), "torch"), ((8, 0), "triton"),
                                                  ((9, 0), "triton")])
def test_auto_backend_needs_compute_capability_8(monkeypatch, capability, expected):
    """A CUDA device below sm_80 (V100, T4) gets the torch backend, and info() says why."""
    import types

    import unet_fast

    gpu = types.SimpleNamespace(name="Fake GPU", major=capability[0], minor=capability[1])
    monkeypatch.setattr(unet_fast.ops, "backend", lambda name, device, dtype: "triton")  # as where Triton compiles
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: gpu.name)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device=None: gpu)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert UNet(**SMALL).resolved_backend(torch.device("cuda", 0)) == expected
    assert UNet(backend="triton", **SMALL).resolved_backend(torch.device("cuda", 0)) == "triton"
    backends = unet_fast.info()["backends"]
    assert backends["triton"]["available"] == (expected == "triton")
    assert f"cuda:0 -> {expected}" in backends["auto"]["why"]
    if expected == "torch":
        assert f"compute capability {capability[0]}.{capability[1]}" in backends["auto"]["why"]
        assert ">= 8.0" in backends["auto"]["why"]


def test_hooks_on_a_convolution_see_what_the_reference_gives():
    """The torch backend's in-place ReLU changed what hooks see: a forward hook keeping a conv's features found
    them rectified (the reference's are the conv's output), and a full backward hook raised (autograd forbids
    changing its output view in place)."""
    ref, fast = twins(**SMALL)
    features, gradients = {}, {}
    for name, model in (("ref", ref), ("fast", fast)):
        model.encoder[0].conv1.register_forward_hook(lambda m, i, o, name=name: features.__setitem__(name, o))
        model.decoder[0].conv2.register_full_backward_hook(
            lambda m, grad_in, grad_out, name=name: gradients.__setitem__(name, (grad_in[0], grad_out[0])))
    x = torch.randn(1, 2, 44, 44, requires_grad=True)
    grad = torch.randn(1, 3, 4, 4)
    ref(x).backward(grad)
    fast(x).backward(grad)
    assert features["ref"].min() < 0
    assert_close(features["fast"], features["ref"])
    for fast_grad, ref_grad in zip(gradients["fast"], gradients["ref"]):
        assert_close(fast_grad, ref_grad)


def test_jit_trace_checks_and_saves(tmp_path):
    """torch.jit.trace (grad enabled, as by default) recorded the copy-and-crop's autograd.Function as a Python
    call: the trace failed its own check ("Graphs differed across invocations") and could not be saved."""
    ref, fast = twins(**SMALL)
    x = torch.randn(2, 2, 44, 44)
    traced = torch.jit.trace(fast.eval(), x)
    traced.save(str(tmp_path / "traced.pt"))
    other = torch.randn(1, 2, 52, 48)
    assert_close(torch.jit.load(str(tmp_path / "traced.pt"))(other), ref(other))


def test_torch_func_per_sample_gradients_and_jacobian():
    """torch.func: vmap of grad (per-sample gradients) and jacrev raised inside the copy-and-crop's backward
    (a layout query and in-place writes, which vmap cannot run); torch.func.grad raised for want of setup_context."""
    ref, fast = twins(**SMALL)
    x = torch.randn(3, 2, 44, 44)

    def per_sample_gradients(model):
        params = {name: p.detach() for name, p in model.named_parameters()}

        def loss(p, sample):
            return torch.func.functional_call(model, p, (sample[None],)).square().sum()
        return torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0))(params, x)

    expected = per_sample_gradients(ref)
    for name, grad in per_sample_gradients(fast).items():
        assert_close(grad, expected[name], msg=f"per-sample gradient of {name}")
    assert_close(torch.func.jacrev(fast)(x[:1]), torch.func.jacrev(ref)(x[:1]))


def test_triton_backend_runs_the_hooks_of_its_convolutions():
    """The Triton path reads each 3x3 layer's weight and never calls the layer: a hook on it never fired and a
    pruned layer (torch.nn.utils.prune: a forward pre-hook computing weight) used a stale weight, silently."""
    import torch.nn.utils.prune as prune

    ref, _ = twins(**SMALL)
    fast = UNet(**SMALL, backend="triton")
    fast.load_state_dict(ref.state_dict())
    calls = []
    fast.encoder[0].conv1.register_forward_hook(lambda module, inputs, output: calls.append(output.shape))
    for model in (ref, fast):
        prune.l1_unstructured(model.encoder[1].conv1, "weight", amount=0.5)
        with torch.no_grad():
            model.encoder[1].conv1.weight_orig.mul_(2)   # the pruned weight is recomputed from it at each call
    x = torch.randn(1, 2, 44, 44)
    assert_close(fast(x), ref(x))
    assert calls == [(1, 4, 42, 42)]
