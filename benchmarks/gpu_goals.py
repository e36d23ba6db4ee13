"""The GPU goal benchmarks, one stage per call, each appending JSON records to OUTDIR/results.jsonl.

    python benchmarks/gpu_goals.py STAGE --out OUTDIR [--dry-run]

Stages (benchmarks/gpu_run.py runs them in order of value, each with a time cap):
  ceilings      device copy bandwidth and bf16 matrix rate (the card's two ceilings)
  network       the paper's network, batch 8, 572 x 572, bf16, channels_last, forward and
                forward+backward: UNet(backend="triton") (kernel switches off and on), the torch
                backend, the reference eager on cuDNN (cudnn.benchmark on) and torch.compile of the
                reference (default mode); effective TFLOP/s and peak memory
  profile       where a forward+backward step's GPU time goes: torch.profiler's kernels of UNet(triton)
                and of torch.compile(reference), grouped (our convs, cuDNN/CUTLASS convs, the rest),
                the top kernels by time, and the device time against the step's wall time
  max_autotune  torch.compile(reference, mode="max-autotune"): the goals' baseline (run apart, capped;
                $UNET_FAST_BENCH_MODES=forward+backward leaves the forward's compile out)
  layers        each of the 18 distinct 3x3 conv layers: fused vs cuDNN, TFLOP/s; pooled epilogue and
                direct first layer against their alternatives
  loss          weighted softmax cross-entropy, forward + backward, GB/s: each kernel vs the composite
  augment       elastic deformation of 64 x 512 x 512 image + labels on the GPU vs the CPU peer per sample
  pipeline      predict_tiled (a set of 512 x 512 images; one large image) vs the bare model forward
                at the same tile and batch: the pipeline's overhead

Every timed candidate is first checked against its baseline on the same inputs (relative error
recorded; a failed check is recorded as such). Times: CUDA events, L2 flushed, medians with IQR
(benchmarks/timing.py). --dry-run: the same code on the CPU at tiny sizes (Triton's interpreter),
to prove the script runs; its numbers mean nothing.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.append(str(Path(__file__).resolve().parents[1] / "tests"))
import triton_interpreter_fix  # noqa: E402,F401  (--dry-run: Triton 3.5/3.6's interpreter under numpy >= 2.4)
from timing import copy_bandwidth, matmul_tflops, measure  # noqa: E402

from unet_fast import UNet, augment, geometry, reference  # noqa: E402
from unet_fast.ops import conv3x3_relu, weighted_softmax_cross_entropy  # noqa: E402


class Setting:
    """Shapes and device: the paper's on a GPU, tiny ones for the dry run."""

    def __init__(self, dry_run: bool):
        self.dry_run = dry_run
        if dry_run:  # the smallest network with a skip, a pool and an up-convolution: depth 2, 20 -> 4 px
            self.device, self.dtype, self.batch, self.size, self.depth, self.base = "cpu", torch.float32, 1, 20, 2, 4
            self.loss_shapes = [(1, 2, 12, 12)]
            self.augment_batch, self.augment_size = 2, 32
            self.images, self.image_size, self.large_size = 2, 24, 60
            self.time_kwargs = dict(warmup=0, min_reps=1, max_reps=1, max_seconds=0.0)
        else:
            self.device, self.dtype, self.batch, self.size, self.depth, self.base = "cuda", torch.bfloat16, 8, 572, 5, 64
            self.loss_shapes = [(8, 2, 512, 512), (8, 2, 388, 388)]
            self.augment_batch, self.augment_size = 64, 512
            self.images, self.image_size, self.large_size = 32, 512, 8192
            self.time_kwargs = dict(warmup=3, min_reps=10, max_reps=50, max_seconds=1.0)

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    def time(self, fn, **overrides):
        """measure(fn) with this setting's repetitions; ``overrides`` apply on a GPU (the dry run times once)."""
        return measure(fn, self.device, **(self.time_kwargs if self.dry_run else {**self.time_kwargs, **overrides}))


class Recorder:
    def __init__(self, out: Path, stage: str):
        self.path = out / "results.jsonl"
        self.stage = stage

    def __call__(self, name: str, **fields) -> None:
        record = {"stage": self.stage, "name": name, **fields}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        shown = ", ".join(f"{k}={v}" for k, v in fields.items() if k != "timing")
        timing = fields.get("timing")
        print(f"[{self.stage}] {name}: {timing['median_ms']:.3f} ms; {shown}" if timing else
              f"[{self.stage}] {name}: {shown}", flush=True)


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    a, e = actual.detach().double(), expected.detach().double()
    return ((a - e).norm() / e.norm().clamp_min(1e-30)).item()


def network_gflop(depth: int, base: int, size: int, in_channels: int = 1, num_classes: int = 2) -> float:
    """Forward GFLOP of one tile, from the network's shapes: every conv, up-conv and the 1x1 head,
    read off a forward pass on the meta device (no memory, no arithmetic)."""
    model = reference.UNet(in_channels, num_classes, depth, base).to("meta")
    flop = 0

    def count(module, inputs, output):
        nonlocal flop
        if isinstance(module, torch.nn.ConvTranspose2d):  # each input pixel meets every kernel tap once
            taps = module.kernel_size[0] * module.kernel_size[1]
            flop += 2 * inputs[0][0].numel() * module.out_channels * taps
        else:
            taps = module.kernel_size[0] * module.kernel_size[1]
            flop += 2 * output[0].numel() * module.in_channels * taps

    hooks = [m.register_forward_hook(count) for m in model.modules()
             if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    with torch.no_grad():
        model(torch.empty(1, in_channels, size, size, device="meta"))
    for hook in hooks:
        hook.remove()
    return flop / 1e9


# ----------------------------------------------------------------------------- stages

def stage_ceilings(s: Setting, record: Recorder) -> None:
    if s.device != "cuda":
        record("copy_bandwidth", skipped="dry run: no device ceilings")
        return
    record("copy_bandwidth", gbps=round(copy_bandwidth(s.device), 1))
    record("bf16_matmul", tflops=round(matmul_tflops(s.device), 1))


NETWORK_VARIANTS = {
    "triton": dict(backend="triton"),  # the defaults: pooled epilogue and direct first layer on
    "triton_plain_kernels": dict(backend="triton", pool_epilogue=False, direct_first_layer=False),
    "torch_backend": dict(backend="torch"),
}
# The dry run's variants: every kernel of the others (plain, pooled epilogue, direct first layer) at a
# third of the interpreter's time.
DRY_RUN_VARIANTS = ("triton", "triton_plain_kernels", "torch_backend")


def _network_models(s: Setting):
    torch.manual_seed(0)
    ref = reference.UNet(depth=s.depth, base_channels=s.base).to(s.device, s.dtype)
    return ref.to(memory_format=torch.channels_last).eval()


def _fast_model(s: Setting, ref, variant: str):
    """UNet with NETWORK_VARIANTS[variant]'s switches and the reference's weights, as the network stages run it."""
    model = UNet(depth=s.depth, base_channels=s.base, **NETWORK_VARIANTS[variant]).to(s.device, s.dtype)
    model.load_state_dict(ref.state_dict())
    return model.to(memory_format=torch.channels_last).eval()


def _network_step(model, x, grad, mode: str):
    if mode == "forward":
        def fn():
            with torch.no_grad():
                return model(x)
    else:
        def fn():
            model.zero_grad(set_to_none=True)
            out = model(x)
            out.backward(grad)
            return out
    return fn


def _time_network(s, record, name, model, reference, x, grad, mode, extra=None):
    """Check the candidate's output (and, with backward, its first layer's weight gradient) against the
    fp32 reference with flash-attention's rule: at most twice cuDNN's error in the same dtype; then time it."""
    fn = _network_step(model, x, grad, mode)
    start = time.perf_counter()
    out = fn()
    first_call_s = time.perf_counter() - start
    error = relative_error(out, reference["fp32_out"])
    fields = dict(mode=mode, error=round(error, 6), cudnn_error=round(reference["cudnn_out_error"], 6),
                  first_call_s=round(first_call_s, 2), **(extra or {}))
    correct = error <= 2 * reference["cudnn_out_error"] + 1e-6
    if mode == "forward+backward":
        grad_error = relative_error(next(model.parameters()).grad, reference["fp32_grad"])
        fields.update(grad_error=round(grad_error, 6), cudnn_grad_error=round(reference["cudnn_grad_error"], 6))
        correct = correct and grad_error <= 2 * reference["cudnn_grad_error"] + 1e-6
    if s.device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    timing = s.time(fn)
    if s.device == "cuda":
        fields["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2 ** 30, 2)
    gflop = network_gflop(s.depth, s.base, s.size) * s.batch * (1 if mode == "forward" else 3)
    record(name, timing=timing.as_dict(), correct=correct, gflop=round(gflop, 1), batch=s.batch,
           tflops=round(gflop / timing.median_ms, 1), ms_per_tile=round(timing.median_ms / s.batch, 4), **fields)


def _network_inputs(s, ref):
    g = torch.Generator(device=s.device).manual_seed(1)
    x = torch.randn(s.batch, 1, s.size, s.size, device=s.device, generator=g).to(s.dtype)
    x = x.contiguous(memory_format=torch.channels_last)
    out = ref.output_size(s.size)
    grad = torch.randn(s.batch, 2, out, out, device=s.device, generator=g).to(s.dtype)
    return x, grad


def _reference_results(s, ref, x, grad):
    """The fp32 reference's output and first weight gradient (TF32 off), and cuDNN's error in s.dtype."""
    fp32 = reference.UNet(depth=s.depth, base_channels=s.base).to(s.device).to(memory_format=torch.channels_last)
    fp32.load_state_dict(ref.state_dict())
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        with torch.no_grad():
            fp32_out = fp32(x.float())
        fp32(x.float()).backward(grad.float())
    fp32_grad = next(fp32.parameters()).grad
    with torch.no_grad():
        cudnn_out = ref(x)
    ref.zero_grad(set_to_none=True)
    ref(x).backward(grad)
    cudnn_grad = next(ref.parameters()).grad
    return {"fp32_out": fp32_out, "fp32_grad": fp32_grad.clone(),
            "cudnn_out_error": relative_error(cudnn_out, fp32_out),
            "cudnn_grad_error": relative_error(cudnn_grad, fp32_grad)}


def _selected(names, env="UNET_FAST_BENCH_VARIANTS"):
    """The variants (modes) named in $UNET_FAST_BENCH_VARIANTS (or ``env``; comma-separated; all when unset)."""
    chosen = os.environ.get(env)
    return [n for n in names if not chosen or n in chosen.split(",")]


@contextlib.contextmanager
def conv_table(path):
    """The conv3x3 kernels choose their tiles from the table at ``path`` inside this context: the table that
    ships timed beside the one the tune stage just wrote, in the same run, before either is committed."""
    from unet_fast.ops.triton import conv3x3_configs as configs
    saved = configs.TABLE_PATH
    configs.TABLE_PATH = Path(path)
    configs.table.cache_clear()
    try:
        yield
    finally:
        configs.TABLE_PATH = saved
        configs.table.cache_clear()


def stage_network(s: Setting, record: Recorder) -> None:
    torch.backends.cudnn.benchmark = True  # the cuDNN baseline at full strength
    ref = _network_models(s)
    x, grad = _network_inputs(s, ref)
    reference_results = _reference_results(s, ref, x, grad)
    modes = ("forward", "forward+backward")
    for mode in modes:
        _time_network(s, record, "reference_eager_cudnn", ref, reference_results, x, grad, mode)
    for name in _selected(DRY_RUN_VARIANTS if s.dry_run else NETWORK_VARIANTS):
        model = _fast_model(s, ref, name)
        for mode in modes:
            _time_network(s, record, name, model, reference_results, x, grad, mode)
        del model
    shipped = os.environ.get("UNET_FAST_SHIPPED_TABLE")  # set by gpu_run when its tune stage rewrote the table
    if shipped and Path(shipped).exists() and not s.dry_run and _selected(["triton_shipped_table"]):
        with conv_table(shipped):
            model = _fast_model(s, ref, "triton")
            for mode in modes:
                _time_network(s, record, "triton_shipped_table", model, reference_results, x, grad, mode)
            del model
    if s.dry_run:
        record("compiled_reference_default", skipped="dry run: no torch.compile")
        return
    if not _selected(["compiled_reference_default"]):
        return
    compiled = torch.compile(ref)
    for mode in modes:
        _time_network(s, record, "compiled_reference_default", compiled, reference_results, x, grad, mode)


def _kernel_group(name: str) -> str:
    """Whose kernel: ours, cuDNN's/CUTLASS's convolutions, Triton's elementwise (inductor's fused kernels are
    named after the ops they absorb, "triton_poi_fused_convolution_relu_3": not convolutions), or aten's."""
    lowered = name.lower()
    if "conv3x3" in lowered or "wgrad_kernel" in lowered:
        return "ours: conv3x3"
    if lowered.startswith("triton_") or "relu_pool" in lowered or "crop_concat" in lowered:
        return "Triton elementwise/reductions"
    if any(k in lowered for k in ("cudnn", "xmma", "implicit_gemm", "dgrad", "wgrad", "conv", "cutlass", "sm90_")):
        return "cuDNN/CUTLASS conv"
    return "other (aten elementwise, copies, fills)"


def _profile_step(s, record, name, fn, mode: str = "forward+backward") -> None:
    """torch.profiler over 3 calls of ``fn`` after 2 warm-up calls (the dry run: 1, none): device time per
    step by kernel group, the top kernels, and the wall time per step (a step whose device time is far
    below its wall time is bound by the host)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    warmup, steps = (0, 1) if s.dry_run else (2, 3)
    for _ in range(warmup):
        fn()
    if s.device == "cuda":
        torch.cuda.synchronize()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if s.device == "cuda" else [])
    start = time.perf_counter()
    with profile(activities=activities) as prof:
        for _ in range(steps):
            fn()
        if s.device == "cuda":
            torch.cuda.synchronize()
    wall_ms = (time.perf_counter() - start) * 1e3 / steps
    kernels = []
    for event in prof.key_averages():
        device_us = getattr(event, "self_device_time_total", None)
        if device_us is None:
            device_us = getattr(event, "self_cuda_time_total", 0)
        if device_us and getattr(event, "device_type", None) == DeviceType.CUDA:  # kernels, not the ops above them
            kernels.append((event.key, device_us / 1e3 / steps, event.count / steps))
    kernels.sort(key=lambda k: -k[1])
    device_ms = sum(k[1] for k in kernels)
    groups: dict[str, float] = {}
    for key, ms, _ in kernels:
        group = _kernel_group(key)
        groups[group] = groups.get(group, 0.0) + ms
    # wall time includes the CPU profiler's own overhead: it overstates how much a step is bound by the host
    record(name, mode=mode, batch=s.batch, wall_ms_per_step=round(wall_ms, 3),
           device_ms_per_step=round(device_ms, 3),
           groups_ms={k: round(v, 3) for k, v in sorted(groups.items(), key=lambda kv: -kv[1])},
           top_kernels=[f"{ms:.3f} ms x{calls:g} {key[:90]}" for key, ms, calls in kernels[:25]])


#: the profile stage's modes: the forward alone too, since per layer (the tuner) our forward kernels beat cuDNN's
#: on most layers, yet the network's forward lost to the compiled reference's (run 4: 0.879 against 0.817 ms a tile)
PROFILE_MODES = ("forward", "forward+backward")


def stage_profile(s: Setting, record: Recorder) -> None:
    torch.backends.cudnn.benchmark = True
    ref = _network_models(s)
    x, grad = _network_inputs(s, ref)
    model = _fast_model(s, ref, "triton")
    for mode in PROFILE_MODES:
        _profile_step(s, record, "triton", _network_step(model, x, grad, mode), mode)
    del model
    if s.dry_run:
        record("compiled_reference_default", skipped="dry run: no torch.compile")
        return
    compiled = torch.compile(ref)
    for mode in PROFILE_MODES:
        _profile_step(s, record, "compiled_reference_default", _network_step(compiled, x, grad, mode), mode)


def stage_max_autotune(s: Setting, record: Recorder) -> None:
    if s.dry_run:
        record("compiled_reference_max_autotune", skipped="dry run: no max-autotune compiles")
        return
    torch.backends.cudnn.benchmark = True
    ref = _network_models(s)
    x, grad = _network_inputs(s, ref)
    reference_results = _reference_results(s, ref, x, grad)
    compiled = torch.compile(ref, mode="max-autotune")
    # each mode compiles a graph of its own (the forward's took 149 s on an H200): one alone fits a short run
    for mode in _selected(("forward", "forward+backward"), "UNET_FAST_BENCH_MODES"):
        _time_network(s, record, "compiled_reference_max_autotune", compiled, reference_results, x, grad, mode)


def _layer_inputs(s: Setting, layer):
    g = torch.Generator(device=s.device).manual_seed(0)
    cl = torch.channels_last

    def randn(*shape):
        return torch.randn(shape, device=s.device, generator=g).to(s.dtype)

    x = randn(s.batch, layer.in_channels, layer.size, layer.size).contiguous(memory_format=cl)
    skip = None
    if layer.skip_channels:
        skip = randn(s.batch, layer.skip_channels, layer.skip_size, layer.skip_size).contiguous(memory_format=cl)
    cin = layer.in_channels + layer.skip_channels
    weight = (randn(layer.out_channels, cin, 3, 3) * (2 / (9 * cin)) ** 0.5).contiguous(memory_format=cl)
    return x, weight, randn(layer.out_channels) * 0.1, skip


def cudnn_conv_relu(x, weight, bias, skip=None):
    if skip is not None:
        x = torch.cat([reference.center_crop(skip, x.shape[-2:]), x], dim=1)
    return F.relu(F.conv2d(x, weight, bias))


def stage_layers(s: Setting, record: Recorder) -> None:
    torch.backends.cudnn.benchmark = True
    layers = geometry.conv_layers(s.size, s.depth, s.base)
    last_level = f"enc{s.depth - 1}."
    with torch.no_grad():  # not inference_mode: the per-layer backward needs ordinary tensors
        for layer in layers:
            x, weight, bias, skip = _layer_inputs(s, layer)
            gflop = layer.flop(s.batch) / 1e9
            want = cudnn_conv_relu(x, weight, bias, skip)
            candidates = {"cudnn": lambda: cudnn_conv_relu(x, weight, bias, skip),
                          "fused": lambda: conv3x3_relu(x, weight, bias, skip=skip)}
            if layer.name == "enc0.conv1":
                candidates["fused_direct"] = lambda: conv3x3_relu(x, weight, bias, direct=True)
            for impl, fn in candidates.items():
                error = relative_error(fn(), want)
                timing = s.time(fn)
                record(f"{layer.name}/{impl}", layer=layer.name, impl=impl, timing=timing.as_dict(),
                       error_vs_cudnn=round(error, 6), correct=error < 2e-2, gflop=round(gflop, 2),
                       tflops=round(gflop / timing.median_ms, 1),
                       shape=f"{layer.in_channels}+{layer.skip_channels}->{layer.out_channels} at {layer.size}")
            _time_layer_backward(s, record, layer, x, weight, bias, skip, gflop)
            if layer.name.endswith("conv2") and layer.name.startswith("enc") and not layer.name.startswith(last_level):
                want_pool = F.max_pool2d(want, 2)
                pooled = {"cudnn_then_pool": lambda: F.max_pool2d(cudnn_conv_relu(x, weight, bias), 2),
                          "fused_then_pool": lambda: F.max_pool2d(conv3x3_relu(x, weight, bias), 2),
                          "fused_pool_epilogue": lambda: conv3x3_relu(x, weight, bias, pool=True)[1]}
                for impl, fn in pooled.items():
                    error = relative_error(fn(), want_pool)
                    timing = s.time(fn)
                    record(f"{layer.name}+pool/{impl}", layer=layer.name, impl=impl, timing=timing.as_dict(),
                           error_vs_cudnn=round(error, 6), correct=error < 2e-2, gflop=round(gflop, 2),
                           tflops=round(gflop / timing.median_ms, 1))


def _time_layer_backward(s, record, layer, x, weight, bias, skip, gflop):
    """One layer's forward + backward through autograd (every input's gradient but the first layer's
    image), ours against cuDNN's: what a training step pays per layer, masks and reductions included."""
    grad = torch.randn(s.batch, layer.out_channels, layer.output_size, layer.output_size, device=s.device,
                       dtype=s.dtype).contiguous(memory_format=torch.channels_last)
    wants_x = layer.name != "enc0.conv1"
    leaves = [t.detach().requires_grad_(t is not x or wants_x) if t is not None else None
              for t in (x, weight, bias, skip)]
    inputs = [t for t in leaves if t is not None and t.requires_grad]

    def step(fn):
        def run():
            out = fn(*leaves)
            return torch.autograd.grad(out, inputs, grad)
        return run

    def cudnn_step(x_, w_, b_, skip_):
        return cudnn_conv_relu(x_, w_, b_, skip_)

    def fused_step(x_, w_, b_, skip_):
        return conv3x3_relu(x_, w_, b_, skip=skip_)

    with torch.enable_grad():
        want = step(cudnn_step)()
        for impl, fn in (("cudnn_fwd_bwd", cudnn_step), ("fused_fwd_bwd", fused_step)):
            got = step(fn)()
            error = max(relative_error(g, w) for g, w in zip(got, want))
            timing = s.time(step(fn))
            record(f"{layer.name}/{impl}", layer=layer.name, impl=impl, timing=timing.as_dict(),
                   error_vs_cudnn=round(error, 6), correct=error < 5e-2, gflop=round(3 * gflop, 2),
                   tflops=round(3 * gflop / timing.median_ms, 1))


def _loss_backends():
    """(name, fn(logits, target, weight) -> gradient) for each loss implementation this process has."""
    def public(logits, target, weight):
        logits.grad = None
        weighted_softmax_cross_entropy(logits, target, weight).backward()
        return logits.grad

    def composite(logits, target, weight):
        logits.grad = None
        (F.cross_entropy(logits, target.long(), reduction="none") * weight).mean().backward()
        return logits.grad

    backends = {"fused_default": public, "composite": composite}
    for name in ("weighted_cross_entropy", "weighted_cross_entropy_triton"):
        try:
            op = getattr(torch.ops.unet_fast, name)
        except (AttributeError, RuntimeError):
            continue

        def raw(logits, target, weight, op=op):  # loss and unscaled gradient in one kernel, then the scale
            outputs = op(logits.detach(), target, weight, 1, -100, True)
            return outputs[1] / outputs[2].clamp(min=1)

        backends["op_" + name] = raw
    return backends


def stage_loss(s: Setting, record: Recorder) -> None:
    backends = _loss_backends()
    for shape in s.loss_shapes:
        n, c, h, w = shape
        g = torch.Generator(device=s.device).manual_seed(0)
        logits = torch.randn(shape, device=s.device, generator=g).requires_grad_()
        target = torch.randint(0, c, (n, h, w), device=s.device, generator=g).to(torch.uint8)
        weight = torch.rand(n, h, w, device=s.device, generator=g) * 5
        gbytes = (2 * logits.numel() * 4 + target.numel() + weight.numel() * 4) / 1e9
        want = backends["composite"](logits, target, weight).clone()
        for name, fn in backends.items():
            if s.device != "cuda" and name == "op_weighted_cross_entropy_triton" and not s.dry_run:
                continue
            try:
                error = relative_error(fn(logits, target, weight), want)
            except RuntimeError as failure:  # an op without a kernel for this device
                record(f"{shape}/{name}", skipped=str(failure).splitlines()[0][:200])
                continue
            timing = s.time(lambda: fn(logits, target, weight))
            record(f"{'x'.join(map(str, shape))}/{name}", impl=name, shape=list(shape), timing=timing.as_dict(),
                   error_vs_composite=round(error, 8), correct=error < 1e-4, gbytes=round(gbytes, 4),
                   gbps=round(gbytes / (timing.median_ms / 1e3), 1))


def _cpu_peer():
    """The CPU baseline of the augmentation goal: elasticdeform's C code, else the same pipeline in scipy."""
    try:
        import elasticdeform

        def run(image, labels):
            return elasticdeform.deform_random_grid([image, labels], sigma=10, points=3, order=[3, 0])
        return "elasticdeform", run
    except ImportError:
        import scipy.ndimage as ndi

        def run(image, labels):
            lattice = np.random.randn(2, 3, 3) * 10
            where = np.meshgrid(*(np.linspace(0, 2, n) for n in image.shape), indexing="ij")
            field = [ndi.map_coordinates(lattice[d], where, order=3, mode="mirror") for d in range(2)]
            points = [np.arange(image.shape[0])[:, None] + field[0], np.arange(image.shape[1])[None, :] + field[1]]
            return (ndi.map_coordinates(image, points, order=3, mode="mirror"),
                    ndi.map_coordinates(labels, points, order=0, mode="mirror"))
        return "scipy_map_coordinates", run


def stage_augment(s: Setting, record: Recorder) -> None:
    b, size = s.augment_batch, s.augment_size
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(b, 1, size, size, generator=gen)
    labels = torch.randint(0, 20, (b, size, size), generator=gen)
    peer_name, peer = _cpu_peer()
    one_image, one_labels = image[0, 0].numpy(), labels[0].numpy()
    repetitions = s.time_kwargs if s.dry_run else dict(warmup=1, min_reps=5, max_reps=20, max_seconds=2.0)
    peer_timing = measure(lambda: peer(one_image, one_labels), "cpu", **repetitions)
    record(f"cpu_peer_{peer_name}", impl=peer_name, per_sample_ms=round(peer_timing.median_ms, 3),
           timing=peer_timing.as_dict())
    image_d, labels_d = image.to(s.device), labels.to(s.device)
    generator = torch.Generator(device=s.device).manual_seed(1)
    displacement = torch.zeros(2, 3, 3)  # identity field: the result must be the input
    same = augment.elastic_deform(image_d, labels_d, displacement=displacement)
    image_error = (same[0] - image_d).abs().max().item()
    labels_changed = (same[1] != labels_d).float().mean().item()
    correct = image_error < 1e-4 and labels_changed == 0
    timing = s.time(lambda: augment.elastic_deform(image_d, labels_d, generator=generator))
    per_sample = timing.median_ms / b
    record("unet_fast_batch", impl="unet_fast", batch=b, timing=timing.as_dict(), correct=correct,
           identity_image_error=image_error, identity_labels_changed=labels_changed,
           per_sample_ms=round(per_sample, 5), speedup_per_sample=round(peer_timing.median_ms / per_sample, 1),
           peer=peer_name)


def stage_pipeline(s: Setting, record: Recorder) -> None:
    from unet_fast.inference import plan_tiles, predict_images, predict_tiled

    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    model = UNet(depth=s.depth, base_channels=s.base).to(s.device).eval()
    dtype = "bf16" if s.device == "cuda" else "fp32"
    autocast_dtype = torch.bfloat16 if s.device == "cuda" else torch.float32
    rng = np.random.default_rng(0)

    def bare_forward(tile, batch, calls):
        x = torch.randn(batch, 1, tile[0], tile[1], device=s.device).contiguous(memory_format=torch.channels_last)
        model.to(memory_format=torch.channels_last)

        def run():
            with torch.inference_mode(), torch.autocast(s.device, dtype=autocast_dtype, enabled=s.device == "cuda"):
                for _ in range(calls):
                    model(x).argmax(1)
        return run

    # a set of images, each one tile, one after the other (as `unet-fast segment` does a folder)
    images = [rng.random((s.image_size, s.image_size), dtype=np.float32) for _ in range(s.images)]
    plan = plan_tiles(model, (s.image_size, s.image_size), device=s.device, dtype=dtype)

    def folder(cuda_graphs):
        def run():
            for image in images:
                predict_tiled(model, image, dtype=dtype, progress=False, cuda_graphs=cuda_graphs)
        return run

    bare = s.time(bare_forward(plan.tile, 1, s.images), min_reps=3, max_reps=5)
    for name, graphs in (("images_512", s.device == "cuda"), ("images_512_eager", False)):
        piped = s.time(folder(graphs), min_reps=3, max_reps=5)  # a graph is kept on the model after the first
        record(name, images=s.images, tile=list(plan.tile), batch=plan.batch_size, cuda_graphs=graphs,
               timing=piped.as_dict(), bare_timing=bare.as_dict(),
               images_per_s=round(s.images / (piped.median_ms / 1e3), 1),
               overhead=round(piped.median_ms / bare.median_ms - 1, 4))
    # the same images through one predict_images call (what `unet-fast segment` does with a folder of small
    # files of one shape): their tiles share the batches
    one_by_one = s.time(folder(s.device == "cuda"), min_reps=3, max_reps=5)
    together = s.time(lambda: predict_images(model, images, dtype=dtype, progress=False), min_reps=3, max_reps=5)
    record("images_512_together", images=s.images, timing=together.as_dict(), one_by_one_timing=one_by_one.as_dict(),
           images_per_s=round(s.images / (together.median_ms / 1e3), 1),
           speedup=round(one_by_one.median_ms / together.median_ms, 3))

    large = rng.random((s.large_size, s.large_size), dtype=np.float32)
    plan = plan_tiles(model, large.shape, device=s.device, dtype=dtype)
    batches = -(-plan.tiles // plan.batch_size)
    # run 4 ran out of its cap in this part with no line to say where: one per phase
    began = time.perf_counter()
    print(f"[pipeline] large image {s.large_size}^2: {plan.explain()}", flush=True)
    first = bare_forward(plan.tile, plan.batch_size, batches)
    first()
    print(f"[pipeline] bare forward, first call: {time.perf_counter() - began:.1f} s", flush=True)
    bare = s.time(first, min_reps=2, max_reps=3)
    print(f"[pipeline] bare forward timed: {bare.median_ms:.0f} ms ({time.perf_counter() - began:.1f} s)", flush=True)
    if s.device == "cuda":  # H100 run of 2026-11-26: out of memory at batch 19 after this forward; peak to compare
        torch.cuda.reset_peak_memory_stats()
    predict_tiled(model, large, dtype=dtype, progress=False)
    peak_gib = round(torch.cuda.max_memory_allocated() / 2 ** 30, 2) if s.device == "cuda" else None
    print(f"[pipeline] predict_tiled, first call: {time.perf_counter() - began:.1f} s; peak {peak_gib} GiB", flush=True)
    piped = s.time(lambda: predict_tiled(model, large, dtype=dtype, progress=False), min_reps=2, max_reps=3)
    record("large_image", size=s.large_size, tile=list(plan.tile), batch=plan.batch_size, tiles=plan.tiles,
           timing=piped.as_dict(), bare_timing=bare.as_dict(),
           tiles_per_s=round(plan.tiles / (piped.median_ms / 1e3), 1),
           overhead=round(piped.median_ms / bare.median_ms - 1, 4), plan=plan.explain(), peak_memory_gib=peak_gib)


STAGES = {"ceilings": stage_ceilings, "network": stage_network, "profile": stage_profile,
          "max_autotune": stage_max_autotune,
          "layers": stage_layers, "loss": stage_loss, "augment": stage_augment, "pipeline": stage_pipeline}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=sorted(STAGES))
    parser.add_argument("--out", type=Path, required=True, help="folder of results.jsonl")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, Triton's interpreter")
    args = parser.parse_args(argv)
    if args.dry_run and os.environ.get("TRITON_INTERPRET") != "1":
        print("gpu_goals: --dry-run needs TRITON_INTERPRET=1 in the environment (Triton reads it at import)",
              file=sys.stderr)
        return 2
    if not args.dry_run and not torch.cuda.is_available():
        print("gpu_goals: no CUDA device (use --dry-run on a CPU)", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    STAGES[args.stage](Setting(args.dry_run), Recorder(args.out, args.stage))
    return 0


if __name__ == "__main__":
    sys.exit(main())
