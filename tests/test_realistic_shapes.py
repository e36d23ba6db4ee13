"""The fused kernels at the paper's shapes: batch 8, 572 x 572, every layer of the depth-5 network.

GPU-marked: each of the 18 distinct 3x3 conv layers (forward and every gradient), the whole network
(forward and every parameter gradient, bf16 and fp32/TF32, with and without the kernel switches), the
loss at (8, 2, 388, 388) and tiled inference against one whole-image pass. The criterion for low
precision is flash-attention's: the error against a high-precision reference at most about twice
that of cuDNN/aten in the same precision. The small shapes of the other test files never reach a
second 64-channel K block at real strides, 1024-channel layers or batch 8 at 572 x 572; these do.
One layer runs in Triton's interpreter at reduced size (not GPU-marked), so the CPU suite checks
this file's machinery too.
"""
import numpy as np
import pytest
import torch

from unet_fast import UNet, geometry, reference
from unet_fast.inference import predict_tiled
from unet_fast.ops import conv3x3_relu, weighted_softmax_cross_entropy
from unet_fast.ops.conv3x3 import conv3x3_relu_reference
from unet_fast.ops.triton import conv3x3 as kernels
from tolerances import relative_error
from triton_device import exact_fp32, needs_triton

BATCH, SIZE = 8, 572
PAPER_LAYERS = geometry.conv_layers(SIZE)
# Low precision must stay within this factor of aten's own error in that precision (+ a floor for
# results aten computes exactly): flash-attention's rule.
ERROR_FACTOR, ERROR_FLOOR = 2.0, 1e-6


def layer_inputs(layer, batch, device, generator_seed=0):
    g = torch.Generator(device=device).manual_seed(generator_seed)
    cl = torch.channels_last

    def randn(*shape):
        return torch.randn(shape, device=device, generator=g)

    x = randn(batch, layer.in_channels, layer.size, layer.size).contiguous(memory_format=cl)
    skip = None
    if layer.skip_channels:
        skip = randn(batch, layer.skip_channels, layer.skip_size, layer.skip_size).contiguous(memory_format=cl)
    cin = layer.in_channels + layer.skip_channels
    weight = randn(layer.out_channels, cin, 3, 3) * (2 / (9 * cin)) ** 0.5  # He, as the network's
    bias = randn(layer.out_channels) * 0.1
    return x, weight, bias, skip


def forward_and_grads(fn, inputs, grad):
    inputs = [t.detach().requires_grad_() if t is not None else None for t in inputs]
    out = fn(*inputs)
    present = [t for t in inputs if t is not None]
    return [out.detach()] + list(torch.autograd.grad(out, present, grad.to(out.dtype)))


def check_layer(layer, batch, device, dtype):
    """Ours in ``dtype`` vs aten in ``dtype``, both against aten in fp32 without TF32 (or float64 on the CPU)."""
    x, weight, bias, skip = layer_inputs(layer, batch, device)
    # float64 where fp32 is computed exactly (the CPU; a thin first layer on a GPU, see
    # THIN_LAYER_CHANNELS): an fp32 reference's own rounding over 2.6 M summed pixels is then as large
    # as the error measured (enc0.conv1's weight gradient, H200 run 4: 3.1e-6 vs cuDNN's 8.8e-7)
    thin = layer.in_channels + layer.skip_channels < kernels.THIN_LAYER_CHANNELS
    reference_dtype = torch.float64 if device.type == "cpu" or (dtype == torch.float32 and thin) else torch.float32
    out_size = layer.output_size
    grad = torch.randn(batch, layer.out_channels, out_size, out_size, device=device,
                       generator=torch.Generator(device=device).manual_seed(1))

    def ours(x, weight, bias, skip):
        return conv3x3_relu(x, weight, bias, skip=skip)

    def cast(dtype_):
        return [t.to(dtype_) if t is not None else None for t in (x, weight, bias, skip)]

    with exact_fp32():
        want = forward_and_grads(conv3x3_relu_reference, cast(reference_dtype), grad.to(reference_dtype))
    tf32 = torch.backends.cudnn.flags(enabled=True, allow_tf32=True)
    with tf32 if dtype == torch.float32 else exact_fp32():  # fp32 means TF32 here, as in training
        got = forward_and_grads(ours, cast(dtype), grad)
        aten = forward_and_grads(conv3x3_relu_reference, cast(dtype), grad)
    names = ["y", "x", "weight", "bias"] + (["skip"] if skip is not None else [])
    for name, g, a, w in zip(names, got, aten, want):
        assert g.shape == w.shape, f"{layer.name} {name}: shape {tuple(g.shape)} != {tuple(w.shape)}"
        assert torch.isfinite(g).all(), f"{layer.name} {name}: non-finite values"
        ours_error, aten_error = relative_error(g, w), relative_error(a, w)
        floor = ERROR_FLOOR
        if thin and dtype == torch.float32 and name in ("weight", "bias"):
            # exact fp32 sums over every output pixel: any summation order is good to about u * sqrt(n)
            floor = max(floor, 2.0 ** -24 * (batch * out_size * out_size) ** 0.5)
        assert ours_error <= ERROR_FACTOR * aten_error + floor, (
            f"{layer.name} {name} {dtype}: error {ours_error:.2e} vs aten's {aten_error:.2e}")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32-tf32"])
@pytest.mark.parametrize("layer", PAPER_LAYERS, ids=[layer.name for layer in PAPER_LAYERS])
def test_every_paper_layer_at_batch_8(layer, dtype):
    check_layer(layer, BATCH, torch.device("cuda"), dtype)


@needs_triton
def test_a_decoder_layer_with_two_k_blocks_per_source_in_the_interpreter():
    """Reduced size for the interpreter: skip and x of 40 channels (more than one K block each with the
    interpreter's tiles), a crop offset > 0, batch 2, odd output; ours in fp32 against aten in float64."""
    layer = geometry.ConvLayer("dec-reduced.conv1", 40, 24, 11, skip_channels=40, skip_size=15)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    check_layer(layer, 2, device, torch.float32)


def network_twins(switches, dtype):
    torch.manual_seed(0)
    ref = reference.UNet()
    fast = UNet(backend="triton", **switches)
    fast.load_state_dict(ref.state_dict())
    cl = torch.channels_last
    return ref.cuda().to(memory_format=cl), fast.cuda().to(dtype).to(memory_format=cl)


def network_outputs_and_grads(model, x, grad):
    model.zero_grad(set_to_none=True)
    out = model(x)
    out.backward(grad.to(out.dtype))
    return [("output", out.detach())] + [(name, p.grad) for name, p in model.named_parameters()]


@pytest.mark.gpu
@pytest.mark.parametrize("switches", [{}, dict(pool_epilogue=True, direct_first_layer=True)],
                         ids=["default", "pool-epilogue-direct-first-layer"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "fp32-tf32"])
def test_whole_network_batch_8_every_gradient(dtype, switches):
    ref, fast = network_twins(switches, dtype)
    g = torch.Generator(device="cuda").manual_seed(2)
    x = torch.randn(BATCH, 1, SIZE, SIZE, device="cuda", generator=g).contiguous(memory_format=torch.channels_last)
    out = SIZE - 184
    grad = torch.randn(BATCH, 2, out, out, device="cuda", generator=g)
    with exact_fp32():
        want = network_outputs_and_grads(ref, x, grad)
    aten = reference.UNet().cuda().to(dtype).to(memory_format=torch.channels_last)
    aten.load_state_dict(fast.state_dict())
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=True):
        got = network_outputs_and_grads(fast, x.to(dtype), grad)
        base = network_outputs_and_grads(aten, x.to(dtype), grad)
    for (name, g_), (_, a), (_, w) in zip(got, base, want):
        assert torch.isfinite(g_).all(), f"{name}: non-finite values"
        ours_error, aten_error = relative_error(g_, w), relative_error(a, w)
        assert ours_error <= ERROR_FACTOR * aten_error + ERROR_FLOOR, (
            f"{name} {dtype}: error {ours_error:.2e} vs aten's {aten_error:.2e}")


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_loss_at_training_shape(dtype):
    """(8, 2, 388, 388): loss and gradient against float64 F.cross_entropy * weight."""
    g = torch.Generator(device="cuda").manual_seed(3)
    logits = (4 * torch.randn(8, 2, 388, 388, device="cuda", generator=g)).to(dtype).requires_grad_()
    target = torch.randint(0, 2, (8, 388, 388), device="cuda", generator=g, dtype=torch.uint8)
    weight = 1 + 9 * torch.rand(8, 388, 388, device="cuda", generator=g)
    loss = weighted_softmax_cross_entropy(logits, target, weight)
    (grad,) = torch.autograd.grad(loss, logits)
    logits64 = logits.detach().double().requires_grad_()
    expected = (torch.nn.functional.cross_entropy(logits64, target.long(), reduction="none") * weight.double()).mean()
    (grad64,) = torch.autograd.grad(expected, logits64)
    assert abs(loss.item() - expected.item()) <= 1e-5 * abs(expected.item())
    logits_low = logits.detach().requires_grad_()
    aten_loss = (torch.nn.functional.cross_entropy(logits_low, target.long(), reduction="none") * weight).mean()
    (aten_grad,) = torch.autograd.grad(aten_loss, logits_low)
    assert relative_error(grad, grad64) <= ERROR_FACTOR * relative_error(aten_grad, grad64) + ERROR_FLOOR


@pytest.mark.gpu
def test_tiled_inference_equals_one_pass_at_the_paper_size():
    """A 1000 x 1100 image in 572-tiles (batch 4) equals one forward over the mirror-padded image."""
    torch.manual_seed(0)
    model = UNet(backend="triton").cuda()
    image = np.random.default_rng(0).random((1000, 1100), dtype=np.float32)
    with exact_fp32():
        tiled = predict_tiled(model, image, tile_size=572, batch_size=4, output="logits", dtype="fp32")
        context = geometry.context(5)
        h_in = geometry.input_size_for(1000, 5)
        w_in = geometry.input_size_for(1100, 5)
        padded = np.pad(image, ((context, h_in - 1000 - context), (context, w_in - 1100 - context)), mode="reflect")
        with torch.no_grad():
            whole = model(torch.from_numpy(padded)[None, None].cuda())[0, :, :1000, :1100].cpu().numpy()
    error = np.linalg.norm(tiled - whole) / np.linalg.norm(whole)
    assert error < 1e-5, f"tiled vs whole: relative error {error:.2e}"


@pytest.mark.gpu
def test_cuda_graph_tiles_equal_eager_and_are_kept_on_the_model():
    from unet_fast.tile_graphs import forget, has_tile_graph

    torch.manual_seed(0)
    model = UNet(depth=3, base_channels=16).cuda()
    image = np.random.default_rng(1).random((300, 260), dtype=np.float32)
    eager = predict_tiled(model, image, tile_size=92, batch_size=3, output="logits", cuda_graphs=False)
    assert not has_tile_graph(model)
    graphed = predict_tiled(model, image, tile_size=92, batch_size=3, output="logits", cuda_graphs=True)
    assert has_tile_graph(model)
    np.testing.assert_allclose(graphed, eager, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        model.head.bias += 1.0  # weights changed in place: the kept graph reads them
    again = predict_tiled(model, image, tile_size=92, batch_size=3, output="logits")
    np.testing.assert_allclose(again, eager + 1.0, rtol=1e-5, atol=1e-4)
    forget(model)
    assert not has_tile_graph(model)


@pytest.mark.gpu
@pytest.mark.parametrize("cuda_graphs", [False, True])
def test_a_non_finite_output_is_refused_from_eager_batches_and_replayed_graphs(tmp_path, cuda_graphs):
    """Each batch's finite flags come back with its result (copied after the forward, looked at after the wait for
    the result that was there already), from an eager forward or a replayed graph: a NaN weight, or fp16
    activations that overflow, fail the call before anything is written, naming the first tile."""
    from unet_fast.inference import NonFiniteOutputError
    from unet_fast.tile_graphs import forget, has_tile_graph

    torch.manual_seed(0)
    model = UNet(depth=3, base_channels=16).cuda()
    image = np.random.default_rng(1).random((300, 260), dtype=np.float32)
    run = dict(tile_size=92, batch_size=3, cuda_graphs=cuda_graphs, progress=False)
    predict_tiled(model, image, **run)                   # finite; with cuda_graphs, the graph is kept
    assert has_tile_graph(model) == cuda_graphs
    with torch.no_grad():
        model.head.bias[1] = float("nan")                # in place: a kept graph reads it
    with pytest.raises(NonFiniteOutputError, match=r"output rows 0\.\.52, columns 0\.\.52\).*check its weights"):
        predict_tiled(model, image, out=tmp_path / "labels.tif", **run)
    assert list(tmp_path.iterdir()) == []
    with torch.no_grad():
        model.head.bias[1] = 0.0
        model.encoder[0]["conv1"].weight.mul_(2e4)       # float32 holds its activations, float16 does not
    assert np.isfinite(predict_tiled(model, image, output="logits", **run)).all()
    with pytest.raises(NonFiniteOutputError, match=r"in float16 \(dtype 'fp16'\).*use dtype 'bf16'"):
        predict_tiled(model, image, dtype="fp16", **run)
    forget(model)


@pytest.mark.gpu
def test_the_memory_budget_reads_the_allocators_segments_and_leaves_graph_pools_out():
    """tiling._reusable_cached_bytes reads torch.cuda.memory_snapshot()'s segments (the keys it needs exist in this
    torch) and leaves a kept tile graph's private pool out of the free memory predict_tiled plans with."""
    from unet_fast import tiling
    from unet_fast.tile_graphs import forget

    torch.manual_seed(0)
    model = UNet(depth=3, base_channels=16).cuda()
    image = np.random.default_rng(1).random((300, 260), dtype=np.float32)
    predict_tiled(model, image, tile_size=92, batch_size=3, output="logits", cuda_graphs=True)
    segments = torch.cuda.memory_snapshot()
    assert segments and all({"device", "segment_pool_id", "total_size", "allocated_size"} <= set(s) for s in segments)
    private = sum(s["total_size"] - s["allocated_size"] for s in segments if tuple(s["segment_pool_id"]) != (0, 0))
    assert private > 0  # the graph's pool
    device = torch.device("cuda")
    unused = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    assert tiling._reusable_cached_bytes(device) <= unused - private
    forget(model)
