"""Tiled inference: predict_tiled against MONAI's sliding-window inference, and GPU pipeline overhead.

CPU: a 1024x1024 image, depth-5 base-64 net with random weights, bf16 (autocast) where the CPU
has it. Ours: the valid (paper) net, exact overlap-tile, tile planned from memory. Baseline:
monai.inferers.sliding_window_inference (roi 512, overlap 0.25, gaussian blending) on the
same-padding twin of the net with the same weights. Skipped when MONAI is not installed.

CPU: a folder of 64 small images through `segment`, together and one by one.

GPU (marked gpu): images per second for a folder of 512x512 images and tiles per second for a
large image, each beside the pure model forward at the same tile and batch.
"""
import numpy as np
import pytest
import torch

from network_flops import forward_gflop
from unet_fast import UNet
from unet_fast.inference import plan_tiles, predict_tiled

GFLOP_PER_572_TILE = forward_gflop(572)


def _bf16_ok() -> bool:
    return torch.ops.mkldnn._is_mkldnn_bf16_supported()


def _nets(padding_pair=("valid", "same"), base=64, depth=5):
    torch.manual_seed(0)
    valid = UNet(depth=depth, base_channels=base, padding=padding_pair[0]).eval()
    same = UNet(depth=depth, base_channels=base, padding=padding_pair[1]).eval()
    same.load_state_dict(valid.state_dict())
    return valid, same


@pytest.mark.parametrize("impl", ["predict_tiled", "monai_sliding_window-baseline"])
def test_cpu_1024_vs_monai(timed, benchmark, impl):
    monai_inferers = pytest.importorskip("monai.inferers")
    dtype = torch.bfloat16 if _bf16_ok() else torch.float32
    valid, same = _nets()
    image = np.random.default_rng(0).random((1024, 1024), dtype=np.float32)
    if impl == "predict_tiled":
        plan = plan_tiles(valid, image.shape, device="cpu", dtype=dtype)
        benchmark.extra_info.update(plan=plan.explain(), tiles=plan.tiles)
        run = lambda: predict_tiled(valid, image, dtype=dtype, output="probabilities", progress=False)
    else:
        same.to(memory_format=torch.channels_last)
        x = torch.from_numpy(image)[None, None]

        def run():
            with torch.inference_mode(), torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
                logits = monai_inferers.sliding_window_inference(
                    x, roi_size=(512, 512), sw_batch_size=1, predictor=same, overlap=0.25, mode="gaussian")
                return torch.softmax(logits.float(), 1)

    benchmark.group = f"1024x1024 depth-5 base-64 cpu {str(dtype).removeprefix('torch.')}"
    timed(run, rounds=2, warmup_rounds=1)


@pytest.mark.parametrize("impl", ["segment_together", "segment_one_by_one-baseline"])
def test_cpu_folder_of_small_images(timed, benchmark, impl, tmp_path, monkeypatch):
    """`unet-fast segment` of a folder of 64 images of 192 x 192 with the default recipe's network: small files
    of one shape segmented together (predict_images) against one file at a time, as before."""
    from unet_fast import image_io, segment

    torch.manual_seed(0)
    model = UNet(depth=3, base_channels=16).eval()
    rng = np.random.default_rng(0)
    for i in range(64):
        image_io.write_image(tmp_path / "in" / f"im{i:03d}.tif", rng.integers(0, 4000, (192, 192)).astype(np.uint16))
    files, _ = segment.expand_inputs([str(tmp_path / "in")])
    if impl.endswith("baseline"):
        monkeypatch.setattr(segment, "SMALL_FILE_PIXELS", 0)
    run = lambda: segment.segment_files(files, tmp_path / "out", model, log=lambda *args, **kwargs: None)
    benchmark.group = "folder of 64 images 192x192, depth-3 base-16 cpu fp32"
    benchmark.extra_info.update(images=64)
    timed(run, rounds=3, warmup_rounds=1)


def _gpu_forward(model, batch, tile):
    x = torch.randn(batch, 1, tile, tile, device="cuda").contiguous(memory_format=torch.channels_last)

    def forward():
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
            return model(x).argmax(1).to(torch.uint8)

    return forward


@pytest.mark.gpu
@pytest.mark.parametrize("impl", ["predict_tiled", "forward_only-baseline"])
def test_gpu_folder_of_512_images(timed, benchmark, impl):
    model = UNet().cuda().eval().to(memory_format=torch.channels_last)
    images = np.random.default_rng(0).integers(0, 255, (32, 512, 512)).astype(np.uint8)
    plan = plan_tiles(model, (512, 512), slices=32, device="cuda", dtype=torch.bfloat16)
    if impl == "predict_tiled":
        run = lambda: predict_tiled(model, images, dtype="bf16", progress=False)
    else:
        run = _gpu_forward(model, plan.batch_size, plan.tile[0])
    benchmark.group = f"gpu 32 images 512x512 bf16 (tile {plan.tile}, batch {plan.batch_size})"
    benchmark.extra_info.update(images=32 if impl == "predict_tiled" else plan.batch_size, plan=plan.explain())
    timed(run, device="cuda", rounds=5)


@pytest.mark.gpu
@pytest.mark.parametrize("impl", ["predict_tiled", "forward_only-baseline"])
def test_gpu_large_image_tiles(timed, benchmark, impl):
    model = UNet().cuda().eval().to(memory_format=torch.channels_last)
    image = np.random.default_rng(0).integers(0, 255, (8192, 8192)).astype(np.uint8)
    plan = plan_tiles(model, image.shape, device="cuda", dtype=torch.bfloat16)
    if impl == "predict_tiled":
        run = lambda: predict_tiled(model, image, dtype="bf16", progress=False)
        tiles = plan.tiles
    else:
        forward = _gpu_forward(model, plan.batch_size, plan.tile[0])
        batches = -(-plan.tiles // plan.batch_size)
        run = lambda: [forward() for _ in range(batches)]
        tiles = batches * plan.batch_size
    benchmark.group = f"gpu 8192x8192 bf16 (tile {plan.tile}, batch {plan.batch_size})"
    benchmark.extra_info.update(tiles=tiles, plan=plan.explain())
    timed(run, device="cuda", rounds=3)
