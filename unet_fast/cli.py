"""The unet-fast command line."""
from __future__ import annotations

import argparse
import json
import sys

from . import geometry


def cmd_info(args) -> int:
    from . import info

    report = info()
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    for key, value in report.items():
        if key == "backends":
            print("backends:")
            for name, entry in value.items():
                mark = "yes" if entry["available"] else "no "
                print(f"  {name:15s} {mark}  {entry['why']}")
        elif key == "devices":
            print(f"devices: {', '.join(value)}")
        else:
            print(f"{key}: {value}")
    return 0


def cmd_sizes(args) -> int:
    sizes = geometry.valid_input_sizes(args.depth, args.max_size, args.padding)
    if not sizes:
        print(f"no legal input size up to {args.max_size} for depth {args.depth}; the smallest is "
              f"{geometry.min_input_size(args.depth, args.padding)}", file=sys.stderr)
        return 1
    print(f"depth {args.depth}, {args.padding} padding: legal sizes every {geometry.size_step(args.depth)} px, "
          f"context {geometry.context(args.depth, args.padding)} px per side")
    print(f"{'input':>7} {'output':>7} {'useful px':>10}  (output pixels / input pixels)")
    for n in sizes:
        out = geometry.output_size(n, args.depth, args.padding)
        print(f"{n:7d} {out:7d} {out * out / (n * n):10.3f}")
    return 0


def cmd_segment(args) -> int:
    from . import segment

    return segment.run(args)[1]


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="unet-fast", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="versions, devices, available backends")
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("sizes", help="table of legal input sizes and their output sizes")
    p.add_argument("--depth", type=_positive_int, default=5)
    p.add_argument("--padding", choices=geometry.PADDINGS, default="valid")
    p.add_argument("--max-size", type=_positive_int, default=1024)
    p.set_defaults(func=cmd_sizes)

    p = sub.add_parser("segment", help="segment image files (TIFF, PNG, JPEG) with a saved model",
                       description="One output per input, OUTDIR/<name><suffix>, written atomically. Under "
                                   "torchrun the files are shared among the processes.")
    p.add_argument("-i", "--input", nargs="+", required=True, help="files, folders or glob patterns")
    p.add_argument("-o", "--output-dir", required=True, help="folder for the outputs")
    p.add_argument("-m", "--model", required=True, help="model file written by unet_fast.save_model")
    p.add_argument("--tile-size", type=_positive_int, help="input tile edge (default: planned from memory)")
    p.add_argument("--batch-size", type=_positive_int, help="tiles per forward (default: planned)")
    p.add_argument("--device", help="cpu, cuda or cuda:K (default: cpu)")
    p.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32")
    p.add_argument("--output", choices=("labels", "probabilities"), default="labels")
    p.add_argument("--format", choices=("tif", "ome.zarr"), default="tif",
                   help="tiled BigTIFF (classes as samples per pixel) or OME-Zarr")
    p.add_argument("--continue", dest="resume", action="store_true", help="skip inputs whose output exists")
    p.add_argument("--num-parts", type=_positive_int, help="split the file list into this many parts ...")
    p.add_argument("--part-id", type=int, help="... and segment part K (0-based), e.g. a job-array index")
    p.add_argument("--max-pixels", type=_positive_int, default=2 ** 30,
                   help="refuse files declaring more pixels unless they can be streamed (default 2^30)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_segment)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
