"""Compile planned Triton launches for a GPU target without a GPU, and read what ptxas says.

A launch planned on meta tensors (unet_fast.ops.triton.conv3x3.plan_*) is specialised the way
Triton's JIT would specialise it (ints equal to 1 become constants, pointers and ints divisible
by 16 get the divisibility hint), compiled with triton.compile(ASTSource(...), target=GPUTarget),
and the PTX is assembled once more with ptxas -v for registers and spills.

    python tests/triton_static.py [--quick] [--json]   # every shipped configuration, as a table or JSON lines
    python tests/triton_static.py --table [--json]     # every configuration of the measured table

Run it in a process without TRITON_INTERPRET=1: interpreted kernels cannot be compiled.
"""
from __future__ import annotations

import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass

import torch

SMEM_LIMIT = {90: 228 * 1024, 80: 164 * 1024}  # per block, H100 / A100 (bytes)
_TRITON_DTYPE = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}


@dataclass
class Compiled:
    name: str
    capability: int
    ptx: str
    shared: int
    registers: int
    spill_bytes: int

    @property
    def uses_wgmma(self) -> bool:
        return "wgmma.mma_async" in self.ptx

    @property
    def uses_tma(self) -> bool:
        return "cp.async.bulk.tensor" in self.ptx

    @property
    def uses_mma(self) -> bool:
        return re.search(r"\bmma\.sync\.aligned", self.ptx) is not None


def _specialise(kernel, args: tuple, meta: dict):
    """(signature, constexprs, attrs) as triton's JIT builds them for these argument values."""
    names = kernel.arg_names
    signature, constexprs, attrs = {}, {}, {}
    values = dict(zip(names, args))
    values.update({k: v for k, v in meta.items() if k in names})
    for index, name in enumerate(names):
        value = values[name]
        if isinstance(value, torch.Tensor):
            signature[name] = "*" + _TRITON_DTYPE[value.dtype]
            attrs[(index,)] = [["tt.divisibility", 16]]  # allocator pointers are 256-byte aligned
        elif isinstance(value, bool) or not isinstance(value, int) or name in meta:
            signature[name] = "constexpr"
            constexprs[name] = value
        elif getattr(kernel.params[index], "do_not_specialize", False):  # @triton.jit(do_not_specialize=...)
            signature[name] = "i32" if -2**31 <= value < 2**31 else "i64"
        elif value == 1:
            signature[name] = "constexpr"
            constexprs[name] = 1
        else:
            signature[name] = "i32" if -2**31 <= value < 2**31 else "i64"
            if value % 16 == 0:
                attrs[(index,)] = [["tt.divisibility", 16]]
    return signature, constexprs, attrs


def _ast_source(kernel, signature, constexprs, attrs):
    from triton.compiler import ASTSource
    params = inspect.signature(ASTSource.__init__).parameters
    if "constexprs" in params:  # triton >= 3.3 (3.6 on the GPU machines, 3.9 here)
        return ASTSource(kernel, signature, constexprs=constexprs, attrs=attrs)
    return ASTSource(kernel, signature, constants=constexprs, attrs=attrs)


def _ptxas(capability: int) -> str:
    """The ptxas triton itself uses for this target (its PTX version matches), else the one on PATH."""
    try:
        from triton.backends.nvidia.compiler import get_ptxas
        return get_ptxas(capability).path  # triton >= 3.4 picks per architecture
    except (ImportError, TypeError, AttributeError):
        pass
    try:
        from triton import knobs
        return knobs.nvidia.ptxas.path
    except (ImportError, AttributeError):
        found = shutil.which("ptxas")
        if found is None:
            raise FileNotFoundError("ptxas not found (neither triton's nor on PATH)") from None
        return found


def ptxas_report(ptx: str, capability: int) -> tuple[int, int]:
    """(registers, spill bytes) of the kernel in ``ptx`` per ptxas -v."""
    arch = f"sm_{capability}a" if capability == 90 else f"sm_{capability}"
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "kernel.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        log = subprocess.run([_ptxas(capability), f"-arch={arch}", "-v", src, "-o", os.path.join(tmp, "kernel.cubin")],
                             capture_output=True, text=True, check=True).stderr
    registers = max(int(r) for r in re.findall(r"Used (\d+) registers", log))
    spills = sum(int(b) for b in re.findall(r"(\d+) bytes spill (?:stores|loads)", log))
    return registers, spills


def compile_launch(launch, capability: int) -> Compiled:
    """Compile one planned launch for sm_<capability> (80 or 90)."""
    import triton
    from triton.backends.compiler import GPUTarget
    signature, constexprs, attrs = _specialise(launch.kernel, launch.args, launch.meta)
    options = {k: launch.meta[k] for k in ("num_warps", "num_stages") if k in launch.meta}
    compiled = triton.compile(_ast_source(launch.kernel, signature, constexprs, attrs),
                              target=GPUTarget("cuda", capability, 32), options=options)
    ptx = compiled.asm["ptx"]
    registers, spills = ptxas_report(ptx, capability)
    return Compiled(launch.kernel.__name__, capability, ptx, compiled.metadata.shared, registers, spills)


def layer_launches(dtype: torch.dtype, cin: int, cout: int, size: int, skip_channels: int = 0,
                   batch: int = 8, padding: int = 0, configs: dict | None = None):
    """The forward, dgrad and wgrad launches of one U-Net 3x3 layer, planned on meta tensors (NHWC).

    configs: {kind: Config} to plan with instead of the table's or the heuristic's choice."""
    from unet_fast.ops.triton import conv3x3 as k
    cl = torch.channels_last
    configs = configs or {}

    def empty(*shape, dtype=dtype):
        return torch.empty(shape, device="meta", dtype=dtype).contiguous(memory_format=cl)

    cx = cin - skip_channels
    x = empty(batch, cx, size, size)
    skip = empty(batch, skip_channels, size + 8, size + 8) if skip_channels else None
    offset = (4, 4) if skip_channels else (0, 0)
    out_size = size + 2 * padding - 2
    y = empty(batch, cout, out_size, out_size)
    w_fwd = torch.empty((9 * cin, cout), device="meta", dtype=dtype)
    w_bwd = torch.empty((9 * cout, cin), device="meta", dtype=dtype)
    bias = torch.empty((cout,), device="meta", dtype=dtype)
    launches = {}
    if "forward" in configs or not configs:
        launches["forward"] = k.plan_conv(x, skip, offset, w_fwd, bias, y, None, (0, 0), padding, True,
                                          device_type="cuda", config=configs.get("forward"))
    if "dgrad" in configs or not configs:  # a second conv (no skip) masks x's gradient by x's ReLU, as UNet runs it
        launches["dgrad"] = k.plan_conv(y, None, (0, 0), w_bwd, None, x, skip, offset, 2 - padding, False,
                                        device_type="cuda", kind="dgrad", config=configs.get("dgrad"),
                                        out_mask=None if skip_channels else x)
    if "wgrad" in configs or not configs:
        cfg = configs.get("wgrad") or k.wgrad_config(y, x, skip, device_type="cuda")
        splits, per_split = k.wgrad_splits(batch * out_size * out_size, cin, cout, cfg,
                                           (k.WGRAD_WAVES * 132, k.WGRAD_MIN_STEPS),  # an H100's 132 SMs
                                           k.wgrad_folds_taps(cin - skip_channels, skip))
        partial = torch.empty((splits, 9, cin, cout), device="meta", dtype=torch.float32)
        bias_partial = torch.empty((splits, cout), device="meta", dtype=torch.float32)
        launches["wgrad"] = k.plan_wgrad(y, x, skip, partial, per_split, padding, device_type="cuda",
                                         bias_partial=bias_partial, config=cfg)
    return launches


def table_launches():
    """(label, launch, target) for every distinct configuration the measured table holds, for the capability
    of the device it was measured on (an entry keyed sm90-132 runs only there)."""
    from unet_fast.ops.triton import conv3x3_configs as table_module

    dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "tf32": torch.float32}
    seen = set()
    for device, problems in table_module.table().items():
        for key, config in problems.items():
            if config == table_module.ATEN:  # cuDNN does this one: nothing of ours to compile
                continue
            kind, dtype, channels, _rows = key.split("/")
            skip_and_x, cout = channels.split("->")
            cs, cx = (int(c) for c in skip_and_x.split("+"))
            capability = int(device[2:].split("-")[0])
            variant = (capability, kind, dtype, cs > 0, min(cx, 16), config)  # what the compile depends on
            if variant in seen:
                continue
            seen.add(variant)
            context = torch.backends.cudnn.flags(enabled=True, allow_tf32=True)
            with context:
                if kind == "pool":
                    launch = option_launch(dtypes[dtype], cx, int(cout), 40, True, False, config=config)
                else:
                    launch = layer_launches(dtypes[dtype], cs + cx, int(cout), 40, cs, configs={kind: config})[kind]
                # a table tuned before pooled problems were: an encoder's second conv runs its forward entry
                # with the pooled epilogue (more registers)
                pooled = option_launch(dtypes[dtype], cx, int(cout), 40, True, False, config=config) \
                    if kind == "forward" and cs == 0 else None
            yield f"table {device} {key} {config}", launch, capability
            if pooled is not None:
                yield f"table+pool {device} {key} {config}", pooled, capability


def option_launch(dtype: torch.dtype, cin: int, cout: int, size: int, pool: bool, direct: bool, batch: int = 8,
                  config=None):
    """The forward launch of conv3x3_relu(pool=, direct=) on x of (batch, cin, size, size), planned as the op does
    (config: these tiles instead of the table's or the heuristic's)."""
    from unet_fast.ops.triton import conv3x3 as k
    cl = torch.channels_last
    out = size - 2
    x = torch.empty((batch, cin, size, size), device="meta", dtype=dtype).contiguous(memory_format=cl)
    y = torch.empty((batch, cout, out, out), device="meta", dtype=dtype).contiguous(memory_format=cl)
    pooled = torch.empty((batch, cout, out // 2, out // 2), device="meta", dtype=dtype).contiguous(memory_format=cl)
    w_packed = torch.empty((9 * cin, cout), device="meta", dtype=dtype)
    bias = torch.empty((cout,), device="meta", dtype=dtype)
    return k.plan_forward(x, None, w_packed, bias, y, pooled if pool else None, 0, direct, device_type="cuda",
                          config=config)


def option_launches(dtype: torch.dtype, quick: bool):
    """(label, launch) of the pooled epilogue (encoder second convs) and the direct first-layer kernel."""
    name = str(dtype)[6:]
    pooled = [(64, 64, 570)] if quick else [(64, 64, 570), (512, 512, 66)]  # both forward tile shapes
    for cin, cout, size in pooled:
        yield f"forward+pool {name} cin={cin} cout={cout}", option_launch(dtype, cin, cout, size, True, False)
    yield f"direct {name} cin=1 cout=64", option_launch(dtype, 1, 64, 572, False, True)
    if not quick:  # another channel count: its own unrolled loop
        yield f"direct {name} cin=4 cout=64", option_launch(dtype, 4, 64, 572, False, True)


def shipped_launches(quick: bool = False):
    """(label, launch) per shipped (kernel, dtype, config) on a representative U-Net layer.

    quick: the bf16 decoder level only (first conv: skip read in place; second: ReLU-masked dgrad; all three
    kernels), one pooled forward, one direct kernel.
    """
    layers = [(128, 64, 392, 64), (64, 64, 390, 0)]  # a decoder's first conv (skip) and second (ReLU-masked dgrad)
    dtypes = [torch.bfloat16]
    if not quick:  # fp16 shares bf16's configurations and compiles to the same registers and shared memory
        layers += [(1, 64, 572, 0), (3, 64, 572, 0), (512, 1024, 32, 0), (1024, 512, 52, 512)]
        dtypes += [torch.float32]
    for dtype in dtypes:
        for cin, cout, size, cs in layers:
            for kind, launch in layer_launches(dtype, cin, cout, size, cs).items():
                yield f"{kind} {str(dtype)[6:]} cin={cin} cout={cout}{' skip' if cs else ''}", launch
        yield f"crop_concat {str(dtype)[6:]} 64+64 channels", crop_concat_launch(dtype)
        yield from option_launches(dtype, quick)
        if not quick:
            yield from elementwise_launches(dtype)
    yield from tma_launches(quick)
    yield from split_k_launches(quick)
    if not quick:  # fp32 with TF32 disallowed: exact fp32 on FMA units
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            for kind, launch in layer_launches(torch.float32, 128, 64, 392, 64).items():
                yield f"{kind} float32-exact cin=128 cout=64 skip", launch
            yield "forward+pool float32-exact cin=64 cout=64", option_launch(torch.float32, 64, 64, 570, True, False)


def tma_launches(quick: bool):
    """(label, launch) of conv3x3_tma_kernel (tensor-descriptor loads, for sm_90): each layer's heuristic tiles
    and the swapped 64-output-channel tile, forward and dgrad, as the tuner would try them."""

    from unet_fast.ops.triton import conv3x3_configs as table_module

    layers = [(128, 64, 392, 64), (64, 64, 390, 0)]
    if not quick:
        layers += [(512, 1024, 32, 0), (1024, 512, 52, 512)]
    for cin, cout, size, cs in layers:
        for kind in ("forward", "dgrad"):
            channels = (cs, cin - cs, cout) if kind == "forward" else (0, cout, cin)
            tiles = [table_module.heuristic(kind, "bf16", *channels)]
            if channels[2] <= 64:
                tiles.append(table_module.Config(256, 64, 64, 8, 3, swap=True))
            for config in tiles:
                launch = layer_launches(torch.bfloat16, cin, cout, size, cs,
                                        configs={kind: table_module.tma_candidate(config)})[kind]
                assert launch.kernel.__name__ == "conv3x3_tma_kernel", (kind, config)
                yield f"{kind}+tma bfloat16 cin={cin} cout={cout}{' skip' if cs else ''}{' swap' if config.swap else ''}", launch


def split_k_launches(quick: bool):
    """(label, launch) of split-K forward and dgrad (the tuner's candidates for the small deep layers): the GEMM
    kernel writing fp32 partials, then (its ``then``) the sum kernel running the epilogue; and of grouped
    row tiles (``group_m``)."""
    from dataclasses import replace

    from unet_fast.ops.triton import conv3x3_configs as table_module

    layers = [(512, 1024, 32, 0)] if quick else [(512, 1024, 32, 0), (1024, 512, 52, 512)]
    for dtype in (torch.bfloat16,) if quick else (torch.bfloat16, torch.float32):
        for cin, cout, size, cs in layers:
            for kind in ("forward", "dgrad"):
                channels = (cs, cin - cs, cout) if kind == "forward" else (0, cout, cin)
                name = "tf32" if dtype == torch.float32 else "bf16"
                for option, change in (("splitk", dict(split_k=4)), ("group", dict(group_m=8))):
                    config = replace(table_module.heuristic(kind, name, *channels), **change)
                    with torch.backends.cudnn.flags(enabled=True, allow_tf32=True):
                        launch = layer_launches(dtype, cin, cout, size, cs, configs={kind: config})[kind]
                    yield f"{kind}+{option} {str(dtype)[6:]} cin={cin} cout={cout}{' skip' if cs else ''}", launch


def elementwise_launches(dtype: torch.dtype):
    """(label, launch) of the passes beside the GEMMs, on the top level's tensors (NHWC, meta): the ReLU + pool
    backward, the bias gradient (alone and with the ReLU mask), skip's and x's gradients from the
    concatenation's, cuDNN's forward epilogue (alone and pooled)."""
    from unet_fast.ops.triton import bias_grad, bias_relu, relu_pool_backward
    from unet_fast.ops.triton.crop_concat import plan_crop_concat_backward

    def empty(*shape, dtype=dtype):
        return torch.empty(shape, device="meta", dtype=dtype).contiguous(memory_format=torch.channels_last)

    name = str(dtype)[6:]
    y, pooled = empty(8, 64, 568, 568), empty(8, 64, 284, 284)
    yield f"relu_pool_backward {name} 64 channels", relu_pool_backward.plan(y, y, pooled, y)
    windows = torch.empty((8 * 284 * 284 // relu_pool_backward.blocks(y)[0], 64), device="meta", dtype=torch.float32)
    yield f"relu_pool_backward+bias {name} 64 channels", relu_pool_backward.plan(y, y, pooled, y, windows)
    partial = torch.empty((bias_grad.INTERPRETER_BANDS, 64), device="meta", dtype=torch.float32)
    yield f"bias_grad {name} 64 channels", bias_grad.plan(y, None, None, partial)
    yield f"bias_grad+mask {name} 64 channels", bias_grad.plan(y, y, y, partial)
    yield (f"crop_concat_backward {name} 64+64 channels",
           plan_crop_concat_backward(empty(8, 128, 392, 392), y, empty(8, 64, 392, 392), 88, 88))
    deep = empty(8, 512, 64, 64)
    yield f"bias_relu {name} 512 channels", bias_relu.plan(deep, deep[0, :, 0, 0], None)
    yield f"bias_relu+pool {name} 512 channels", bias_relu.plan(deep, deep[0, :, 0, 0], empty(8, 512, 32, 32))


def crop_concat_launch(dtype: torch.dtype):
    """crop_concat_kernel on the decoder's top level (NHWC, meta tensors)."""
    from unet_fast.ops.triton.crop_concat import plan_crop_concat

    def empty(*shape):
        return torch.empty(shape, device="meta", dtype=dtype).contiguous(memory_format=torch.channels_last)

    return plan_crop_concat(empty(8, 64, 568, 568), empty(8, 64, 392, 392), 88, 88, empty(8, 128, 392, 392))


_GEMM_KERNELS = ("conv3x3_kernel", "conv3x3_wgrad_kernel", "conv3x3_tma_kernel")  # tl.dot: tensor cores expected


def _with_followers(launches):
    """Each (label, launch[, target]), then the launch that completes it (``then``: a split-K sum), labelled so;
    as (label, launch, targets): the target given, else sm_90 and sm_80 (TMA: sm_90 only, where the tuner
    tries it)."""
    for label, launch, *target in launches:
        tma = launch.kernel.__name__ == "conv3x3_tma_kernel"
        targets = tuple(target) or ((90,) if tma else (90, 80))
        yield label, launch, targets
        if launch.then is not None:
            yield f"{label} (sum)", launch.then, targets


def report(quick: bool = False, table_only: bool = False):
    """One dict per (launch, target): what the static checks assert on."""
    launches = table_launches() if table_only else shipped_launches(quick)
    for label, launch, targets in _with_followers(launches):
        m = launch.meta
        tma = launch.kernel.__name__ == "conv3x3_tma_kernel"
        for capability in targets:
            c = compile_launch(launch, capability)
            yield dict(label=label, capability=capability, blocks=[m[k] for k in m if k.startswith("BLOCK_")],
                       gemm=launch.kernel.__name__ in _GEMM_KERNELS, exact=m.get("INPUT_PRECISION") == "ieee",
                       num_warps=m["num_warps"], num_stages=m.get("num_stages"), registers=c.registers,
                       spill_bytes=c.spill_bytes, shared=c.shared, smem_limit=SMEM_LIMIT[capability],
                       tensor_cores="wgmma" if c.uses_wgmma else "mma" if c.uses_mma else "none",
                       tma_kernel=tma, tma_loads=c.uses_tma)


def _main(argv) -> None:
    quick, as_json, table_only = "--quick" in argv, "--json" in argv, "--table" in argv
    if not as_json:
        print("| launch | target | BLOCK sizes | warps | stages | registers | spill bytes | shared KiB | tensor cores |")
        print("|---|---|---|---:|---:|---:|---:|---:|---|")
    for r in report(quick, table_only):
        if as_json:
            print(json.dumps(r), flush=True)
        else:
            print(f"| {r['label']} | sm_{r['capability']} | {tuple(r['blocks'])} | {r['num_warps']} | "
                  f"{r['num_stages']} | {r['registers']} | {r['spill_bytes']} | {r['shared'] / 1024:.0f} | "
                  f"{r['tensor_cores']}{' + TMA' if r['tma_loads'] else ''} |", flush=True)


if __name__ == "__main__":
    # Plan as a machine without a GPU does (the heuristic's tiles, as CI checks them): on a GPU machine the planner
    # takes that GPU's table entries and they were compiled for sm_80 too, where they never run (the H100 table's
    # pooled 256x64 forward spilled 24 bytes on sm_80 under triton 3.6); --table checks entries for their target.
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    _main(sys.argv[1:])
