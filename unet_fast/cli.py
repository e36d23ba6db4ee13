"""The unet-fast command line."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

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
        elif key == "ops":
            print("ops (implementation run by default):")
            for device, chosen in value.items():
                print(f"  {device:15s} " + ", ".join(f"{op} {implementation}" for op, implementation in chosen.items()))
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


#: train's flags that set a recipe field of the same name (None: the recipe's value)
RECIPE_FLAGS = ("epochs", "batch_size", "tiles_per_epoch", "optimizer", "lr", "momentum", "weight_decay", "lr_schedule",
                "warmup_steps", "depth", "base_channels", "padding", "dropout", "w0", "sigma", "flips", "rotation",
                "elastic_sigma", "grey_values", "noise", "percentiles", "clip")


def _labelled_images(images, labels, args, recipe):
    """A dataset of labelled images: two folders matched by name, or two multi-page TIFF stacks."""
    from .data import ImageFolderDataset, TiffStackDataset

    options = dict(num_classes=args.num_classes, label_kind=args.label_kind, w0=recipe.w0, sigma=recipe.sigma,
                   class_weights=recipe.class_weights, normalization=recipe.normalization(), cache_dir=args.cache_dir)
    if Path(images).is_file():
        return TiffStackDataset(images, labels, **options)
    return ImageFolderDataset(images, labels, label_suffix=args.label_suffix, **options)


def cmd_train(args) -> int:
    import dataclasses

    import torch

    from . import UNet, save_model
    from .data import split_dataset
    from .pixel_size import common_pixel_size
    from .recipes import get_recipe
    from .train import fit, load_checkpoint

    if (args.val_images is None) != (args.val_labels is None):
        args.parser.error("--val-images and --val-labels go together")
    if args.val_images is not None and args.val_fraction:
        args.parser.error("--val-fraction and --val-images exclude each other")
    try:
        recipe = get_recipe(args.recipe).replace(
            **{name: getattr(args, name) for name in RECIPE_FLAGS},
            **({"class_weights": None if args.class_weights == "none" else args.class_weights}
               if args.class_weights else {}))
    except ValueError as error:
        args.parser.error(str(error))
    if args.threads:
        torch.set_num_threads(args.threads)
    dataset = _labelled_images(args.images, args.labels, args, recipe)
    if args.val_images is not None:
        train_data, val_data = dataset, _labelled_images(args.val_images, args.val_labels, args, recipe)
    else:
        train_data, val_data = split_dataset(dataset, args.val_fraction, seed=args.seed)
    config = dict(in_channels=dataset.in_channels, num_classes=args.num_classes, depth=recipe.depth,
                  base_channels=recipe.base_channels, padding=recipe.padding, dropout=recipe.dropout)
    if args.resume:
        config = load_checkpoint(args.resume)["model_config"]   # the run being resumed decides
        config.pop("backend", None)
    torch.manual_seed(args.seed)
    model = UNet(**config)             # DDP gives every rank rank 0's weights anyway
    torch.manual_seed(args.seed + int(os.environ.get("RANK", "0")))   # but each rank its own dropout masks
    work_dir = Path(args.work_dir) if args.work_dir else Path(args.output).with_suffix("")
    result = fit(model, train_data, val_data, recipe=recipe, tile_size=args.tile_size, device=args.device,
                 amp=args.amp, checkpoint_dir=work_dir, resume=args.resume, log_dir=work_dir,
                 augment=None if args.no_augment else "recipe", seed=args.seed, num_workers=args.workers,
                 time_limit=args.time_limit * 60 if args.time_limit else None, best_metric=args.best_metric,
                 progress=False if args.no_progress else None)
    if int(os.environ.get("RANK", "0")) == 0:
        pixel_size, problem = common_pixel_size([image for image, _ in dataset.pairs] if hasattr(dataset, "pairs")
                                                else [Path(args.images)])
        if problem:
            print(f"train: {problem}", file=sys.stderr)
        recorded = {} if pixel_size is None else {"pixel_size": pixel_size.to_dict()}
        last = result.history[-1] if result.history else {}
        save_model(result.model.cpu(), args.output, normalization=dataset.normalization,
                   epochs=last.get("epoch", 0), steps=last.get("step", 0), history=result.history[-1:],
                   recipe=dataclasses.asdict(recipe), **recorded)
        print(f"saved {args.output} ({len(result.history)} epochs, {last.get('step', 0)} steps"
              + (", stopped by the time limit" if result.stopped_early else "") + "; "
              + ", ".join(f"{k} {v:.4g}" for k, v in last.items() if k.endswith(("loss", "iou", "f1"))) + "); "
              f"checkpoints and logs in {work_dir}" + (f"; best model {result.best}" if result.best else ""))
    return 0


def cmd_demo(args) -> int:
    from . import demo

    result = demo.run(args.output, quick=args.quick, seed=args.seed, epochs=args.epochs, device=args.device,
                      threads=args.threads or None, progress=False if args.no_progress else None)
    if args.quick:
        return 0
    short = [f"{name} {value:.3f} is below the demo's target of {demo.TARGETS[key]}"
             for key, name, value in (("iou", "foreground IoU", result.iou), ("object_f1", "object F1", result.object_f1))
             if value < demo.TARGETS[key]]
    for line in short:
        print(line, file=sys.stderr)
    return 1 if short else 0


def cmd_segment(args) -> int:
    from . import segment

    if (args.num_parts is None) != (args.part_id is None):
        args.parser.error("--num-parts and --part-id go together")
    num_parts, part_id = (args.num_parts, args.part_id) if args.num_parts is not None else (1, 0)
    try:
        segment.check_parts(num_parts, part_id)
    except ValueError as error:
        args.parser.error(str(error))
    options = _instance_options(args)
    if options is not None and args.output != "instances":
        args.parser.error("--min-size, --no-fill-holes, --border, --threshold, --split and --no-split go with "
                          "--output instances")
    if args.overlay and args.output == "probabilities":
        args.parser.error("--overlay outlines labels or instances, not probabilities")
    if args.output == "instances":
        classes = _model_classes(args.model)
        if classes is not None and classes != 2:
            args.parser.error(f"--output instances needs a model of 2 classes (background, foreground); "
                              f"{args.model} has {classes}: use --output labels (a class per pixel) instead")
    result = segment.run(args.input, args.output_dir, args.model, output=args.output, format=args.format,
                         tile_size=args.tile_size, batch_size=args.batch_size, device=args.device, dtype=args.dtype,
                         resume=args.resume, num_parts=num_parts, part_id=part_id, max_pixels=args.max_pixels,
                         progress=False if args.no_progress else None, instance_options=options,
                         overlay=args.overlay)
    return result.exit_status


def cmd_export(args) -> int:
    import pickle

    from . import load_model
    from .export import check_output, export

    package_options = {"--test-image": args.test_image, "--name": args.name, "--author": args.author,
                       "--license": args.license, "--description": args.description}
    try:
        check_output(args.output, args.format)          # before the model is read: fail fast
        given = [flag for flag, value in package_options.items() if value is not None]
        if args.format != "bioimageio" and given:
            raise ValueError(f"{', '.join(given)}: options of --format bioimageio only; drop them for --format {args.format}")
        options = {} if args.format != "bioimageio" else dict(
            test_image=_read_test_image(args.test_image) if args.test_image else None, name=args.name,
            authors=args.author, license=args.license or "CC-BY-4.0", description=args.description)
        model = load_model(args.model)
        written = export(model, args.output, args.format, **options)
    except (OSError, ValueError, TypeError, ImportError, pickle.UnpicklingError) as error:
        raise SystemExit(f"export: {error}") from None
    synthetic = args.format == "bioimageio" and not args.test_image
    print(f"wrote {written}" + ("; its test image is synthetic nuclei: pass --test-image with an image of your "
                                "data to show what the model is for" if synthetic else ""))
    return 0


def _read_test_image(path):
    from .image_io import read_image

    image, info = read_image(path, lazy=False)
    if info.axes not in ("YX", "CYX"):
        raise ValueError(f"--test-image {path}: need a 2-D image (axes YX or CYX), got axes {info.axes!r} "
                         f"(shape {info.shape}); save one plane of it")
    return image


def _instance_options(args):
    """An InstanceOptions from --min-size, --no-fill-holes, --border, --threshold, --split, --no-split;
    None when none was given."""
    from .instances import InstanceOptions

    given = {key: value for key, value in (("min_size", args.min_size), ("border", args.border),
                                           ("fill_holes", False if args.no_fill_holes else None),
                                           ("threshold", args.threshold), ("split", args.split)) if value is not None}
    if args.no_split:
        if args.split is not None:
            args.parser.error("--split and --no-split exclude each other")
        given["split"] = None
    try:
        return InstanceOptions(**given) if given else None
    except ValueError as error:
        args.parser.error(str(error))


def _model_classes(path) -> int | None:
    """The number of classes a .safetensors model file declares (None for other files: checked on loading)."""
    from .model_file import read_model_config

    if Path(path).suffix != ".safetensors" or not Path(path).is_file():
        return None
    try:
        return int(read_model_config(path)["architecture"]["num_classes"])
    except (ValueError, KeyError, OSError):
        return None      # the loader says what is wrong with the file


def cmd_evaluate(args) -> int:
    from .evaluation import evaluate_model
    from .image_io import write_bytes_atomically
    from .instances import InstanceOptions
    from .model_file import load_model

    classes = _model_classes(args.model)
    if classes is not None and classes != 2:
        args.parser.error(f"evaluate needs a model of 2 classes (background, foreground); {args.model} has {classes}")
    output_dir = Path(args.output_dir)
    model = load_model(args.model, device=args.device or "cpu")
    options = _instance_options(args) or InstanceOptions()
    evaluation = evaluate_model(model, args.images, args.labels, label_suffix=args.label_suffix,
                                instance_options=options, tile_size=args.tile_size, batch_size=args.batch_size,
                                device=args.device, dtype=args.dtype,
                                overlay_dir=output_dir / "overlays" if args.overlay else None,
                                log=None if args.no_progress else lambda line: print(line, file=sys.stderr))
    csv_path = write_bytes_atomically(output_dir / "evaluation.csv", evaluation.csv().encode())
    print(f"{args.model} on {len(evaluation.images)} image(s); objects: foreground probability above "
          f"{options.threshold:g}" + (f", split at cores above {options.split:g}" if options.split else "")
          + f", min size {options.min_size} px, holes {'filled' if options.fill_holes else 'kept'}, "
          f"borders {options.border} px")
    print(evaluation.summary())
    print(f"wrote {csv_path}" + (f" and overlays in {output_dir / 'overlays'} (yellow: predicted, cyan: true)"
                                 if args.overlay else ""))
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _checked(name: str, kind, accept, need: str):
    """An argparse type: ``kind(text)`` where ``accept`` holds, else an error saying what is needed."""
    def parse(text: str):
        value = kind(text)
        if not accept(value):
            raise argparse.ArgumentTypeError(f"must be {need}, got {text}")
        return value
    parse.__name__ = name          # argparse names it in "invalid <name> value"
    return parse


_positive_float = _checked("_positive_float", float, lambda v: 0 < v < float("inf"), "a number > 0")
_non_negative_float = _checked("_non_negative_float", float, lambda v: 0 <= v < float("inf"), "a number >= 0")
_non_negative_int = _checked("_non_negative_int", int, lambda v: v >= 0, "an integer >= 0")
_probability = _checked("_probability", float, lambda v: 0 < v < 1, "a probability in (0, 1)")


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {value}")
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

    p = sub.add_parser("train", help="train a U-Net on labelled images (a fast recipe by default, or the paper's)",
                       description="Train on labelled images by a recipe: 'default' (a small U-Net, Adam with warm-up "
                                   "and cosine decay, batches of 140 px tiles, 90-degree rotations, flips, mild "
                                   "elastic deformation and grey values: minutes on a CPU) or 'paper' (SGD with "
                                   "momentum 0.99, batch 1, large tiles, the paper's network and augmentation). Every "
                                   "recipe value has its own flag; unset flags keep the recipe's. Saves a model file "
                                   "for `unet-fast segment` and `evaluate`. Under torchrun it trains data-parallel.")
    p.add_argument("--images", required=True, help="folder of images (TIFF/PNG), or a multi-page TIFF stack")
    p.add_argument("--labels", required=True, help="folder of label images matched by base name, or a label stack")
    p.add_argument("-o", "--output", required=True, help="model file to write (.safetensors)")
    p.add_argument("--recipe", choices=("default", "paper"), default="default",
                   help="the values of every flag below left unset (default: %(default)s; see unet_fast.recipes)")
    g = p.add_argument_group("length and validation")
    g.add_argument("--epochs", type=_positive_int, default=None)
    g.add_argument("--tiles-per-epoch", type=_positive_int, default=None)
    g.add_argument("--time-limit", type=_positive_float, default=None, metavar="MINUTES",
                   help="stop at the first step past this wall-clock budget (resumes included), saving the model; "
                        "the learning-rate schedule then anneals within it")
    g.add_argument("--val-images", default=None, help="validation images (folder or stack), scored every epoch")
    g.add_argument("--val-labels", default=None, help="their labels")
    g.add_argument("--val-fraction", type=_fraction, default=0.0,
                   help="or: share of the training images held out for validation")
    g.add_argument("--best-metric", choices=("f1", "iou", "loss"), default=None,
                   help="with validation, the work dir's best.safetensors is the best model by this (default f1: "
                        "object F1 at IoU 0.5)")
    g = p.add_argument_group("optimisation")
    g.add_argument("--optimizer", choices=("sgd", "adam", "adamw"), default=None)
    g.add_argument("--lr", type=_positive_float, default=None, help="peak learning rate")
    g.add_argument("--lr-schedule", choices=("constant", "cosine"), default=None)
    g.add_argument("--warmup", dest="warmup_steps", type=_non_negative_int, default=None, metavar="STEPS",
                   help="linear warm-up steps")
    g.add_argument("--momentum", type=float, default=None, help="SGD's momentum, Adam's beta1")
    g.add_argument("--weight-decay", type=_non_negative_float, default=None)
    g.add_argument("--tile-size", type=_positive_int, default=None,
                   help="input tile size (legal for the net); default: the recipe's (for another depth, the "
                        "smallest tile with as large an output; paper: the largest up to 572 that fits the images)")
    g.add_argument("--batch-size", type=_positive_int, default=None)
    g = p.add_argument_group("augmentation")
    g.add_argument("--flips", action=argparse.BooleanOptionalAction, default=None)
    g.add_argument("--rotation", choices=("90", "any", "none"), default=None,
                   help="90: by multiples of 90 degrees (exact); any: by any angle (interpolated)")
    g.add_argument("--elastic", dest="elastic_sigma", type=_non_negative_float, default=None, metavar="PX",
                   help="elastic deformation: std of the 3x3 lattice's displacements (0: off)")
    g.add_argument("--grey-values", action=argparse.BooleanOptionalAction, default=None,
                   help="random gamma, contrast and brightness")
    g.add_argument("--noise", type=_non_negative_float, default=None, help="std of added Gaussian noise")
    g.add_argument("--no-augment", action="store_true", help="no augmentation at all")
    g = p.add_argument_group("network, inputs and targets")
    g.add_argument("--depth", type=_positive_int, default=None)
    g.add_argument("--base-channels", type=_positive_int, default=None)
    g.add_argument("--padding", choices=geometry.PADDINGS, default=None)
    g.add_argument("--dropout", type=float, default=None, help="at the end of the contracting path")
    g.add_argument("--num-classes", type=_positive_int, default=2)
    g.add_argument("--label-kind", choices=("auto", "instance", "semantic"), default="auto",
                   help="auto: >2 distinct values = instances, else a binary mask (see unet_fast.data)")
    g.add_argument("--label-suffix", default="", help="label files are named <image base name><suffix>.*")
    g.add_argument("--percentiles", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"),
                   help="inputs: (x - P_LOW) / (P_HIGH - P_LOW) with the image's percentiles (stored with the model)")
    g.add_argument("--clip", action=argparse.BooleanOptionalAction, default=None,
                   help="inputs: clipped to [0, 1] after the percentiles")
    g.add_argument("--w0", type=_non_negative_float, default=None, help="weight-map border weight")
    g.add_argument("--sigma", type=_positive_float, default=None, help="weight-map border width in pixels")
    g.add_argument("--class-weights", choices=("balanced", "none"), default=None,
                   help="weight-map class balancing")
    g = p.add_argument_group("running")
    g.add_argument("--device", default=None, help="cpu, cuda or cuda:K (default: cuda if available)")
    g.add_argument("--threads", type=_positive_int, default=None, help="torch CPU threads (default: torch's)")
    g.add_argument("--amp", action="store_true", help="bf16 autocast")
    g.add_argument("--resume", default=None, metavar="CKPT",
                   help="continue from a checkpoint (last.safetensors), with the same options")
    g.add_argument("--cache-dir", default=None, help="cache weight maps on disk here")
    g.add_argument("--work-dir", default=None, help="checkpoints and logs (default: the output path without suffix)")
    g.add_argument("--workers", type=int, default=0, help="data loader worker processes")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--no-progress", action="store_true", help="no start-up line, progress or epoch lines")
    p.set_defaults(func=cmd_train, parser=p)

    p = sub.add_parser("demo", help="train a small U-Net on synthetic nuclei, segment a held-out image, draw it",
                       description="The built-in example: about a minute and a half on 2 CPU cores, no GPU or download needed. "
                                   "Writes demo.png, model.safetensors, heldout.tif and training logs.")
    p.add_argument("-o", "--output", default="demo_output", help="output folder (default: ./demo_output)")
    p.add_argument("--quick", action="store_true", help="a few training steps only (a smoke test)")
    p.add_argument("--epochs", type=_positive_int, default=None, help="override the recipe's epochs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu (default) or cuda")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_demo)

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
    p.add_argument("--output", choices=("labels", "probabilities", "instances"), default="labels",
                   help="labels: a class per pixel; probabilities; instances (2-class models): objects numbered "
                        "1..K, uint16 (uint32 above 65534 objects), the same whatever the tiles")
    p.add_argument("--format", choices=("tif", "ome.zarr"), default="tif",
                   help="tiled BigTIFF (classes as samples per pixel) or OME-Zarr (instances: an NGFF label image)")
    _instance_flags(p)
    p.add_argument("--overlay", action="store_true",
                   help="also write OUTDIR/overlays/<name>.png: the image with the result's outlines, at most 1024 px")
    p.add_argument("--continue", dest="resume", action="store_true", help="skip inputs whose output exists")
    p.add_argument("--num-parts", type=_positive_int, help="split the file list into this many parts ...")
    p.add_argument("--part-id", type=int, help="... and segment part K (0-based), e.g. a job-array index")
    p.add_argument("--max-pixels", type=_positive_int, default=2 ** 30,
                   help="refuse files declaring more pixels unless they can be streamed (default 2^30)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_segment, parser=p)

    p = sub.add_parser("export", help="write a model as a bioimage.io package, ONNX or TorchScript",
                       description="bioimageio: a .zip for the bioimage.io model zoo and the tools that run it (Fiji/"
                                   "deepImageJ, ilastik, QuPath, napari); onnx: a .onnx file; torchscript: a .pt file. "
                                   "Any batch size and legal image size runs. Never overwrites a file.")
    p.add_argument("model", help="model file (.safetensors written by unet-fast train or save_model)")
    p.add_argument("--format", required=True, choices=("bioimageio", "onnx", "torchscript"))
    p.add_argument("-o", "--output", required=True, help="file to write: .zip (bioimageio), .onnx or .pt (torchscript)")
    p.add_argument("--test-image", help="bioimageio: an image (TIFF/PNG) of your data; its centre becomes the "
                                        "package's test input (default: a synthetic nuclei image)")
    p.add_argument("--name", help="bioimageio: the model's name (default: from the output file name)")
    p.add_argument("--author", action="append", help="bioimageio: an author's name (repeat for several)")
    p.add_argument("--license", help="bioimageio: SPDX license of the weights (default CC-BY-4.0)")
    p.add_argument("--description", help="bioimageio: one sentence on what the model segments")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("evaluate", help="score a model on labelled images (IoU, Dice, object F1, AP, Rand error)",
                       description="Segment each labelled image into objects as `segment --output instances` does and "
                                   "score them: foreground IoU and Dice, object precision/recall/F1 at IoU 0.5, the "
                                   "mean over IoU 0.5..0.95 of TP/(TP+FP+FN) (AP, as the nuclei literature reports) "
                                   "and of F1, and the ISBI 2012 Rand error. Writes OUTDIR/evaluation.csv (a row per "
                                   "image and the mean) and prints a summary. Labels with more than two values are "
                                   "instances; a two-valued mask's objects are its connected components.")
    p.add_argument("-m", "--model", required=True, help="model file (2 classes)")
    p.add_argument("--images", required=True, help="folder of images, or a multi-page TIFF stack")
    p.add_argument("--labels", required=True, help="folder of label images matched by base name, or a label stack")
    p.add_argument("--label-suffix", default="", help="label files are named <image base name><suffix>.*")
    p.add_argument("-o", "--output-dir", default="evaluation",
                   help="for evaluation.csv and overlays (default: %(default)s)")
    p.add_argument("--overlay", action="store_true",
                   help="write OUTDIR/overlays/<name>.png: predicted outlines in yellow, true ones in cyan")
    _instance_flags(p)
    p.add_argument("--tile-size", type=_positive_int, help="input tile edge (default: planned from memory)")
    p.add_argument("--batch-size", type=_positive_int, help="tiles per forward (default: planned)")
    p.add_argument("--device", help="cpu, cuda or cuda:K (default: cpu)")
    p.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32")
    p.add_argument("--no-progress", action="store_true", help="no line per image while it runs")
    p.set_defaults(func=cmd_evaluate, parser=p)
    return parser


def _instance_flags(p) -> None:
    from .instances import InstanceOptions

    defaults = InstanceOptions()
    p.add_argument("--min-size", type=_non_negative_int, default=None, metavar="PX",
                   help=f"instances: remove objects of fewer pixels (default {defaults.min_size})")
    p.add_argument("--no-fill-holes", action="store_true", help="instances: keep holes inside objects")
    p.add_argument("--border", type=_non_negative_int, default=None, metavar="PX",
                   help=f"instances: give background within this distance of two objects to the nearest "
                        f"(default {defaults.border}; 0: off)")
    p.add_argument("--threshold", type=_probability, default=None, metavar="P",
                   help=f"instances: foreground where its probability is above P (default {defaults.threshold}: "
                        f"where it wins the argmax)")
    p.add_argument("--split", type=_probability, default=None, metavar="P",
                   help=f"instances: split objects with two or more cores (regions of >= {defaults.core_size} px "
                        f"where the probability is above P) along the probability's valleys (default {defaults.split})")
    p.add_argument("--no-split", action="store_true", help="instances: never split an object")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
