"""Which TMA and wgrad tiles compute right on this GPU: a check for the two kernel faults an H100 showed
(benchmarks/results/2026-11-26-NVIDIA_H100.md), meant to run before the tuner.

    python benchmarks/gpu_tma_check.py OUTDIR [--budget SECONDS]   # on a GPU with TMA (sm_90)
    python benchmarks/gpu_tma_check.py OUTDIR --dry-run             # the interpreter, tiny shapes

Forward: conv3x3_tma_kernel with output-channel tiles of 64, 128 and 256, 4 and 8 warps, 2 to 4 stages,
whether or not the package lets TMA run them (configs.tma_measured_right), on a plain and a skip layer, each
beside the pointer kernel with the same tile. Wgrad: the decoder tile [128, 128, 64, 8, stages] with and
without the bias gradient. Every result is a relative L2 error against float32 convolutions of the same
inputs, and whether two runs agree bit for bit (a race shows as runs that differ). OUTDIR gets results.json,
summary.md and verdict.txt: whether every tile the package would run through TMA, and every wgrad, ran right.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path
from unittest import mock

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
if "--dry-run" in sys.argv[1:]:  # before Triton is imported
    os.environ["TRITON_INTERPRET"] = "1"
sys.path.append(str(Path(__file__).resolve().parents[1] / "tests"))
import triton_interpreter_fix  # noqa: E402,F401  (--dry-run: Triton 3.5/3.6's interpreter under numpy >= 2.4)

from unet_fast.geometry import center_crop  # noqa: E402
from unet_fast.ops.triton import conv3x3 as kernels  # noqa: E402
from unet_fast.ops.triton import conv3x3_configs as configs  # noqa: E402
from unet_fast.ops.triton.conv3x3_configs import Config  # noqa: E402

RIGHT = 1.25  # a forward tile is right when its error is within this factor of the pointer kernel's, same tile
# a wgrad tile, within this factor of its layer's best tile: the summation order alone moves the fp32 sum's
# error by up to 1.35x between right tiles (H100 run 4: 1.17e-5 to 1.58e-5); the raced one was 3.7e-3
RIGHT_WGRAD = 2.0
BIAS_RIGHT = 1e-4  # the bias gradient, an fp32 sum of the same gradient: H100 run 4's were about 1e-7


def _relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.double() - want.double()).norm() / want.double().norm().clamp_min(1e-30))


def _layer(device, dtype, batch, cs, cx, cout, size):
    g = torch.Generator(device="cpu").manual_seed(0)
    cl = torch.channels_last
    x = torch.randn(batch, cx, size, size, generator=g).to(device, dtype).contiguous(memory_format=cl)
    skip = (torch.randn(batch, cs, size + 8, size + 8, generator=g).to(device, dtype).contiguous(memory_format=cl)
            if cs else None)
    weight = (torch.randn(cout, cs + cx, 3, 3, generator=g) / (3 * (cs + cx) ** 0.5)).to(device, dtype)
    bias = (torch.randn(cout, generator=g) * 0.1).to(device, dtype)
    return x, skip, weight, bias


def _cat(x, skip):
    """The decoder's input in float32: skip's centre crop, then x (the reference's copy and crop)."""
    return x.float() if skip is None else torch.cat([center_crop(skip, x.shape[-2:]), x], 1).float()


def _run_twice(fn):
    first = fn()
    second = fn()
    return first, all(a is None or torch.equal(a, b) for a, b in zip(first, second))


def forward_rows(layers, tiles, deadline):
    """Tile by tile (most telling first, so the deadline drops the least), each layer, each layout."""
    wanted = {name: F.relu(F.conv2d(_cat(x, skip), weight.float(), bias.float()))
              for name, (x, skip, weight, bias) in layers.items()}
    for (block_m, block_n, block_k, warps, stages), (name, (x, skip, weight, bias)) in itertools.product(
            tiles, layers.items()):
        want = wanted[name]
        if time.monotonic() > deadline:
            return
        if block_n > weight.shape[0]:
            continue
        plain = Config(block_m, block_n, block_k, warps, stages)
        for layout in ("pointer", "tma"):
            config = plain if layout == "pointer" else replace(plain, tma=True)
            row = dict(kind="forward", layer=name, tile=[block_m, block_n, block_k, warps, stages], layout=layout,
                       allowed=layout == "pointer" or configs.tma_measured_right(config))
            try:
                with mock.patch.object(configs, "tma_measured_right", lambda config: True):  # every tile
                    launch = kernels.plan_forward(x, skip, kernels.pack_forward_weight(weight), bias,
                                                  torch.empty_like(want, dtype=x.dtype), None, 0, False,
                                                  config=config)
                    if (launch.kernel is kernels.conv3x3_tma_kernel) != (layout == "tma"):
                        continue  # the operands do not allow TMA here
                    (out,), same = _run_twice(lambda: (kernels.conv3x3_forward(x, weight, bias, skip, 0,
                                                                               config=config)[0],))
                row.update(error=_relative_error(out, want), deterministic=same)
            except Exception as error:  # out of shared memory, a compile failure: record, go on
                row.update(failed=f"{type(error).__name__}: {str(error)[:200]}")
            yield row


def wgrad_rows(layers, tiles, deadline):
    for name, (x, skip, weight, bias) in layers.items():
        cat = _cat(x, skip).requires_grad_(False)
        out_shape = (x.shape[0], weight.shape[0], x.shape[2] - 2, x.shape[3] - 2)
        grad = torch.randn(out_shape, device=x.device, generator=None).to(x.dtype)
        grad = grad.contiguous(memory_format=torch.channels_last)
        want = torch.nn.grad.conv2d_weight(cat, weight.shape, grad.float())
        for tile, bias_grad in itertools.product(tiles, (True, False)):
            if time.monotonic() > deadline:
                return
            row = dict(kind="wgrad", layer=name, tile=list(tile), bias_grad=bias_grad)
            try:
                (gw, gb), same = _run_twice(lambda: kernels.conv3x3_weight_grad(
                    grad, x, skip, 0, bias_grad=bias_grad, config=Config(*tile)))
                row.update(error=_relative_error(gw, want), deterministic=same)
                if bias_grad:
                    row["bias_error"] = _relative_error(gb, grad.float().sum((0, 2, 3)))
            except Exception as error:
                row.update(failed=f"{type(error).__name__}: {str(error)[:200]}")
            yield row


def verdict(rows) -> tuple[bool, str]:
    """(every TMA tile the package allows and every wgrad ran right, a line saying what did not): right is
    deterministic and within RIGHT of the pointer twin (forward) or RIGHT_WGRAD of the layer's best tile, and
    the bias gradient within BIAS_RIGHT of the fp32 sum. Not right either when no TMA tile the package
    allows was reached before the deadline."""
    best = {}
    for r in rows:
        if "error" in r:
            key = (r["kind"], r["layer"]) if r["kind"] == "wgrad" else (r["layer"], tuple(r["tile"]), r["layout"])
            best[key] = min(best.get(key, float("inf")), r["error"])
    wrong = []
    for r in rows:
        if r["kind"] == "forward" and (r["layout"] == "pointer" or not r["allowed"]):
            continue
        twin = (r["kind"], r["layer"]) if r["kind"] == "wgrad" else (r["layer"], tuple(r["tile"]), "pointer")
        baseline = best.get(twin)
        bound = RIGHT_WGRAD if r["kind"] == "wgrad" else RIGHT
        bias_wrong = r.get("bias_error", 0.0) > BIAS_RIGHT
        if "error" not in r or not r["deterministic"] or baseline is None or r["error"] > bound * baseline \
                or bias_wrong:
            what = r["layout"] if r["kind"] == "forward" else f"bias_grad={r['bias_grad']}"
            wrong.append(f"{r['kind']} {r['layer']} {r['tile']} {what}")
    checked = [r for r in rows if r["kind"] == "wgrad" or (r["layout"] == "tma" and r["allowed"])]
    if not any(r["kind"] == "forward" for r in checked):
        return False, f"incomplete: no TMA tile the package allows was checked ({len(checked)} wgrad rows)"
    if wrong:
        return False, f"{len(wrong)} of {len(checked)} wrong: " + "; ".join(wrong)
    raced = sum(1 for r in rows if r["kind"] == "forward" and not r["allowed"] and not r.get("deterministic", True))
    return True, (f"all {len(checked)} right (TMA tiles the package allows, wgrad with and without the bias); "
                  f"{raced} TMA tiles it does not allow raced")


def summary(rows) -> str:
    lines = ["| kind | layer | tile | layout / bias | error | deterministic |", "|---|---|---|---|---:|---|"]
    for r in rows:
        how = (f"{r['layout']}{'' if r['allowed'] else ' (not allowed)'}" if r["kind"] == "forward"
               else f"bias_grad={r['bias_grad']}")
        value = f"{r['error']:.3e}" if "error" in r else r["failed"]
        lines.append(f"| {r['kind']} | {r['layer']} | {r['tile']} | {how} | {value} | {r.get('deterministic', '')} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--budget", type=float, default=120.0, help="seconds before it stops adding cases")
    parser.add_argument("--dry-run", action="store_true", help="the interpreter on tiny shapes (no GPU)")
    args = parser.parse_args(argv)
    if args.dry_run:
        device, dtype = "cpu", torch.float32
        layers = {"plain": _layer(device, dtype, 2, 0, 16, 32, 10), "skip": _layer(device, dtype, 1, 16, 16, 32, 9)}
        tiles = [(32, 16, 16, 4, 1)]  # one tile: the interpreter is slow, and proving the script runs is the point
        wgrad_tiles = [(32, 32, 16, 4, 1)]
    else:
        if not torch.cuda.is_available():
            parser.error("no CUDA device: run it on a GPU, or with --dry-run")
        device, dtype = "cuda", torch.bfloat16
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
        layers = {"enc2 256->256 136px": _layer(device, dtype, 8, 0, 256, 256, 138),
                  "dec2 skip 256+256->256": _layer(device, dtype, 4, 256, 256, 256, 106)}
        # the H100's faulty tiles first (128 and 256 wide), then the 64-wide ones it ran right
        tiles = [(128, n, 64, w, s) for n in (128, 256, 64) for w, s in ((8, 3), (8, 4), (4, 3), (8, 2))]
        wgrad_tiles = [(128, 128, 64, 8, 3), (128, 128, 64, 8, 4), (128, 64, 64, 8, 3)]  # the last: known right
    args.outdir.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + args.budget
    rows = []
    for row in itertools.chain(wgrad_rows(layers, wgrad_tiles, deadline), forward_rows(layers, tiles, deadline)):
        rows.append(row)
        print(json.dumps(row), flush=True)
    ok, line = verdict(rows)
    (args.outdir / "results.json").write_text(json.dumps(rows, indent=1))
    (args.outdir / "summary.md").write_text(summary(rows) + f"\n{line}\n")
    (args.outdir / "verdict.txt").write_text(f"{'right' if ok else 'WRONG'}: {line}\n")
    print(f"{'right' if ok else 'WRONG'}: {line}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
