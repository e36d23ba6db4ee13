"""Memory traffic and layouts of one forward + backward step on a GPU, worked out without one.

The step runs on fake tensors (no memory, no arithmetic) while following the GPU path's decisions: the Triton
kernels where the shipped table (ops/triton/conv3x3_configs.json) says they win on the named device, cuDNN's
parts elsewhere. Fake CPU tensors stand for CUDA ones (autograd on fake CUDA tensors needs a CUDA build of
torch); the ops' memory-format rules are the same for both. Every op the step dispatches is recorded with the
bytes of its tensor arguments and results (each counted once: a lower bound that ignores caches and the GEMMs'
re-reads) and its arguments' layouts.

What it is for: the traffic outside the convolutions' GEMMs, i.e. the passes fusion should remove, and any
gradient that reaches a kernel in another layout than the network's (cuDNN then copies it, our kernels read it
strided). A model of the step, not a measurement: benchmarks/gpu.sh's `profile` stage measures.

    python benchmarks/step_traffic.py [--device sm90-132] [--batch 8] [--size 572] [--bandwidth 3.0] [--list]
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
from unittest import mock

import torch
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from unet_fast import UNet, reference
from unet_fast.ops import triton as _triton
from unet_fast.ops.triton import conv3x3_configs as configs

# ops that move no data: views, allocations, queries
NO_TRAFFIC = {"view", "_unsafe_view", "slice", "permute", "as_strided", "t", "expand", "detach", "alias", "select",
              "unsqueeze", "squeeze", "transpose", "empty", "empty_like", "empty_strided", "new_empty",
              "new_empty_strided", "scalar_tensor", "device", "sym_size", "sym_stride", "sym_numel"}
# the convolutions' GEMMs: ours and aten's (cuDNN's on a GPU)
GEMMS = {"convolution", "convolution_backward", "conv3x3_relu_triton", "conv3x3_relu_pool_triton",
         "conv3x3_input_grad_triton", "conv3x3_weight_grad_triton"}


@dataclasses.dataclass
class Op:
    phase: str                 # "forward" or "backward"
    name: str                  # the op's name without its namespace and overload
    read: int                  # bytes of its tensor arguments
    written: int               # bytes of its tensor results
    arguments: list            # (shape, strides) of each tensor argument

    @property
    def moves_data(self) -> bool:
        return self.name not in NO_TRAFFIC

    @property
    def gemm(self) -> bool:
        return self.name in GEMMS


def channels_fastest(shape, strides) -> bool:
    """True when a 4-D tensor's channels are its innermost dimension in memory, as in channels_last (views of a
    channels_last tensor included); trivially true with one channel or one pixel."""
    n, c, h, w = shape
    return c == 1 or h * w == 1 or strides[1] == 1


class _Recorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: list[Op] = []
        self.phase = "forward"

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        outputs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        self.ops.append(Op(self.phase, func.overloadpacket.__name__,
                           sum(t.numel() * t.element_size() for t in inputs),
                           sum(t.numel() * t.element_size() for t in outputs),
                           [(tuple(t.shape), tuple(t.stride())) for t in inputs]))
        return out


def _prefers_aten_on(device_key: str, everywhere: bool | None):
    """configs.prefers_aten as it answers on the GPU ``device_key`` names (unmeasured backward problems go to
    cuDNN there), or True/False everywhere."""
    def prefers_aten(kind, device, dtype, skip_channels, x_channels, out_channels, rows):
        if everywhere is not None:
            return everywhere
        entry = configs.table().get(device_key, {}).get(
            configs.problem_key(kind, dtype, skip_channels, x_channels, out_channels, rows))
        return configs.aten_wins(kind, entry)
    return prefers_aten


@contextlib.contextmanager
def gpu_path(device_key: str = "sm90-132", aten_everywhere: bool | None = None):
    """Within it, conv3x3_relu on CPU tensors takes the decisions it takes on a CUDA GPU of ``device_key``
    (its kernels must then only run on fake tensors, whose ops run their fake kernels)."""
    with mock.patch.object(_triton, "can_run", lambda device: True), \
            mock.patch.object(_triton, "INTERPRETED", False), \
            mock.patch.object(configs, "prefers_aten", _prefers_aten_on(device_key, aten_everywhere)):
        yield


def record_step(model: torch.nn.Module, batch: int, size: int, dtype=torch.bfloat16,
                channels_last: bool = True) -> list[Op]:
    """The ops of ``model``'s forward and backward (an output gradient given, as gpu_goals' network stage) on
    fake tensors: a batch of ``batch`` tiles of ``size`` x ``size``, its parameters in ``dtype``."""
    layout = torch.channels_last if channels_last else torch.contiguous_format
    with FakeTensorMode():
        for module in model.modules():
            for name, p in list(module.named_parameters(recurse=False)):
                fake = torch.empty(p.shape, dtype=dtype, memory_format=layout if p.dim() == 4 else
                                   torch.contiguous_format)
                setattr(module, name, torch.nn.Parameter(fake))
        x = torch.empty(batch, model.in_channels, size, size, dtype=dtype, memory_format=layout)
        out_size = model.output_size(size)
        grad = torch.empty(batch, model.num_classes, out_size, out_size, dtype=dtype)
        recorder = _Recorder()
        with recorder:
            out = model(x)
            recorder.phase = "backward"
            out.backward(grad)
    return recorder.ops


def misplaced_layouts(ops: list[Op], skip_first_backward: bool = True) -> list[Op]:
    """The data-moving ops that received an activation (a 4-D tensor of more than 3 x 3 pixels: not a weight)
    whose channels are not innermost (the step runs channels_last); the first backward op is left out by
    default: it gets the caller's output gradient."""
    found, first = [], skip_first_backward
    for op in ops:
        if not op.moves_data:
            continue
        if op.phase == "backward" and first:
            first = False
            continue
        if any(len(shape) == 4 and shape[2] * shape[3] > 9 and not channels_fastest(shape, strides)
               for shape, strides in op.arguments):
            found.append(op)
    return found


def summary(ops: list[Op]) -> dict:
    """{(phase, op name): [calls, bytes read, bytes written]} over the data-moving ops."""
    totals = collections.defaultdict(lambda: [0, 0, 0])
    for op in ops:
        if op.moves_data:
            entry = totals[(op.phase, op.name)]
            entry[0] += 1
            entry[1] += op.read
            entry[2] += op.written
    return dict(totals)


def _report(title: str, ops: list[Op], bandwidth: float, listing: bool) -> None:
    print(f"\n## {title}\n")
    print("| phase | op | calls | read GB | written GB | ms at the bandwidth |\n|---|---|---:|---:|---:|---:|")
    rows = sorted(summary(ops).items(), key=lambda kv: (kv[0][0] != "forward", kv[0][1] not in GEMMS,
                                                         -(kv[1][1] + kv[1][2])))
    for (phase, name), (calls, read, written) in rows:
        print(f"| {phase} | {name}{' (GEMM)' if name in GEMMS else ''} | {calls} | {read / 1e9:.3f} | "
              f"{written / 1e9:.3f} | {(read + written) / bandwidth / 1e9:.3f} |")
    for phase in ("forward", "backward"):
        other = sum(op.read + op.written for op in ops if op.phase == phase and op.moves_data and not op.gemm)
        print(f"\n{phase}: passes outside the GEMMs move {other / 1e9:.2f} GB, "
              f"{other / bandwidth / 1e9:.2f} ms at {bandwidth:g} TB/s")
    misplaced = misplaced_layouts(ops)
    print(f"\narguments whose channels are not innermost (after the output gradient): {len(misplaced)}")
    for op in misplaced:
        print(f"- {op.phase} {op.name}: {op.arguments}")
    if listing:
        print()
        for op in ops:
            if op.moves_data:
                print(f"- {op.phase} {op.name}: read {op.read / 1e6:.1f} MB, wrote {op.written / 1e6:.1f} MB, "
                      f"arguments {op.arguments}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="sm90-132", help="the table's device key whose choices to follow")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=572)
    parser.add_argument("--bandwidth", type=float, default=3.0, help="TB/s, to turn bytes into a time")
    parser.add_argument("--list", action="store_true", help="also list every data-moving op")
    args = parser.parse_args(argv)
    if args.device not in configs.table():
        parser.error(f"--device {args.device!r} is not in the shipped table, which has {sorted(configs.table())}")
    print(f"# One forward + backward step: batch {args.batch}, {args.size} x {args.size}, bf16, channels_last; "
          f"the table's choices for {args.device} (a model from fake tensors, not a measurement)")
    with gpu_path(args.device):
        ours = record_step(UNet(backend="triton"), args.batch, args.size)
    _report("unet_fast.UNet (Triton where the table says, cuDNN elsewhere)", ours, args.bandwidth, args.list)
    _report("reference.UNet, eager (cuDNN)", record_step(reference.UNet(), args.batch, args.size),
            args.bandwidth, args.list)


if __name__ == "__main__":
    main()
