"""predict_tiled: tiled == one whole-image pass, for any size, both paddings, lazy in and out."""
import logging
import weakref

import numpy as np
import pytest
import tifffile
import torch
from hypothesis import given, settings, strategies as st

import unet_fast
from unet_fast import geometry, reference
from unet_fast.inference import (estimate_activation_bytes, plan_tiles, predict_tiled,
                                 same_padding_margin, usable_tile_sizes)
from unet_fast.tiling import cpu_batch_bytes
from unet_fast.normalization import Normalization
from tolerances import BF16_TILED, assert_close

NONE = Normalization(mode="none")


def tiny(depth=2, padding="valid", in_channels=1, num_classes=3, base=4, cls=reference.UNet, seed=0):
    torch.manual_seed(seed)
    return cls(in_channels=in_channels, num_classes=num_classes, depth=depth, base_channels=base,
               padding=padding).eval()


def whole_image_logits(model, image):
    """One forward pass over the image mirrored by the tiles' context/margin, cropped back."""
    depth, padding = model.depth, model.padding
    lead = geometry.context(depth) if padding == "valid" else same_padding_margin(depth)
    height, width = image.shape[-2:]

    def legal(n):
        t = n + 2 * lead
        while not geometry.is_valid_input_size(t, depth, padding) or geometry.output_size(t, depth, padding) < n + (
                0 if padding == "valid" else 2 * lead):
            t += 1
        return t

    th, tw = legal(height), legal(width)
    pad = [(0, 0)] * (image.ndim - 2) + [(lead, th - height - lead), (lead, tw - width - lead)]
    x = torch.from_numpy(np.pad(image, pad, mode="reflect")).float()
    x = x.reshape(-1, model.in_channels, th, tw)
    with torch.no_grad():
        y = model(x)
    offset = 0 if padding == "valid" else lead
    return y[:, :, offset:offset + height, offset:offset + width]


@settings(max_examples=12, deadline=None)
@given(depth=st.sampled_from([2, 3]), padding=st.sampled_from(["valid", "same"]),
       height=st.integers(1, 70), width=st.integers(1, 70), tile_index=st.integers(0, 3),
       data=st.data())
def test_tiled_equals_whole_image(depth, padding, height, width, tile_index, data):
    model = tiny(depth, padding)
    image = np.random.default_rng(height * 71 + width).random((height, width), dtype=np.float32)
    sizes = usable_tile_sizes(depth, padding, 80)
    tile = None if tile_index == 0 else sizes[min(len(sizes) - 1, (tile_index - 1) * len(sizes) // 3)]
    got = predict_tiled(model, image, tile_size=tile, output="logits", progress=False, normalization=NONE)
    assert got.shape == (3, height, width)
    assert_close(torch.from_numpy(got), whole_image_logits(model, image)[0])


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_multichannel_stack_and_batches(padding):
    model = tiny(3, padding, in_channels=2, num_classes=2, cls=unet_fast.UNet)
    stack = np.random.default_rng(0).random((3, 2, 45, 77), dtype=np.float32)
    tile = usable_tile_sizes(3, padding, 60)[-1]
    got = predict_tiled(model, stack, tile_size=tile, batch_size=4, output="logits", progress=False)
    assert got.shape == (3, 2, 45, 77)
    assert_close(torch.from_numpy(got), whole_image_logits(model, stack))
    probabilities = predict_tiled(model, stack, tile_size=tile, output="probabilities", progress=False)
    assert probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities, torch.softmax(torch.from_numpy(got), 1).numpy(), atol=1e-5)
    labels = predict_tiled(model, torch.from_numpy(stack), tile_size=tile, progress=False)
    assert labels.dtype == np.uint8 and labels.shape == (3, 45, 77)
    agree = (labels == got.argmax(1)).mean()
    assert agree > 0.999


def test_grey_stack_is_processed_slice_by_slice():
    model = tiny(2)
    stack = np.random.default_rng(1).random((4, 30, 20), dtype=np.float32)
    got = predict_tiled(model, stack, output="logits", batch_size=3, progress=False)
    for z in range(4):
        assert_close(torch.from_numpy(got[z]), whole_image_logits(model, stack[z])[0])


def test_repeatable_bit_for_bit_with_the_same_tiles():
    model = tiny(3)
    image = np.random.default_rng(2).random((90, 70), dtype=np.float32)
    a = predict_tiled(model, image, tile_size=52, output="logits", progress=False)
    b = predict_tiled(model, image, tile_size=52, output="logits", progress=False)
    np.testing.assert_array_equal(a, b)


def test_bf16_is_close_to_fp32():
    model = tiny(2, base=8)
    image = np.random.default_rng(3).random((40, 40), dtype=np.float32)
    exact = predict_tiled(model, image, output="logits", progress=False)
    half = predict_tiled(model, image, output="logits", dtype="bf16", progress=False)
    assert half.dtype == np.float32
    assert np.abs(half - exact).max() <= BF16_TILED["of_max"] * np.abs(exact).max() + BF16_TILED["atol"]


def test_integer_images_are_normalised_with_the_models_rule():
    model = tiny(2)
    model.normalization = Normalization(mode="fixed", low=0, high=1000)
    image = np.random.default_rng(4).integers(0, 1000, (33, 29)).astype(np.uint16)
    got = predict_tiled(model, image, output="logits", progress=False)
    assert_close(torch.from_numpy(got), whole_image_logits(model, image / 1000.0)[0])


def test_lazy_inputs_memmap_and_tiff_zarr(tmp_path):
    model = tiny(3)
    image = np.random.default_rng(5).random((130, 90), dtype=np.float32)
    expected = predict_tiled(model, image, tile_size=80, output="logits", progress=False)
    mm = np.lib.format.open_memmap(tmp_path / "a.npy", mode="w+", dtype=np.float32, shape=image.shape)
    mm[:] = image
    mm.flush()
    lazy = np.load(tmp_path / "a.npy", mmap_mode="r")
    np.testing.assert_array_equal(predict_tiled(model, lazy, tile_size=80, output="logits", progress=False),
                                  expected)
    zarr = pytest.importorskip("zarr")  # the memmap part ran; the rest reads the TIFF through zarr
    tifffile.imwrite(tmp_path / "a.tif", image, tile=(32, 32))
    z = zarr.open(tifffile.imread(tmp_path / "a.tif", aszarr=True), mode="r")
    np.testing.assert_array_equal(predict_tiled(model, z, tile_size=80, output="logits", progress=False), expected)


def test_outputs_memmap_zarr_tiff_and_ome_zarr(tmp_path):
    zarr = pytest.importorskip("zarr")
    model = tiny(3)
    image = np.random.default_rng(6).random((2, 300, 270), dtype=np.float32)  # 4 x 4 tiles of 128 per slice
    expected = predict_tiled(model, image, tile_size=128, progress=False)
    mm = np.lib.format.open_memmap(tmp_path / "o.npy", mode="w+", dtype=np.uint8, shape=expected.shape)
    assert predict_tiled(model, image, tile_size=128, progress=False, out=mm) is mm
    np.testing.assert_array_equal(mm, expected)
    za = zarr.create_array(store=str(tmp_path / "z.zarr"), shape=expected.shape, chunks=(1, 64, 64), dtype="uint8")
    predict_tiled(model, image, tile_size=128, progress=False, out=za)
    np.testing.assert_array_equal(za[...], expected)
    path = predict_tiled(model, image, tile_size=128, progress=False, out=tmp_path / "o.tif")
    np.testing.assert_array_equal(tifffile.imread(path), expected)
    probabilities = predict_tiled(model, image, tile_size=128, output="probabilities", progress=False)
    path = predict_tiled(model, image, tile_size=128, output="probabilities", progress=False,
                         out=tmp_path / "p.ome.zarr")
    np.testing.assert_array_equal(np.moveaxis(zarr.open_group(str(path), mode="r")["0"][...], 0, 1), probabilities)
    with pytest.raises(ValueError, match="out has shape"):
        predict_tiled(model, image, progress=False, out=np.zeros((2, 300, 271), np.uint8))


def test_the_model_is_made_ready_once_and_left_as_it_was_found(monkeypatch):
    """predict_tiled runs the model in eval mode, channels_last, on the device, and gives it back in the mode it
    had. A model already so is not walked again (Module.to and eval cost about 1.5 ms a call, a fifth of a
    512 x 512 image's forward on an H200); one that is not is moved, and a training model trains again after."""
    model = tiny(cls=unet_fast.UNet).train()
    image = np.random.default_rng(0).random((30, 40), dtype=np.float32)
    want = predict_tiled(model.eval(), image, progress=False)
    model.train()
    calls = []
    for name in ("to", "eval"):
        original = getattr(torch.nn.Module, name)
        monkeypatch.setattr(torch.nn.Module, name, lambda self, *a, _o=original, _n=name, **k: (calls.append(_n),
                                                                                                 _o(self, *a, **k))[1])
    np.testing.assert_array_equal(predict_tiled(model, image, progress=False), want)
    assert model.training and all(m.training for m in model.modules())
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in model.parameters() if p.dim() == 4)
    assert calls.count("eval") == 1
    model.eval()
    calls.clear()
    np.testing.assert_array_equal(predict_tiled(model, image, progress=False), want)
    assert calls == [] and not model.training
    model.to(memory_format=torch.contiguous_format)         # a layout it is not run in: made so again
    calls.clear()
    np.testing.assert_array_equal(predict_tiled(model, image, progress=False), want)
    assert calls == ["to"]


def test_planner_picks_the_largest_tile_that_fits_and_explains():
    model = tiny(3, base=4)
    budget = cpu_batch_bytes(3, "valid", 1, 3, 4, 200, 200)   # what a CPU batch of one such tile takes
    plan = plan_tiles(model, (1000, 1000), device="cpu", memory_budget_bytes=budget)
    assert plan.estimated_bytes <= budget and plan.batch_size == 1
    assert plan.tile[0] >= 180 and "budget" in plan.explain()
    small = plan_tiles(model, (30, 20), device="cpu", memory_budget_bytes=budget)
    assert small.grid == (1, 1) and small.tile == (72, 60) and "one tile" in small.reason  # 32 and 20 px out
    gpu_budget = estimate_activation_bytes(3, "valid", 1, 3, 4, 200, 200)   # the GPU's model of a tile
    batched = plan_tiles(model, (1000, 1000), tile_size=200, device="meta", memory_budget_bytes=10 * gpu_budget)
    assert batched.batch_size == 10 and batched.estimated_bytes <= 10 * gpu_budget  # not on CPU: batch 1 there
    assert 200 * 2 ** 20 < estimate_activation_bytes(5, "valid", 1, 2, 64, 572, 572) < 2 ** 30


def test_a_given_tile_larger_than_the_image_is_cut_to_the_smallest_that_covers_it():
    """--tile-size 1020 for a folder of mixed sizes: the small images get the 72 x 60 tile the planner gives them
    (the same pixels, without computing a 1020 px tile of padding); larger axes keep the given tile."""
    model = tiny(3, base=4).eval()
    small = plan_tiles(model, (30, 20), tile_size=1020, device="cpu")
    assert small.tile == (72, 60) and small.grid == (1, 1) and "cut to the image's 72 x 60" in small.reason
    mixed = plan_tiles(model, (3000, 20), tile_size=(140, 1020), device="cpu")
    assert mixed.tile == (140, 60) and mixed.grid[1] == 1 and mixed.grid[0] > 1
    kept = plan_tiles(model, (3000, 3000), tile_size=140, device="cpu")
    assert kept.tile == (140, 140) and kept.reason == "tile size given by the caller"
    image = torch.rand(2, 1, 45, 31).permute(0, 1, 3, 2)                         # batch of 2, non-contiguous
    with torch.no_grad():
        want = predict_tiled(model, image, output="logits", progress=False)
    np.testing.assert_array_equal(predict_tiled(model, image, tile_size=1020, output="logits", progress=False), want)


def test_bad_arguments_are_named():
    model = tiny(2)
    image = np.zeros((20, 20), np.float32)
    with pytest.raises(ValueError, match="tile_size height: tile size 21"):
        predict_tiled(model, image, tile_size=21, progress=False)
    with pytest.raises(ValueError, match="output must be one of"):
        predict_tiled(model, image, output="mask", progress=False)
    with pytest.raises(ValueError, match="dtype must be one of"):
        predict_tiled(model, image, dtype="int8", progress=False)
    with pytest.raises(ValueError, match="in_channels=2"):
        predict_tiled(tiny(2, in_channels=2), np.zeros((3, 20, 20), np.float32), progress=False)
    with pytest.raises(TypeError, match="config attributes"):
        predict_tiled(torch.nn.Conv2d(1, 1, 1), image, progress=False)


class OutOfMemoryAbove(reference.UNet):
    """Raises torch.OutOfMemoryError when a forward gets more than ``limit`` input pixels, holding an
    activation in its frame as a real failed forward does; a forward asserts that no failed forward's
    activation is alive any more (a retry inside the ``except`` block would keep it, and on a GPU
    run out of memory again: an H100 did, at every halved batch)."""

    limit = 0
    calls = 0
    failed: list = []

    def forward(self, x):
        type(self).calls += 1
        assert all(alive() is None for alive in self.failed), "a retry while the failed forward's tensors live"
        if x.shape[0] * x.shape[2] * x.shape[3] > self.limit:
            activation = torch.empty(x.shape)
            self.failed.append(weakref.ref(activation))
            raise torch.OutOfMemoryError("simulated: CUDA out of memory")
        return super().forward(x)


@pytest.mark.parametrize("limit, expect", [(2 * 52 * 52, "batch 2"), (50 * 50, "48 px tiles")])
def test_out_of_memory_retries_with_a_smaller_plan(caplog, limit, expect):
    model = tiny(3, cls=OutOfMemoryAbove)
    OutOfMemoryAbove.limit = limit
    OutOfMemoryAbove.failed = []
    image = np.random.default_rng(7).random((40, 29), dtype=np.float32)
    with caplog.at_level(logging.INFO, logger="unet_fast.inference"):
        got = predict_tiled(model, image, tile_size=52, batch_size=4, output="logits", progress=False)
    assert expect in caplog.text and "retry" in caplog.text and OutOfMemoryAbove.failed
    assert_close(torch.from_numpy(got), whole_image_logits(tiny(3), image)[0])


def test_out_of_memory_never_retries_a_batch_size_that_failed():
    """Batches read before a halving go in parts of the size that worked: one failed forward at 8 and one at 4,
    not one per queued batch (a 32-slice stack ran {8: 3, 4: 6, 2: 16} forwards before)."""
    model = tiny(3, cls=OutOfMemoryAbove)
    OutOfMemoryAbove.limit = 2 * 52 * 52
    OutOfMemoryAbove.failed = []
    sizes = []
    forward = OutOfMemoryAbove.forward
    stack = np.random.default_rng(8).random((32, 20, 20), dtype=np.float32)
    try:
        OutOfMemoryAbove.forward = lambda self, x: sizes.append(x.shape[0]) or forward(self, x)
        got = predict_tiled(model, stack, layout="ZYX", tile_size=52, batch_size=8, output="logits", progress=False)
    finally:
        OutOfMemoryAbove.forward = forward
    assert sizes.count(8) == 1 and sizes.count(4) == 1 and set(sizes) == {8, 4, 2}
    want = predict_tiled(tiny(3), stack, layout="ZYX", tile_size=52, output="logits", progress=False)
    assert_close(torch.from_numpy(got), torch.from_numpy(want))


# ---- test-time augmentation

def _dihedral(array, k):
    array = np.rot90(array, k % 4, axes=(-2, -1))
    return array[..., ::-1] if k >= 4 else array


def _undo_dihedral(array, k):
    array = array[..., ::-1] if k >= 4 else array
    return np.rot90(array, -(k % 4), axes=(-2, -1))


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_tta_is_the_mean_of_the_eight_views(padding):
    """An image that one legal, non-square tile covers exactly (no pool-grid phase between the views): the
    TTA probabilities equal the mean of 8 plain predictions of the flipped/rotated image, turned back."""
    depth = 3
    model = tiny(depth, padding, num_classes=3, base=4)
    lead = geometry.context(depth) if padding == "valid" else same_padding_margin(depth)
    tile = (usable_tile_sizes(depth, padding, 90)[-1], usable_tile_sizes(depth, padding, 70)[-1])
    if padding == "valid":
        shape = tuple(geometry.output_size(t, depth, padding) for t in tile)
    else:
        shape = tuple(t - 2 * lead for t in tile)
    image = np.random.default_rng(5).random(shape, dtype=np.float32)
    got = predict_tiled(model, image, tile_size=tile, output="probabilities", tta=True, progress=False,
                        normalization=NONE)
    views = [_undo_dihedral(predict_tiled(model, np.ascontiguousarray(_dihedral(image, k)), output="probabilities",
                                          tile_size=tile if k % 2 == 0 else tile[::-1], progress=False,
                                          normalization=NONE), k) for k in range(8)]
    np.testing.assert_allclose(got, np.mean(views, axis=0), atol=2e-6)
    # not the plain prediction: the views do differ
    plain = predict_tiled(model, image, tile_size=tile, output="probabilities", progress=False, normalization=NONE)
    assert np.abs(plain - got).max() > 1e-3


@settings(max_examples=6, deadline=None)
@given(height=st.integers(1, 90), width=st.integers(1, 90), tile_index=st.integers(0, 2))
def test_tta_is_the_same_whatever_the_tiles(height, width, tile_index):
    model = tiny(3, num_classes=2, cls=unet_fast.UNet)
    image = np.random.default_rng(height * 97 + width).random((2, height, width), dtype=np.float32)[:, ::-1]  # strided
    sizes = usable_tile_sizes(3, "valid", 100)
    # sizes[1] keeps 8 px a tile (sizes[0], 4 px, is test_tiled_equals_whole_image's): a quarter of the tiles
    # of sizes[0], which with 8 views each took up to 14 s of this test on 2 CPU cores
    tiles = [None, sizes[1], (sizes[len(sizes) // 2], sizes[-1])]
    got = predict_tiled(model, image, tile_size=tiles[tile_index], batch_size=3, output="logits", tta=True,
                        progress=False)
    one = predict_tiled(model, image, tile_size=sizes[-1], output="logits", tta=True, progress=False)
    assert got.shape == (2, 2, height, width)
    np.testing.assert_allclose(got, one, atol=2e-5)
    # the logits are the log of the mean probabilities: labels and probabilities agree with them. In batches of
    # 16 (another batching than got's): the plan for the caller's 44 px tiles is batch 1, and each of up to
    # 2 x 23 x 23 tiles of 4 px kept then took 8 forwards of its own, 6 s a call at 90 x 90 (of 15 s for all)
    labels = predict_tiled(model, image, tile_size=tiles[tile_index], batch_size=16, tta=True, progress=False)
    probabilities = predict_tiled(model, image, tile_size=tiles[tile_index], batch_size=16, output="probabilities",
                                  tta=True, progress=False)
    np.testing.assert_allclose(probabilities, np.exp(got), atol=2e-6)
    decided = np.abs(probabilities[:, 1] - 0.5) > 1e-4
    np.testing.assert_array_equal(labels[decided], got.argmax(1)[decided])


def test_tta_instances_and_bad_values():
    model = tiny(2, num_classes=2)
    image = np.random.default_rng(7).random((37, 41), dtype=np.float32)
    instances = predict_tiled(model, image, output="instances", tta=True, tile_size=44, progress=False)
    whole = predict_tiled(model, image, output="instances", tta=True, progress=False)
    np.testing.assert_array_equal(instances, whole)
    for bad in ("yes", 1, None):
        with pytest.raises(ValueError, match="tta must be True or False"):
            predict_tiled(model, image, tta=bad, progress=False)


def test_gpu_plans_cap_the_tile_and_batch_instead():
    """On a GPU a huge image gets tiles of at most MAX_ACCELERATOR_TILE px, batched, however much memory
    there is (the H200 planned one 8380 px tile for an 8192^2 image); the CPU keeps its largest tile."""
    from unet_fast.tiling import MAX_ACCELERATOR_TILE

    model = tiny(3, base=4)
    huge = 140 * 2 ** 30
    plan = plan_tiles(model, (8192, 8192), device="meta", memory_budget_bytes=huge)
    assert max(plan.tile) <= MAX_ACCELERATOR_TILE and plan.grid[0] * plan.grid[1] >= 16
    assert f"up to {MAX_ACCELERATOR_TILE} px" in plan.reason
    # tiles this large saturate the GPU one by one: three batches, so reading and writing overlap a forward
    assert plan.batch_size == -(-plan.tiles // 3)
    small = plan_tiles(model, (500, 300), device="meta", memory_budget_bytes=huge)
    assert small.grid == (1, 1) and "one tile" in small.reason
    cpu = plan_tiles(model, (3000, 3000), device="cpu", memory_budget_bytes=huge)
    assert cpu.grid == (1, 1) and cpu.tile[0] > MAX_ACCELERATOR_TILE


def test_gpu_memory_budget_counts_what_pytorch_holds_unused(monkeypatch):
    """Blocks PyTorch's caching allocator keeps from earlier work count as free: the driver alone said a third
    less on an H100 after one forward pass, and predict_tiled planned (and then retried) smaller batches."""
    from unet_fast import inference, tiling
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (1000, 8000))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device=None: 600)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 100)
    assert tiling.cuda_free_bytes("cuda") == 1500
    assert tiling.memory_budget("cuda") == 1200
    assert inference.available_memory("cuda") == 1500
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device=None: 700)  # never less than the driver's
    assert tiling.cuda_free_bytes("cuda") == 1000
    # by the allocator's segments where it gives them: a kept CUDA graph's private pool is no one else's
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "memory_snapshot", lambda: [
        {"device": 0, "segment_pool_id": (0, 0), "total_size": 400, "allocated_size": 100},
        {"device": 0, "segment_pool_id": (1, 3), "total_size": 300, "allocated_size": 0},  # a graph's pool
        {"device": 1, "segment_pool_id": (0, 0), "total_size": 900, "allocated_size": 0}])  # another GPU
    assert tiling.cuda_free_bytes("cuda") == 1300


@pytest.mark.parametrize("layout, shape", [("YX", (13, 9)), ("CYX", (2, 1, 6)), ("ZYX", (2, 3, 1))])
def test_a_window_mirrors_as_the_index_arrays_say(layout, shape):
    """_Source.window copies runs of slices (reversed where mirrored), or gathers by axis for an image a few
    pixels long: the same pixels as indexing by geometry.mirror_indices, inside, across a border, wholly in a
    mirrored margin, and many times the image's size; into a given buffer of another dtype too."""
    from unet_fast.geometry import mirror_indices
    from unet_fast.inference import _Source
    image = np.arange(np.prod(shape), dtype=np.uint16).reshape(shape)
    source = _Source(image, layout, 2 if layout == "CYX" else 1)
    planes = image if layout == "CYX" else image[None]
    rng = np.random.default_rng(0)
    height, width = shape[-2:]
    windows = [(0, height, 0, width), (-5, -1, -3, -1), (height + 1, height + 4, 0, 2)]
    for _ in range(60):
        y0, x0 = int(rng.integers(-3 * height, 3 * height)), int(rng.integers(-3 * width, 3 * width))
        windows.append((y0, y0 + int(rng.integers(1, 4 * height)), x0, x0 + int(rng.integers(1, 4 * width))))
    for y0, y1, x0, x1 in windows:
        n = int(rng.integers(0, 2)) if layout == "ZYX" else 0
        plane = planes[:, n] if layout == "ZYX" else planes
        want = plane[:, mirror_indices(y0, y1, height)[:, None], mirror_indices(x0, x1, width)[None, :]]
        assert np.array_equal(source.window(n, y0, y1, x0, x1), want), (y0, y1, x0, x1)
        out = np.full(want.shape, -1.0, np.float32)
        assert source.window(n, y0, y1, x0, x1, out=out) is out
        assert np.array_equal(out, want.astype(np.float32)), (y0, y1, x0, x1)


@pytest.mark.parametrize("image, tile, tiles, batch", [
    ((8192, 8192), 1836, 25, 9),     # 3.4 Mpx tiles: a third of them a batch
    ((1536, 1536), 572, 16, 8),      # 0.33 Mpx tiles (384 px apart): 8 make a busy GPU, two batches
    ((2000, 2000), 572, 36, 12),     # many: a third of them a batch
    ((768, 768), 572, 4, 4),         # too few tiles to saturate in three batches: one
])
def test_gpu_batches_pipeline_where_they_saturate_the_gpu(image, tile, tiles, batch):
    """On a GPU, batches hold at most a third of the tiles unless that falls below SATURATING_BATCH_PIXELS (the
    H200 ran one batch of 25 tiles of 1836 px with nothing overlapping its reading and writing: +161 %)."""
    from unet_fast.tiling import SATURATING_BATCH_PIXELS
    plan = plan_tiles(tiny(5, base=4), image, tile_size=tile, device="meta", memory_budget_bytes=140 * 2 ** 30)
    assert plan.tiles == tiles and plan.batch_size == batch
    assert plan.batch_size * tile * tile >= min(SATURATING_BATCH_PIXELS, tiles * tile * tile)
    # a caller's batch size is kept as asked
    given = plan_tiles(tiny(5, base=4), image, tile_size=tile, batch_size=25, device="meta", memory_budget_bytes=2 ** 40)
    assert given.batch_size == 25 and given.estimated_bytes == 25 * (plan.estimated_bytes // plan.batch_size)
    assert ("reading and writing overlap" in plan.reason) == (batch < min(tiles, 64))


def test_graphs_are_captured_by_default_only_where_launches_matter():
    """Two full batches or more of small tiles: a graph; batches of giant tiles (their forward computes for
    tens of milliseconds, and the graph would keep their activations as its pool), or one batch: none."""
    from unet_fast.inference import graphs_pay
    model = tiny(5, base=4)
    plan = lambda image, tile: plan_tiles(model, image, tile_size=tile, device="meta", memory_budget_bytes=2 ** 40)
    assert graphs_pay(model, plan((1536, 1536), 572), 1)        # 16 tiles of 572 px, batches of 8
    assert not graphs_pay(model, plan((8192, 8192), 1836), 1)   # 3 batches of 9 tiles of 1836 px
    assert not graphs_pay(model, plan((768, 768), 572), 1)      # one batch


def test_a_kept_graph_replays_only_its_own_computation(monkeypatch):
    """graphs_pay with the graph's key: a graph kept for labels does not make a single-batch call for probabilities
    capture a new graph (it would warm up twice and take another memory pool)."""
    from unet_fast import tile_graphs
    from unet_fast.inference import graphs_pay
    model = tiny(5, base=4)
    plan = plan_tiles(model, (768, 768), tile_size=572, device="meta", memory_budget_bytes=2 ** 40)  # one batch
    shape = (plan.batch_size, 1, *plan.tile)
    labels = ("labels", torch.uint8, torch.bfloat16, (92, 92), (384, 384), False)
    probabilities = ("probabilities",) + labels[1:]
    monkeypatch.setitem(tile_graphs._graphs, model, {(shape, labels, tile_graphs._parameters_key(model)): object()})
    assert graphs_pay(model, plan, 1, labels) and graphs_pay(model, plan, 1)
    assert not graphs_pay(model, plan, 1, probabilities)


# ---- non-finite outputs: refused, naming the tile and the cause, nothing written

class NaNInTile(reference.UNet):
    """Its logits hold one NaN (at the tile's first kept pixel) in tile number ``poisoned``, counted over the tiles
    of its forwards in the order they come."""

    poisoned, seen = 0, 0

    def forward(self, x):
        out = super().forward(x)
        first, self.seen = self.seen, self.seen + x.shape[0]
        if first <= self.poisoned < self.seen:
            out = out.clone()
            out[self.poisoned - first, 0, 0, 0] = float("nan")
        return out


def overflows_in_float16(**kwargs):
    """A 2-class model whose activations exceed float16's 65504 on images of [0, 1], but not float32's range."""
    model = tiny(2, num_classes=2, cls=unet_fast.UNet, **kwargs)
    with torch.no_grad():
        model.encoder[0]["conv1"].weight.mul_(1e4)
    return model


@pytest.mark.parametrize("output, tta", [("labels", False), ("probabilities", False), ("logits", False),
                                         ("instances", False), ("probabilities", True)])
def test_a_forward_that_overflows_float16_is_refused_naming_the_fix(tmp_path, output, tta):
    """fp16 autocast whose activations overflow: the labels were argmax of inf/NaN logits, written with exit 0.
    Now NonFiniteOutputError names the dtype and the fix, and the file out is not left behind; bf16 and fp32
    (whose range the model stays in) give finite results."""
    model = overflows_in_float16()
    image = np.random.default_rng(11).random((50, 60), dtype=np.float32)
    for dtype in ("fp32", "bf16"):
        got = predict_tiled(model, image, dtype=dtype, output=output, tta=tta, progress=False, normalization=NONE)
        assert np.isfinite(got).all()
    out = tmp_path / "result.tif"
    with pytest.raises(unet_fast.inference.NonFiniteOutputError,
                       match=r"the network's output holds NaN or infinite values \(in the tile of output rows 0\.\.50, "
                             r"columns 0\.\.60\).*nothing is written; in float16 \(dtype 'fp16'\).*use dtype 'bf16'"):
        predict_tiled(model, image, dtype="fp16", output=output, tta=tta, progress=False, normalization=NONE,
                      out=out)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("batch_size, poisoned, rows, columns", [(1, 4, "44..88", "44..88"), (3, 4, "44..88", "44..88"),
                                                                 (3, 8, "88..100", "88..90")])
def test_one_non_finite_tile_is_named_and_nothing_of_the_image_is_written(tmp_path, batch_size, poisoned, rows,
                                                                           columns):
    """A NaN in one tile's logits (of 3 x 3 tiles of 44 px, the last ones cut by the image's border), batched
    or not: the error names that tile's output pixels and says to check the model (fp32); the TIFF is not
    written, and no temporary file remains."""
    model = tiny(2, cls=NaNInTile)
    model.poisoned = poisoned
    image = np.random.default_rng(12).random((100, 90), dtype=np.float32)
    with pytest.raises(unet_fast.inference.NonFiniteOutputError,
                       match=rf"output rows {rows}, columns {columns}\).*check its weights") as error:
        predict_tiled(model, image, tile_size=60, batch_size=batch_size, progress=False, out=tmp_path / "labels.tif")
    assert error.value.plane is None and list(tmp_path.iterdir()) == []
    model.poisoned = -1                                                  # the same calls, all finite: written
    assert predict_tiled(model, image, tile_size=60, batch_size=batch_size, progress=False,
                         out=tmp_path / "labels.tif").exists()


def test_a_non_finite_tile_of_a_stack_and_of_test_time_augmentation_is_refused():
    """The slice of a stack is named (its tiles batched across slices); with tta, a NaN in one of a tile's 8
    views spoils the mean of the views, and is refused too; with a scale, the tile is the resampled image's."""
    model = tiny(2, cls=NaNInTile)
    stack = np.random.default_rng(13).random((3, 40, 40), dtype=np.float32)
    model.poisoned = 1                                                   # one tile a slice: slice 1's
    with pytest.raises(unet_fast.inference.NonFiniteOutputError, match=r"^slice 1: the network's output") as error:
        predict_tiled(model, stack, layout="ZYX", tile_size=60, batch_size=2, progress=False)
    assert error.value.plane == 1 and error.value.detail.startswith("the network's output holds NaN")
    model.poisoned, model.seen = 0, 0
    with pytest.raises(unet_fast.inference.NonFiniteOutputError, match=r"output rows 0\.\.40, columns 0\.\.40"):
        predict_tiled(model, stack[0], tile_size=60, tta=True, output="probabilities", progress=False)
    model.poisoned, model.seen = 0, 0                                    # resampled: whose rows and columns they are
    with pytest.raises(unet_fast.inference.NonFiniteOutputError,
                       match=r"^slice 0: .*output rows 0\.\.20, columns 0\.\.20 of the image resampled to 20x20\)"):
        predict_tiled(model, stack, layout="ZYX", tile_size=60, scale=0.5, progress=False)


def test_a_non_finite_output_after_an_out_of_memory_retry_with_smaller_tiles_is_refused(tmp_path):
    """The tile-by-tile path taken after out-of-memory errors checks its tiles too (a model with a NaN weight)."""
    model = tiny(3, cls=OutOfMemoryAbove)
    OutOfMemoryAbove.limit = 50 * 50                                     # 52 px tiles fail: 48 px ones
    OutOfMemoryAbove.failed = []
    with torch.no_grad():
        model.head.bias[1] = float("nan")
    image = np.random.default_rng(7).random((40, 29), dtype=np.float32)
    with pytest.raises(unet_fast.inference.NonFiniteOutputError, match="check its weights"):
        predict_tiled(model, image, tile_size=52, batch_size=4, output="logits", progress=False,
                      out=tmp_path / "logits.tif")
    assert OutOfMemoryAbove.failed and list(tmp_path.iterdir()) == []


def test_finite_tiles_is_exact_per_tile():
    """NaN, +inf and -inf each mark their tile, in every dtype; the largest finite values do not."""
    from unet_fast.inference import finite_tiles
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        logits = torch.zeros(4, 2, 9, 7, dtype=dtype).contiguous(memory_format=torch.channels_last)[..., 1:8, 1:6]
        logits[0] = torch.finfo(dtype).max
        logits[1, 1, 3, 2] = float("nan")
        logits[2, 0, 6, 4] = float("inf")
        logits[3, 1, 0, 0] = -float("inf")
        assert finite_tiles(logits).tolist() == [True, False, False, False]
        assert finite_tiles(logits[:1].neg()).tolist() == [True]


# ---- what users hand in: out arrays, tensors, numpy integers

class CountingForwards(reference.UNet):
    calls = 0

    def forward(self, x):
        type(self).calls += 1
        return super().forward(x)


@pytest.mark.parametrize("output, classes, out, match", [
    ("probabilities", 3, np.zeros((3, 30, 31), np.uint8), "probabilities need an out array of a floating-point"),
    ("logits", 3, np.zeros((3, 30, 31), np.int16), "logits need an out array of a floating-point"),
    ("labels", 3, np.zeros((30, 31), bool), "cannot hold the labels of 3 classes"),
    ("labels", 300, np.zeros((30, 31), np.uint8), "cannot hold the labels of 300 classes"),
    ("instances", 2, np.zeros((29, 31), np.uint16), r"out has shape \(29, 31\) but the labels need \(30, 31\)"),
    ("instances", 2, np.zeros((30, 31), bool), "integer array"),
])
@pytest.mark.parametrize("scale", [1.0, 2.0])
def test_an_out_array_that_cannot_hold_the_result_is_refused_before_any_work(output, classes, out, match, scale):
    """A cast into the out array would truncate probabilities to 0, or wrap labels of the higher classes round,
    silently; an out array of the wrong shape was refused only after the whole prediction (a rescaled one, or
    instances)."""
    model = tiny(2, num_classes=classes, cls=CountingForwards)
    CountingForwards.calls = 0
    image = np.random.default_rng(0).random((30, 31), dtype=np.float32)
    with pytest.raises(ValueError, match=match):
        predict_tiled(model, image, output=output, out=out, scale=scale, progress=False)
    assert CountingForwards.calls == 0
    with pytest.raises(ValueError, match=r"outs\[0\]"):
        unet_fast.inference.predict_images(model, [image], outs=[out], output=output, scale=scale, progress=False)


def test_out_arrays_of_other_types_that_hold_the_result_are_filled():
    model = tiny(2, num_classes=2)
    image = np.random.default_rng(1).random((30, 31), dtype=np.float32)
    labels = predict_tiled(model, image, progress=False)
    probabilities = predict_tiled(model, image, output="probabilities", progress=False)
    for out in (np.zeros((30, 31), bool), np.zeros((30, 31), ">u2"), torch.zeros(30, 31, dtype=torch.int64)):
        assert predict_tiled(model, image, out=out, progress=False) is out
        np.testing.assert_array_equal(np.asarray(out), labels)
    half = torch.zeros(2, 30, 31, dtype=torch.bfloat16)   # no numpy type: was a TypeError
    assert predict_tiled(model, image, output="probabilities", out=half, progress=False) is half
    np.testing.assert_allclose(half.float().numpy(), probabilities, atol=4e-3)


def test_a_bfloat16_tensor_image_is_read_as_its_float32_values():
    model = tiny(2)
    image = torch.from_numpy(np.random.default_rng(2).random((30, 31), dtype=np.float32)).bfloat16()
    got = predict_tiled(model, image, output="logits", progress=False)   # was a TypeError from .numpy()
    np.testing.assert_array_equal(got, predict_tiled(model, image.float(), output="logits", progress=False))


def test_numpy_integers_are_tile_and_batch_sizes():
    model = tiny(3)
    image = np.random.default_rng(3).random((40, 50), dtype=np.float32)
    want = predict_tiled(model, image, tile_size=52, batch_size=3, output="logits", progress=False)
    for tile in (np.int64(52), (np.int32(52), np.uint16(52))):
        got = predict_tiled(model, image, tile_size=tile, batch_size=np.int64(3), output="logits", progress=False)
        np.testing.assert_array_equal(got, want)
    for bad in (np.bool_(True), np.float64(52)):
        with pytest.raises(ValueError, match="tile_size must be an int"):
            predict_tiled(model, image, tile_size=bad, progress=False)


def test_out_of_memory_with_smaller_tiles_reads_a_flipped_image():
    """The retry with smaller tiles read a tile with nothing mirrored as a view of the image, which
    torch.from_numpy refuses when it has negative strides (np.flip, image[:, ::-1])."""
    model = tiny(3, cls=OutOfMemoryAbove)
    OutOfMemoryAbove.limit = 50 * 50
    OutOfMemoryAbove.failed = []
    image = np.random.default_rng(9).random((100, 60), dtype=np.float32)[::-1, ::-1]
    got = predict_tiled(model, image, tile_size=52, output="logits", progress=False)
    assert_close(torch.from_numpy(got), whole_image_logits(tiny(3), np.ascontiguousarray(image))[0])
