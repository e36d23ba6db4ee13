"""Measure the conv3x3 kernels' candidate tiles on this GPU and keep the fastest per layer.

    python -m unet_fast.tune [--size 572] [--depth 5] [--base-channels 64] [--batch 8] [--dtype bf16]
                             [--kinds forward,pool,dgrad,wgrad] [--time-limit SECONDS] [--results FILE] [--write]
    python -m unet_fast.tune --from-results FILE --write     # the table from an earlier run's results

For every 3x3 layer of the network at that input size, and each kind of launch (forward, pool = the
forward with its 2x2 max-pool for an encoder's second conv, dgrad = input gradient, wgrad = weight
gradient), every candidate of ``conv3x3_configs.candidates`` is
compiled, checked against aten on the same inputs (a candidate that is wrong, or whose kernel spills
registers, is never chosen) and timed with CUDA events; aten/cuDNN's time for the same work is
measured beside it, and where it beats every candidate the winner is "aten" (the op then calls
cuDNN for that part of that layer). ``--write`` merges the winners into the package's table
(unet_fast/ops/triton/conv3x3_configs.json, written atomically), under this GPU's key; kernels on
this GPU use them from then on. ``--results`` writes every measurement as JSON.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from . import geometry
from .image_io import write_bytes_atomically
from .ops.conv3x3 import aten_backward, aten_forward
from .ops.triton import conv3x3 as kernels
from .ops.triton import conv3x3_configs as configs

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "tf32": torch.float32}


def _time(fn, reps: int = 20) -> float:
    """Median milliseconds of fn() with CUDA events, after two warm-up calls."""
    for _ in range(2):
        fn()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    for start, end in events:
        start.record()
        fn()
        end.record()
    torch.cuda.synchronize()
    times = sorted(start.elapsed_time(end) for start, end in events)
    return times[len(times) // 2]


def _relative_error(actual, expected) -> float:
    """|actual - expected| / |expected| over a tensor, or over a tuple of tensors (dgrad's grad_x, grad_skip)."""
    def flat(t):
        return torch.cat([p.double().flatten() for p in t]) if isinstance(t, tuple) else t.double()
    a, e = flat(actual), flat(expected)
    return ((a - e).norm() / e.norm().clamp_min(1e-30)).item()


class Problem:
    """One layer's tensors and, per kind, how to run it with a given config and how aten does it."""

    def __init__(self, layer: geometry.ConvLayer, batch: int, dtype: torch.dtype, device: torch.device,
                 bottom: bool = False):
        """bottom: the deepest encoder level's layer (its second conv feeds no pool)."""
        g = torch.Generator(device=device).manual_seed(0)
        cl = torch.channels_last

        def randn(*shape):
            return torch.randn(shape, device=device, generator=g).to(dtype)

        self.layer = layer
        # a level's second conv reads the first's ReLU output: UNet's dgrad applies that ReLU's mask (epilogue)
        self.relu_input = layer.name.endswith("conv2")
        # the op sums the bias in the ReLU mask's pass of a second conv whose output feeds no pool (the
        # decoder's, the bottom's): there cuDNN's route makes no pass of its own for it
        self.bias_in_mask_pass = self.relu_input and (layer.name.startswith("dec") or bottom)
        self.x = randn(batch, layer.in_channels, layer.size, layer.size).contiguous(memory_format=cl)
        self.skip = None
        self.offset = (0, 0)
        if layer.skip_channels:
            self.skip = randn(batch, layer.skip_channels, layer.skip_size, layer.skip_size).contiguous(memory_format=cl)
            top = geometry.crop_offset(layer.skip_size, layer.size)
            self.offset = (top, top)
        cin = layer.in_channels + layer.skip_channels
        self.weight = randn(layer.out_channels, cin, 3, 3) * (2 / (9 * cin)) ** 0.5
        self.bias = randn(layer.out_channels) * 0.1
        out = layer.output_size
        self.grad = randn(batch, layer.out_channels, out, out).contiguous(memory_format=cl)
        self.pixels = batch * out * out
        self.rows = {"forward": self.pixels, "pool": kernels._gemm_rows(batch, out, out, True),  # 4 per window
                     "dgrad": batch * layer.size * layer.size, "wgrad": self.pixels}
        # an encoder's second conv above the bottom writes the 2x2 max-pool too (UNet's pooled epilogue)
        self.pools = layer.name.startswith("enc") and self.relu_input and not bottom
        self.compiled = {}  # (kind, config) -> the CompiledKernel of its last launch (registers, spills)

    def channels(self, kind: str) -> tuple[int, int, int]:
        """(skip channels, x channels, output channels) of the GEMM this kind runs."""
        layer = self.layer
        if kind == "dgrad":  # reads the gradient, writes the input's channels
            return 0, layer.out_channels, layer.in_channels + layer.skip_channels
        return layer.skip_channels, layer.in_channels, layer.out_channels

    def key(self, kind: str, dtype_name: str) -> str:
        return configs.problem_key(kind, dtype_name, *self.channels(kind), self.rows[kind])

    def ours(self, kind: str, config: configs.Config):
        """A callable running our kernel for this kind with ``config`` and returning the result."""
        layer, x, skip = self.layer, self.x, self.skip
        if kind in ("forward", "pool"):
            w_packed = kernels.pack_forward_weight(self.weight)
            out = torch.empty_like(self.grad)
            pooled = None
            if kind == "pool":
                n, c, h, w = out.shape
                pooled = torch.empty((n, c, h // 2, w // 2), device=out.device, dtype=out.dtype,
                                     memory_format=torch.channels_last)

            def run():
                launch = kernels.plan_forward(x, skip, w_packed, self.bias, out, pooled, 0, False, config=config)
                self.compiled[kind, config] = launch.run()  # with its split-K sum, if any
                return out if pooled is None else (out, pooled)
            return run
        if kind == "dgrad":
            w_packed = kernels.pack_dgrad_weight(self.weight)

            def run():  # what conv3x3_input_grad does: skip's gradient zero around the window it writes
                grad_x = torch.empty_like(x)
                grad_skip = None
                if skip is not None:
                    grad_skip = torch.empty_like(skip)
                    geometry.zero_outside_center(grad_skip, x.shape[2:])
                launch = kernels.plan_conv(self.grad, None, (0, 0), w_packed, None, grad_x, grad_skip, self.offset,
                                           2, False, kind="dgrad", config=config,
                                           out_mask=x if self.relu_input else None)
                self.compiled[kind, config] = launch.run()  # with its split-K sum, if any
                return grad_x if grad_skip is None else (grad_x, grad_skip)
            return run
        cin, cout = layer.in_channels + layer.skip_channels, layer.out_channels
        splits, per_split = kernels.wgrad_splits(self.pixels, cin, cout, config,
                                                 kernels.wgrad_split_target(x.device),
                                                 kernels.wgrad_folds_taps(layer.in_channels, skip))
        partial = torch.empty((splits, 9, cin, cout), device=x.device, dtype=torch.float32)
        bias_partial = torch.empty((splits, cout), device=x.device, dtype=torch.float32)

        def run():
            launch = kernels.plan_wgrad(self.grad, x, skip, partial, per_split, 0, bias_partial=bias_partial,
                                        config=config)
            self.compiled[kind, config] = launch.run()  # with its split-K sum, if any
            bias_partial.sum(0)
            return partial.sum(0).view(3, 3, cin, cout).permute(3, 2, 0, 1)
        return run

    def spills(self, kind: str, config: configs.Config) -> int:
        compiled = self.compiled.get((kind, config))
        return int(getattr(compiled, "n_spills", 0) or 0)

    def aten(self, kind: str):
        """aten/cuDNN doing the same work: conv + ReLU (with the crop and cat), or its backward as the op
        runs it where the table picks aten (conv3x3.aten_backward: the cat, skip's gradient and the
        ReLU mask, each a pass of its own)."""
        if kind in ("forward", "pool"):
            return lambda: aten_forward(self.x, self.weight, self.bias, self.skip, 0, pool=kind == "pool")
        bias = kind == "wgrad" and not self.bias_in_mask_pass

        def backward():
            grad_x, grad_skip, grad_weight, _ = aten_backward(self.grad, self.weight, self.x, self.skip, 0,
                                                              kind == "dgrad", kind == "wgrad", self.relu_input,
                                                              bias_grad=bias)
            if kind == "wgrad":
                return grad_weight
            return grad_x if grad_skip is None else (grad_x, grad_skip)
        return backward


def _compile(fn) -> str | None:
    """Run fn once (which compiles its kernel); the error text when that fails."""
    try:
        fn()
        return None
    except Exception as error:  # noqa: BLE001 - a candidate that fails to compile or launch is skipped
        return f"{type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}"


#: A candidate whose error against aten exceeds this many times the median of its problem's candidates is
#: wrong, not rounded differently. On an H100 (tune.json of 2026-11-26) the pointer kernels lay within 1.34x
#: of the median (split-K sums in another order); every result above 1.5x, up to 10^4x, came from a TMA
#: tile of 128+ channels or one wgrad pipeline, and one such TMA tile scored in between (1.2x).
ERROR_OVER_MEDIAN = 1.5


def reject_outliers(records: list[dict]) -> None:
    """Mark not ok, in place, the candidates of one problem whose error is an outlier (ERROR_OVER_MEDIAN).
    A right kernel differs from aten by rounding alone, as most candidates do; one that races or reads a wrong
    element adds an error of its own, which a fixed bound (3e-2 for 16-bit types) let through."""
    errors = [r["error"] for r in records if r.get("error") is not None]
    if not errors:
        return
    limit = ERROR_OVER_MEDIAN * statistics.median(errors) + 1e-6
    for record in records:
        if record.get("ok") and record["error"] > limit:
            record["ok"] = False
            record["rejected"] = f"error {record['error']:.2e} > {ERROR_OVER_MEDIAN:g} x the candidates' median"


def winners(measurements: list[dict]) -> dict:
    """{problem key: Config or ATEN}: per problem the fastest correct candidate, or aten where aten was
    faster than all of them."""
    by_key: dict[str, list[dict]] = {}
    for record in measurements:
        by_key.setdefault(record["key"], []).append(dict(record))
    best = {}
    for key, records in by_key.items():
        reject_outliers(records)  # also for results saved before the check existed
        ok = [r for r in records if r.get("ok")]
        aten_ms = records[0]["aten_ms"]
        if not ok or aten_ms < min(r["ms"] for r in ok):
            best[key] = configs.ATEN
        else:
            best[key] = configs.Config(*min(ok, key=lambda r: r["ms"])["config"])
    return best


def tune(size: int, depth: int, base: int, batch: int, dtype_name: str, kinds: list[str], time_limit: float,
         log=print, measured=None) -> dict:
    """{"best": {problem key: Config or ATEN}, "measurements": [...]} for this GPU. ``measured(measurements)``
    is called after every problem with all so far (``main`` saves them: a run killed later keeps them)."""
    device = torch.device("cuda")
    dtype = DTYPES[dtype_name]
    started = time.monotonic()
    measurements = []
    seen = set()
    context = torch.backends.cudnn.flags(enabled=True, benchmark=True, allow_tf32=dtype_name == "tf32")
    with context, torch.inference_mode():
        # deepest (smallest) layers first: there fixed tiles waste the most (few tiles, a partial wave)
        for layer in sorted(geometry.conv_layers(size, depth, base), key=lambda layer: layer.size):
            problem = Problem(layer, batch, dtype, device, bottom=layer.name.startswith(f"enc{depth - 1}."))
            for kind in kinds:
                if kind == "dgrad" and layer.name == "enc0.conv1":
                    continue  # the image needs no gradient
                if kind == "pool" and not problem.pools:
                    continue
                key = problem.key(kind, dtype_name)
                if key in seen:
                    continue
                seen.add(key)
                if time.monotonic() - started > time_limit:
                    log(f"tune: time limit of {time_limit:.0f} s reached; {len(seen) - 1} problems tuned")
                    return {"best": winners(measurements), "measurements": measurements}
                want = problem.aten(kind)()
                aten_ms = _time(problem.aten(kind))
                candidates = configs.candidates(kind, dtype_name, *problem.channels(kind),
                                                tma=torch.cuda.get_device_capability(device)[0] >= 9,
                                                rows=problem.rows[kind],
                                                sms=torch.cuda.get_device_properties(device).multi_processor_count)
                runs = [problem.ours(kind, config) for config in candidates]
                with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:  # compiles overlap
                    failures = list(pool.map(_compile, runs))
                torch.cuda.synchronize()
                records = []
                for config, run, failure in zip(candidates, runs, failures):
                    record = {"layer": layer.name, "kind": kind, "key": key, "config": configs.table_entry(config),
                              "aten_ms": round(aten_ms, 4)}
                    if failure is None:
                        failure = _compile(run)  # the launch on this thread, for its compiled kernel's report
                    if failure is not None:
                        record["failed"] = failure
                    else:
                        record["spills"] = problem.spills(kind, config)
                        record["error"] = _relative_error(run(), want)
                        record["ms"] = round(_time(run), 4)
                        record["ok"] = record["spills"] == 0 and record["error"] < (1e-2 if dtype_name == "tf32"
                                                                                   else 3e-2)
                    records.append(record)
                reject_outliers(records)
                measurements += records
                if measured is not None:
                    measured(measurements)
                results = [(r["ms"], config) for r, config in zip(records, candidates) if r.get("ok")]
                if results:
                    best_ms, best_config = min(results, key=lambda r: r[0])
                    default_ms = next((ms for ms, c in results if c == candidates[0]), float("nan"))
                    log(f"tune: {layer.name:11s} {kind:7s} aten {aten_ms:7.3f} ms, heuristic {default_ms:7.3f} ms, "
                        f"best {best_ms:7.3f} ms {best_config}")
                else:
                    log(f"tune: {layer.name} {kind}: no candidate ran correctly")
    return {"best": winners(measurements), "measurements": measurements}


def _measured_on() -> dict:
    return {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__,
            "triton": __import__("triton").__version__, "date": f"{datetime.date.today():%Y-%m-%d}"}


def write_table(best: dict, device_key: str, path: Path = configs.TABLE_PATH, measured_on: dict | None = None) -> None:
    """Merge this device's winners into the table file, atomically (other devices' entries kept)."""
    data = json.loads(path.read_text()) if path.exists() else {"version": 1, "devices": {}, "measured_on": {}}
    data["devices"].setdefault(device_key, {}).update({k: configs.table_entry(c) for k, c in sorted(best.items())})
    data.setdefault("measured_on", {})[device_key] = measured_on or _measured_on()
    write_bytes_atomically(path, (json.dumps(data, indent=1, sort_keys=True) + "\n").encode())
    configs.table.cache_clear()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m unet_fast.tune", description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=572, help="input tile size (default 572)")
    parser.add_argument("--depth", type=int, default=5, help="network depth (default 5)")
    parser.add_argument("--base-channels", type=int, default=64, help="first level's channels (default 64)")
    parser.add_argument("--batch", type=int, default=8, help="tiles per call (default 8)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bf16", help="compute type (default bf16)")
    parser.add_argument("--kinds", default=",".join(configs.KINDS), help="launch kinds to tune (default all: "
                        "forward, pool = the forward with the pooled epilogue, dgrad, wgrad)")
    parser.add_argument("--time-limit", type=float, default=600.0, help="seconds: stop starting new layers after this (default: 600)")
    parser.add_argument("--results", type=Path, help="write every measurement here (JSON)")
    parser.add_argument("--write", action="store_true", help="merge the winners into the package's table")
    parser.add_argument("--from-results", type=Path, help="take the measurements from this results file "
                        "(written by --results on a GPU) instead of measuring")
    args = parser.parse_args(argv)
    if args.from_results:
        try:
            saved = json.loads(args.from_results.read_text())
            best, device_key = winners(saved["measurements"]), saved["device"]
        except (OSError, ValueError, KeyError, TypeError) as error:
            parser.error(f"--from-results {args.from_results}: not a results file of this tool ({error})")
        if args.write:
            write_table(best, device_key, measured_on=saved.get("measured_on"))
            print(f"unet_fast.tune: {len(best)} entries for {device_key} written to {configs.TABLE_PATH}")
        return 0
    if not torch.cuda.is_available():
        print("unet_fast.tune: needs a CUDA GPU (the table is per GPU model)", file=sys.stderr)
        return 2
    kinds = [k for k in args.kinds.split(",") if k]
    unknown = set(kinds) - set(configs.KINDS)
    if unknown:
        parser.error(f"--kinds: unknown {sorted(unknown)}; choose from {', '.join(configs.KINDS)}")
    device_key = configs.device_key(torch.device("cuda"))

    def save(measurements):
        """The results file, rewritten atomically after every problem: if the run is killed (a time cap), what it
        measured is there for ``--from-results --write``."""
        if args.results:
            best = {k: configs.table_entry(c) for k, c in winners(measurements).items()}
            write_bytes_atomically(args.results, (json.dumps({
                "device": device_key, "gpu": torch.cuda.get_device_name(0), "measured_on": _measured_on(),
                "measurements": measurements, "best": best}, indent=1) + "\n").encode())

    found = tune(args.size, args.depth, args.base_channels, args.batch, args.dtype, kinds, args.time_limit,
                 measured=save)
    save(found["measurements"])
    if args.write and found["best"]:
        write_table(found["best"], device_key)
        print(f"unet_fast.tune: {len(found['best'])} entries for {device_key} written to {configs.TABLE_PATH}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
