"""GPU: the fused conv3x3_relu op and UNet(backend="triton") against cuDNN eager and torch.compile.

Per layer (group "conv3x3 <layer>"): the 18 distinct 3x3 conv layers of the depth-5 U-Net at
572x572, batch 8, bf16, channels_last:
  fused                  conv3x3_relu (decoder conv1 reads the skip window in place)
  cudnn_reference        conv2d + relu eager (decoder conv1: crop view + cat first)
  compiled_max_autotune  the same composite through torch.compile(mode="max-autotune")
Options awaiting this measurement (off by default in UNet):
  group "conv3x3+maxpool <layer>" (the encoder's second convs, each followed by a 2x2 max-pool):
  pooled_fused (conv3x3_relu(pool=True): one kernel) vs fused_then_max_pool2d vs cudnn_reference
  (conv2d + relu + max_pool2d); group "first layer <layer>": direct (conv3x3_relu(direct=True), FMA)
  vs fused_gemm (the tensor-core kernel) vs cudnn_reference.
Whole network (groups "unet forward/forward+backward ..."): batch 8 bf16 channels_last,
backend="triton" (switches off: today's default; with pool_epilogue, direct_first_layer, both)
vs the reference eager vs torch.compile(reference, mode="max-autotune"); effective TFLOP/s from the
network's FLOPs (network_flops.py: 300.9 GFLOP per 572x572 tile forward; 3x that for forward +
backward). The switches' default follows the triton rows: turn one on where its row beats "triton"
in both modes.

max-autotune compiles take minutes; by default the per-layer compiled baseline runs on
UNET_FAST_BENCH_COMPILED_LAYERS (comma-separated names; default: three representative layers,
the widest-image encoder conv, the bottleneck conv and the top decoder conv with skip; "all": all 18).

UNET_FAST_BENCH_DRY_RUN=1 (benchmarks/gpu.sh --dry-run): every case but the compiled ones once, on
a tiny network (depth 2, base 8, 20x20, batch 1, fp32) on the CPU, for Triton's interpreter (the
fused cases name implementation="triton", so they run it there too): it checks that this file runs
end to end without a GPU; its times mean nothing.
"""
import os
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

from network_flops import forward_gflop
from unet_fast import UNet, geometry, reference
from unet_fast.ops import conv3x3_relu
from unet_fast.ops.conv3x3 import conv3x3_relu_reference

DRY_RUN = os.environ.get("UNET_FAST_BENCH_DRY_RUN") == "1"
if DRY_RUN:
    DEVICE, DTYPE, BATCH, SIZE, DEPTH, BASE, ROUNDS, WARMUP = "cpu", torch.float32, 1, 20, 2, 8, 1, 0
else:
    pytestmark = pytest.mark.gpu
    DEVICE, DTYPE, BATCH, SIZE, DEPTH, BASE, ROUNDS, WARMUP = "cuda", torch.bfloat16, 8, 572, 5, 64, 20, 3
DTYPE_NAME = str(DTYPE)[6:]


@dataclass(frozen=True)
class Layer:
    name: str
    in_channels: int   # channels of x (without the skip)
    out_channels: int
    size: int          # x's height and width
    skip_channels: int = 0
    skip_size: int = 0

    @property
    def gflop(self) -> float:
        out = self.size - 2
        return 2 * BATCH * out * out * self.out_channels * (self.in_channels + self.skip_channels) * 9 / 1e9


def unet_layers(size: int = SIZE, depth: int = DEPTH, base: int = BASE) -> list[Layer]:
    """The distinct 3x3 conv layers of the paper's network, walked like geometry.trace_sizes."""
    trace = geometry.trace_sizes(size, depth)
    widths = [base * 2 ** level for level in range(depth)]
    layers, channels, s = [], 1, size
    for level, width in enumerate(widths):
        layers += [Layer(f"enc{level}.conv1", channels, width, s), Layer(f"enc{level}.conv2", width, width, s - 2)]
        channels = width
        s = trace.skip_sizes[level] // 2 if level < depth - 1 else s - 4
    for level in reversed(range(depth - 1)):
        up = 2 * s
        layers += [Layer(f"dec{level}.conv1", widths[level], widths[level], up, widths[level], trace.skip_sizes[level]),
                   Layer(f"dec{level}.conv2", widths[level], widths[level], up - 2)]
        s = up - 4
    return layers


LAYERS = unet_layers()
GFLOP_PER_TILE = forward_gflop(SIZE, depth=DEPTH, base_channels=BASE)
POOLED_LAYERS = [layer for layer in LAYERS if layer.name.startswith("enc") and layer.name.endswith("conv2")
                 and layer.name != f"enc{DEPTH - 1}.conv2"]  # the bottleneck is not pooled
_DEFAULT_COMPILED = {"enc0.conv2", "enc4.conv1", "dec0.conv1"}


def _compiled_layers() -> set[str]:
    chosen = os.environ.get("UNET_FAST_BENCH_COMPILED_LAYERS")
    if chosen == "all":
        return {layer.name for layer in LAYERS}
    return set(chosen.split(",")) if chosen else _DEFAULT_COMPILED


def _layer_inputs(layer: Layer):
    g = torch.Generator(device=DEVICE).manual_seed(0)
    cl = torch.channels_last

    def randn(*shape):
        return torch.randn(shape, device=DEVICE, dtype=DTYPE, generator=g)

    x = randn(BATCH, layer.in_channels, layer.size, layer.size).contiguous(memory_format=cl)
    skip = None
    if layer.skip_channels:
        skip = randn(BATCH, layer.skip_channels, layer.skip_size, layer.skip_size).contiguous(memory_format=cl)
    cin = layer.in_channels + layer.skip_channels
    weight = (randn(layer.out_channels, cin, 3, 3) * (2 / (9 * cin)) ** 0.5).contiguous(memory_format=cl)
    return x, weight, randn(layer.out_channels) * 0.1, skip


@pytest.mark.parametrize("impl", ["fused", "cudnn_reference", "compiled_max_autotune"])
@pytest.mark.parametrize("layer", LAYERS, ids=[layer.name for layer in LAYERS])
def test_conv_layer(timed, benchmark, layer, impl):
    if impl == "compiled_max_autotune" and DRY_RUN:
        pytest.skip("dry run: no max-autotune compiles")
    if impl == "compiled_max_autotune" and layer.name not in _compiled_layers():
        pytest.skip("set UNET_FAST_BENCH_COMPILED_LAYERS=all to compile every layer")
    x, weight, bias, skip = _layer_inputs(layer)
    if impl == "fused":
        def fn():
            return conv3x3_relu(x, weight, bias, skip=skip, implementation="triton")
    elif impl == "cudnn_reference":
        def fn():
            return conv3x3_relu_reference(x, weight, bias, skip)
    else:
        compiled = torch.compile(conv3x3_relu_reference, mode="max-autotune", dynamic=False)

        def fn():
            return compiled(x, weight, bias, skip)
    benchmark.group = f"conv3x3 {_describe(layer)}"
    benchmark.extra_info.update(gflop=layer.gflop)
    with torch.inference_mode():
        timed(fn, device=DEVICE, rounds=ROUNDS, warmup_rounds=WARMUP)


def _describe(layer: Layer) -> str:
    return (f"{layer.name} {layer.in_channels}+{layer.skip_channels}->{layer.out_channels} "
            f"at {layer.size} batch {BATCH} {DTYPE_NAME}")


@pytest.mark.parametrize("impl", ["pooled_fused", "fused_then_max_pool2d", "cudnn_reference"])
@pytest.mark.parametrize("layer", POOLED_LAYERS, ids=[layer.name for layer in POOLED_LAYERS])
def test_pooled_layer(timed, benchmark, layer, impl):
    """An encoder level's second conv and its 2x2 max-pool: one kernel, two, or cuDNN + aten."""
    x, weight, bias, _ = _layer_inputs(layer)
    fn = {"pooled_fused": lambda: conv3x3_relu(x, weight, bias, pool=True, implementation="triton"),
          "fused_then_max_pool2d": lambda: F.max_pool2d(conv3x3_relu(x, weight, bias, implementation="triton"), 2),
          "cudnn_reference": lambda: F.max_pool2d(conv3x3_relu_reference(x, weight, bias), 2)}[impl]
    benchmark.group = f"conv3x3+maxpool {_describe(layer)}"
    benchmark.extra_info.update(gflop=layer.gflop)
    with torch.inference_mode():
        timed(fn, device=DEVICE, rounds=ROUNDS, warmup_rounds=WARMUP)


@pytest.mark.parametrize("impl", ["direct", "fused_gemm", "cudnn_reference"])
def test_first_layer(timed, benchmark, impl):
    """The first conv (1 input channel): the direct FMA kernel, the tensor-core GEMM, cuDNN."""
    layer = LAYERS[0]
    x, weight, bias, _ = _layer_inputs(layer)
    fn = {"direct": lambda: conv3x3_relu(x, weight, bias, direct=True, implementation="triton"),
          "fused_gemm": lambda: conv3x3_relu(x, weight, bias, implementation="triton"),
          "cudnn_reference": lambda: conv3x3_relu_reference(x, weight, bias)}[impl]
    benchmark.group = f"first layer {_describe(layer)}"
    benchmark.extra_info.update(gflop=layer.gflop)
    with torch.inference_mode():
        timed(fn, device=DEVICE, rounds=ROUNDS, warmup_rounds=WARMUP)


# UNet(backend="triton") with its switches (both on by default since an H200 measured them)
TRITON_VARIANTS = {
    "triton": dict(pool_epilogue=False, direct_first_layer=False),
    "triton_pool_epilogue": dict(pool_epilogue=True, direct_first_layer=False),
    "triton_direct_first_layer": dict(pool_epilogue=False, direct_first_layer=True),
    "triton_pool_epilogue_direct_first_layer": dict(pool_epilogue=True, direct_first_layer=True),
}


def _models(switches: dict):
    torch.manual_seed(0)
    ref = reference.UNet(depth=DEPTH, base_channels=BASE)
    fast = UNet(depth=DEPTH, base_channels=BASE, backend="triton", **switches)
    fast.load_state_dict(ref.state_dict())
    cl = torch.channels_last
    return (ref.to(DEVICE, DTYPE).to(memory_format=cl), fast.to(DEVICE, DTYPE).to(memory_format=cl))


@pytest.mark.parametrize("impl", [*TRITON_VARIANTS, "reference_eager", "compiled_reference_max_autotune"])
@pytest.mark.parametrize("mode", ["forward", "forward+backward"])
def test_unet(timed, benchmark, mode, impl):
    if impl == "compiled_reference_max_autotune" and DRY_RUN:
        pytest.skip("dry run: no max-autotune compiles")
    ref, fast = _models(TRITON_VARIANTS.get(impl, {}))
    if impl in TRITON_VARIANTS:
        model = fast
    elif impl == "reference_eager":
        model = ref
    else:
        model = torch.compile(ref, mode="max-autotune", dynamic=False)
    x = torch.randn(BATCH, 1, SIZE, SIZE, device=DEVICE, dtype=DTYPE).contiguous(memory_format=torch.channels_last)
    if mode == "forward":
        def fn():
            with torch.no_grad():
                return model(x)
    else:
        grad = torch.randn(BATCH, 2, ref.output_size(SIZE), ref.output_size(SIZE), device=DEVICE, dtype=DTYPE)

        def fn():
            model.zero_grad(set_to_none=True)
            model(x).backward(grad)
    benchmark.group = f"unet {mode} {SIZE}x{SIZE} batch {BATCH} {DTYPE_NAME} channels_last"
    flop_factor = 1 if mode == "forward" else 3  # backward costs about twice the forward
    benchmark.extra_info.update(gflop=GFLOP_PER_TILE * BATCH * flop_factor, tiles=BATCH)
    timed(fn, device=DEVICE, rounds=ROUNDS, warmup_rounds=WARMUP)
