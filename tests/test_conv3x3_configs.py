"""The conv3x3 kernels under every kind of configuration the tuner may pick, and the table's rules.

Tile sizes change nothing in Triton's interpreter but the code paths do: the swapped product
(channels x pixels), the wgrad that reads one source per channel tile, the bias gradient summed in
wgrad, TF32 rounding of fp32 operands. Each is run here on the CPU against aten.
"""
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from unet_fast.ops.triton import conv3x3 as kernels
from unet_fast.ops.triton import conv3x3_configs as configs
from tolerances import assert_close
from triton_device import DEVICE, exact_fp32, needs_triton

Config = configs.Config


def inputs(batch, cx, cs, size, skip_size, cout, seed=0):
    g = torch.Generator().manual_seed(seed)
    cl = torch.channels_last
    x = torch.randn(batch, cx, size, size, generator=g).contiguous(memory_format=cl).to(DEVICE)
    skip = (torch.randn(batch, cs, skip_size, skip_size, generator=g).contiguous(memory_format=cl).to(DEVICE)
            if cs else None)
    weight = (torch.randn(cout, cs + cx, 3, 3, generator=g) / (3 * (cs + cx) ** 0.5)).to(DEVICE)
    bias = (torch.randn(cout, generator=g) * 0.1).to(DEVICE)
    return x, weight, bias, skip


def cat_input(x, skip):
    if skip is None:
        return x
    top = (skip.shape[2] - x.shape[2]) // 2
    left = (skip.shape[3] - x.shape[3]) // 2
    return torch.cat([skip[:, :, top:top + x.shape[2], left:left + x.shape[3]], x], dim=1)


@needs_triton
@pytest.mark.parametrize("config", [Config(64, 16, 16, 4, 1, swap=True), Config(32, 32, 16, 4, 1, swap=True),
                                    Config(16, 32, 32, 4, 1)], ids=["swap-64x16", "swap-32x32", "plain-16x32"])
@pytest.mark.parametrize("cs, padding", [(0, 0), (6, 0), (6, 1)])
def test_forward_and_dgrad_under_any_configuration(config, cs, padding):
    x, weight, bias, skip = inputs(2, 5, cs, 9, 13, 20)
    with exact_fp32():
        out, _ = kernels.conv3x3_forward(x, weight, bias, skip, padding, config=config)
        want = F.relu(F.conv2d(cat_input(x, skip), weight, bias, padding=padding))
    assert_close(out, want, msg=f"forward with {config}")
    grad = torch.randn(want.shape, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    cat = cat_input(x, skip).detach().requires_grad_()
    with exact_fp32():
        grad_x, grad_skip = kernels.conv3x3_input_grad(grad, weight, x, skip, padding, config=config)
        (want_cat,) = torch.autograd.grad(F.conv2d(cat, weight, padding=padding), [cat], grad)
    assert_close(grad_x, want_cat[:, cs:], msg=f"dgrad x with {config}")
    if skip is not None:
        top = (skip.shape[2] - x.shape[2]) // 2
        window = grad_skip[:, :, top:top + x.shape[2], top:top + x.shape[3]]
        assert_close(window, want_cat[:, :cs], msg=f"dgrad skip with {config}")
        outside = grad_skip.clone()
        outside[:, :, top:top + x.shape[2], top:top + x.shape[3]] = 0
        assert not outside.any(), "grad_skip is zero outside the window the forward read"


@needs_triton
@pytest.mark.parametrize("cs", [0, 16, 10], ids=["no-skip", "skip-one-source-per-tile", "skip-tiles-straddle"])
@pytest.mark.parametrize("config", [Config(16, 16, 32, 4, 1), Config(32, 16, 64, 4, 1)], ids=["ci16", "ci32"])
def test_wgrad_sources_and_bias_under_any_configuration(cs, config):
    """skip channels a multiple of the channel tile: one load per step from one tensor; else two."""
    x, weight, _, skip = inputs(2, 16, cs, 8, 12, 24)
    grad = torch.randn(2, 24, 6, 6, generator=torch.Generator().manual_seed(2)).to(DEVICE)
    with exact_fp32():
        grad_weight, grad_bias = kernels.conv3x3_weight_grad(grad, x, skip, 0, bias_grad=True, config=config)
        w = weight.detach().requires_grad_()
        (want,) = torch.autograd.grad(F.conv2d(cat_input(x, skip), w), [w], grad)
    assert_close(grad_weight, want, msg=f"wgrad with {config}, skip channels {cs}")
    assert_close(grad_bias, grad.sum((0, 2, 3)), msg="bias gradient")


@needs_triton
@pytest.mark.parametrize("cx, padding, layout", [(1, 0, "channels_last"), (3, 1, "channels_last"),
                                                 (4, 0, "nchw"), (2, 1, "nchw")])
@pytest.mark.parametrize("config", [Config(16, 16, 32, 4, 1), Config(16, 64, 64, 4, 1)], ids=["co16", "co64"])
def test_wgrad_folding_the_taps_for_thin_inputs(cx, padding, layout, config):
    """The first layer's wgrad (x alone, 1-4 channels) puts all nine taps in one tile's rows, reading each
    block of the gradient once; against autograd's conv2d, with the bias, odd sizes, batch 3, several
    output-channel tiles (24 of 16) and splits, both layouts of x."""
    x, weight, _, _ = inputs(3, cx, 0, 11, 0, 24)
    if layout == "nchw":
        x = x.contiguous()
    out = 11 + 2 * padding - 2
    grad = torch.randn(3, 24, out, out, generator=torch.Generator().manual_seed(4)).to(DEVICE)
    assert kernels.wgrad_folds_taps(cx, None) and not kernels.wgrad_folds_taps(cx, x) \
        and not kernels.wgrad_folds_taps(5, None)
    with exact_fp32():
        grad_weight, grad_bias = kernels.conv3x3_weight_grad(grad, x, None, padding, bias_grad=True, config=config)
        w = weight.detach().requires_grad_()
        (want,) = torch.autograd.grad(F.conv2d(x, w, padding=padding), [w], grad)
    assert_close(grad_weight, want, msg=f"folded wgrad with {config}, {cx} channels")
    assert_close(grad_bias, grad.sum((0, 2, 3)), msg="bias gradient")
    splits, per_split = kernels.wgrad_splits(3 * out * out, cx, 24, config, (27, 1), fold_taps=True)
    partial = torch.empty((splits, 9, cx, 24), device=DEVICE)
    launch = kernels.plan_wgrad(grad, x, None, partial, per_split, padding, config=config,
                                bias_partial=torch.empty((splits, 24), device=DEVICE))
    assert launch.meta["FOLD_TAPS"] and launch.meta["BLOCK_CI"] == max(16, 1 << (9 * cx - 1).bit_length())
    assert launch.grid[1] == 1 and launch.grid[0] == 2 * -(-24 // config.block_n)  # GEMM tiles, then the bias's


@needs_triton
def test_tf32_rounding_is_round_to_nearest_of_both_operands():
    """ROUND_TF32 (fp32 on a GPU with TF32 allowed): the kernel's product equals an exact convolution of
    operands rounded to TF32 the way cuDNN rounds them (10 mantissa bits, nearest, ties away)."""
    x, weight, bias, _ = inputs(1, 8, 0, 7, 0, 16)

    def tf32(t):
        bits = t.contiguous().view(torch.int32)
        rounded = (bits + 0x1000) & ~0x1FFF
        return rounded.view(torch.float32).reshape(t.shape)

    out = torch.empty(1, 16, 5, 5).contiguous(memory_format=torch.channels_last).to(DEVICE)
    launch = kernels.plan_conv(x, None, (0, 0), kernels.pack_forward_weight(weight), bias, out, None, (0, 0), 0, True)
    launch.meta.update(ROUND_TF32=True)  # what a GPU with TF32 allowed plans; the interpreter multiplies exactly
    launch.run()
    with exact_fp32():
        want = F.relu(F.conv2d(tf32(x), tf32(weight), bias))
        unrounded = F.relu(F.conv2d(x, weight, bias))
    assert_close(out, want, msg="rounded operands")
    assert (out - unrounded).abs().max() > 1e-6  # the rounding did something


@needs_triton
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the NaN, in the interpreter
def test_tf32_rounding_keeps_nan_and_inf():
    """A GPU's NaN (0x7fffffff, what max.NaN and 0/0 give) plus the rounding's half-unit carries into the sign
    bit: without care it became -0.0 and the NaN vanished from the next layer's input."""
    x, weight, bias, _ = inputs(1, 8, 0, 7, 0, 16)
    x = x.clone()
    x.view(torch.int32)[0, 0, 1, 1] = 0x7FFFFFFF
    x[0, 3, 5, 5] = float("inf")
    out = torch.empty(1, 16, 5, 5).contiguous(memory_format=torch.channels_last).to(DEVICE)
    launch = kernels.plan_conv(x, None, (0, 0), kernels.pack_forward_weight(weight), bias, out, None, (0, 0), 0, True)
    launch.meta.update(ROUND_TF32=True)
    launch.run()
    with exact_fp32():
        want = F.relu(F.conv2d(x, weight, bias))
    assert torch.isnan(want).any() and torch.isinf(want).any()
    assert torch.equal(torch.isnan(out), torch.isnan(want))
    assert torch.equal(torch.isinf(out), torch.isinf(want))


def test_rows_beyond_32_bits_are_refused_with_the_way_out():
    x = torch.empty(2, 4, 40000, 40000, device="meta").contiguous(memory_format=torch.channels_last)
    out = torch.empty(2, 8, 39998, 39998, device="meta").contiguous(memory_format=torch.channels_last)
    w = torch.empty(36, 8, device="meta")
    with pytest.raises(ValueError, match="predict_tiled"):
        kernels.plan_conv(x, None, (0, 0), w, None, out, None, (0, 0), 0, True, device_type="cuda")


def test_heuristic_and_candidates():
    """The heuristic sizes tiles to the layer; the tuner's candidates start with it, fit shared memory,
    and include the swapped product only for layers of at most 64 output channels."""
    assert configs.heuristic("forward", "bf16", 0, 1, 64) == Config(128, 64, 16, 8, 3)
    assert configs.heuristic("wgrad", "bf16", 0, 64, 64).block_n == 64  # not a half-empty 128 tile
    for kind in configs.KINDS:
        for cs, cx, cout in ((0, 1, 64), (64, 64, 64), (0, 512, 1024), (512, 512, 512)):
            found = configs.candidates(kind, "bf16", cs, cx, cout)
            assert found[0] == configs.heuristic(kind, "bf16", cs, cx, cout)
            assert len(found) == len(set(found))
            assert all(c.shared_bytes(2) <= configs.SHARED_MEMORY_BUDGET for c in found)
            assert any(c.swap for c in found) == (kind in ("forward", "dgrad") and cout <= 64)
            if kind == "pool":  # what the pooled epilogue runs: pointer kernel, unsplit, a capped tile
                assert all(not (c.tma or c.split_k > 1) and c.block_m * c.block_n <= configs.POOLED_MAX_TILE
                           for c in found)
    assert configs.candidates("forward", "fp32", 0, 64, 64) == [configs.heuristic("forward", "fp32", 0, 64, 64)]


def test_tma_candidates_only_for_16_bit_forward_and_dgrad():
    """On a GPU with TMA the tuner also tries the first three tiles through tensor descriptors, those wider than
    TMA_MAX_BLOCK_N output channels with at most TMA_WIDE_MAX_STAGES stages (deeper ones raced on an H100);
    never for wgrad (its own kernel) or TF32 (operands rounded in registers), and a table entry from before
    the field reads as no TMA."""
    plain = configs.candidates("dgrad", "bf16", 0, 128, 64)
    with_tma = configs.candidates("dgrad", "bf16", 0, 128, 64, tma=True)
    assert with_tma[:len(plain)] == plain
    assert with_tma[len(plain):] == [dataclasses.replace(c, tma=True) for c in plain[:3]]
    for channels in ((0, 64, 128), (0, 128, 128), (256, 256, 256), (0, 512, 1024)):
        for kind in ("forward", "dgrad"):
            found = configs.candidates(kind, "bf16", *channels, tma=True, rows=1 << 20)
            tma = [c for c in found if c.tma]
            assert tma and all(configs.tma_measured_right(c) for c in tma), (kind, channels)
            if channels[2] >= 256:  # wide tiles among the first three: tried at the depth measured right
                assert any(c.block_n > configs.TMA_MAX_BLOCK_N and c.num_stages == configs.TMA_WIDE_MAX_STAGES
                           for c in tma), (kind, channels, tma)
    for kind, dtype in (("wgrad", "bf16"), ("forward", "tf32")):
        assert not any(c.tma for c in configs.candidates(kind, dtype, 0, 64, 64, tma=True))
    assert Config(*[128, 64, 64, 8, 3, False]).tma is False
    assert configs.table_entry(Config(128, 64, 64, 8, 3, tma=True)) == [128, 64, 64, 8, 3, False, True]
    assert configs.table_entry(Config(128, 64, 64, 8, 3)) == [128, 64, 64, 8, 3, False]


def test_split_k_candidates_only_for_the_small_layers():
    """Forward/dgrad whose heuristic tiles are fewer than two waves also try split-K 2 and 4; not wgrad (split
    already), not the wide layers; the table keeps split_k (and the tma before it) only when it is not 1."""
    deep = configs.candidates("forward", "bf16", 0, 512, 1024, rows=8 * 30 * 30)
    assert [c.split_k for c in deep if c.split_k > 1] == [2, 4]
    assert all(c.split_k == 1 for c in configs.candidates("forward", "bf16", 0, 64, 64, rows=8 * 390 * 390))
    assert all(c.split_k == 1 for c in configs.candidates("wgrad", "bf16", 0, 512, 1024, rows=8 * 30 * 30))
    assert configs.table_entry(Config(128, 64, 64, 8, 3, split_k=2)) == [128, 64, 64, 8, 3, False, False, 2]
    assert Config(*[128, 64, 64, 8, 3, False, False, 2]).split_k == 2
    wide = configs.candidates("dgrad", "bf16", 0, 256, 512, rows=8 * 66 * 66)   # 4 column tiles of 128
    assert [c.group_m for c in wide if c.group_m > 1] == [8]
    assert all(c.group_m == 1 for c in configs.candidates("forward", "bf16", 0, 64, 64, rows=8 * 390 * 390))


def test_table_lookup_by_device_and_rows_bucket(monkeypatch):
    key = configs.problem_key("forward", "bf16", 0, 64, 64, 2_592_800)
    assert key == "forward/bf16/0+64->64/4194304"
    chosen = Config(128, 64, 64, 4, 4, swap=True)
    monkeypatch.setattr(configs, "table", lambda: {"sm90-132": {key: chosen}})
    monkeypatch.setattr(configs, "device_key", lambda device: "sm90-132")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    cuda = torch.device("cuda", 0)
    assert configs.choose("forward", cuda, "bf16", 0, 64, 64, 3_000_000) == chosen  # same bucket
    assert configs.choose("forward", cuda, "bf16", 0, 64, 64, 5_000_000) == configs.heuristic(
        "forward", "bf16", 0, 64, 64)  # another bucket: not measured
    assert configs.choose("forward", cuda, "fp32", 0, 64, 64, 3_000_000) == configs.heuristic(
        "forward", "fp32", 0, 64, 64)  # exact fp32 is never tuned
    monkeypatch.setattr(configs, "device_key", lambda device: "sm80-108")
    assert configs.choose("forward", cuda, "bf16", 0, 64, 64, 3_000_000) == configs.heuristic(
        "forward", "bf16", 0, 64, 64)  # another GPU


def test_aten_entries_send_the_op_to_cudnn_and_triton_launches_to_the_heuristic(monkeypatch):
    key = configs.problem_key("wgrad", "bf16", 0, 64, 64, 2_000_000)
    monkeypatch.setattr(configs, "table", lambda: {"sm90-132": {key: configs.ATEN}})
    monkeypatch.setattr(configs, "device_key", lambda device: "sm90-132")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    cuda = torch.device("cuda", 0)
    assert configs.prefers_aten("wgrad", cuda, "bf16", 0, 64, 64, 2_000_000)
    assert not configs.prefers_aten("forward", cuda, "bf16", 0, 64, 64, 2_000_000)
    assert not configs.prefers_aten("wgrad", torch.device("cpu"), "bf16", 0, 64, 64, 2_000_000)
    assert configs.choose("wgrad", cuda, "bf16", 0, 64, 64, 2_000_000) == configs.heuristic("wgrad", "bf16", 0, 64, 64)


def test_an_unmeasured_backward_goes_to_cudnn_and_an_unmeasured_forward_to_triton(monkeypatch):
    """No table entry (another GPU, dtype or layer): cuDNN's dgrad and wgrad, which beat ours on the
    H200, and our forward; a measured Triton tile keeps the backward on Triton; never on the CPU."""
    measured = configs.Config(*configs.table_entry(configs.heuristic("wgrad", "bf16", 0, 1, 64)))
    key = configs.problem_key("wgrad", "bf16", 0, 1, 64, 2_000_000)
    monkeypatch.setattr(configs, "table", lambda: {"sm90-132": {key: measured}})
    monkeypatch.setattr(configs, "device_key", lambda device: "sm90-132")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    cuda = torch.device("cuda", 0)
    for kind in ("dgrad", "wgrad"):
        assert configs.prefers_aten(kind, cuda, "bf16", 0, 64, 128, 2_000_000)
        assert configs.prefers_aten(kind, cuda, "tf32", 0, 64, 64, 2_000_000)
        assert not configs.prefers_aten(kind, torch.device("cpu"), "bf16", 0, 64, 128, 2_000_000)
    assert not configs.prefers_aten("forward", cuda, "bf16", 0, 64, 128, 2_000_000)
    assert not configs.prefers_aten("wgrad", cuda, "bf16", 0, 1, 64, 2_000_000)   # measured: ours won


def test_the_shipped_table_is_well_formed():
    """Every entry of the measured table names a known kind and dtype and holds a config or "aten"."""
    for device, problems in configs.table().items():
        assert device.startswith("sm") and "-" in device
        for key, entry in problems.items():
            kind, dtype, channels, rows = key.split("/")
            assert kind in configs.KINDS and dtype in ("bf16", "fp16", "tf32") and "->" in channels
            assert int(rows) & (int(rows) - 1) == 0, key  # a power of two
            assert entry == configs.ATEN or isinstance(entry, configs.Config)


@needs_triton
@pytest.mark.parametrize("aten_parts", [(True, True), (True, False), (False, True)],
                         ids=["aten-dgrad-wgrad", "aten-dgrad", "aten-wgrad"])
@pytest.mark.parametrize("cs", [0, 4])
def test_measured_backward_runs_each_part_where_the_table_says(aten_parts, cs, monkeypatch):
    """measured=True: the parts the table gives to cuDNN go through aten's convolution_backward (on the
    concatenated input, skip's gradient zero outside its window), the rest through the Triton kernels;
    every gradient equals aten's either way."""
    calls = []
    monkeypatch.setattr(kernels, "backward_prefers_aten", lambda *args: calls.append(args) or aten_parts)
    x, weight, bias, skip = inputs(2, 5, cs, 7, 11, 6)
    leaves = [t.requires_grad_() for t in (x, weight, bias) + ((skip,) if skip is not None else ())]
    with exact_fp32():
        out = torch.ops.unet_fast.conv3x3_relu_triton(x, weight, bias, skip, 0, False, True)
        want = F.relu(F.conv2d(cat_input(x, skip), weight, bias))
        grad = torch.randn(want.shape, generator=torch.Generator().manual_seed(3)).to(DEVICE)
        got = torch.autograd.grad(out, leaves, grad)
        expected = torch.autograd.grad(want, leaves, grad)
    assert calls, "the measured backward consulted the table"
    for name, g, e in zip(("x", "weight", "bias", "skip"), got, expected):
        assert_close(g, e, msg=f"{name} with aten parts {aten_parts}")


@needs_triton
def test_relu_pool_backward_op_passes_opcheck():
    y = torch.randn(2, 6, 9, 8).contiguous(memory_format=torch.channels_last).to(DEVICE)
    grad_y, grad_pooled = torch.randn_like(y), torch.randn(2, 6, 4, 4).to(DEVICE)
    torch.library.opcheck(torch.ops.unet_fast.relu_pool_backward_triton.default, (y, grad_y, grad_pooled))
    torch.library.opcheck(torch.ops.unet_fast.relu_pool_backward_triton.default, (y, None, grad_pooled))


def test_a_pooled_forward_takes_its_own_entry_else_the_forwards(monkeypatch):
    """kind "pool" (the forward with the pooled epilogue): its own table entry where tuned; in a table tuned
    before pooled problems were, the forward's entry of the same shape (tile and aten verdict alike)."""
    forward = configs.problem_key("forward", "bf16", 0, 512, 512, 30_000)
    pool = configs.problem_key("pool", "bf16", 0, 256, 256, 30_000)
    tile = configs.Config(128, 64, 64, 8, 3)
    monkeypatch.setattr(configs, "table", lambda: {"sm90-132": {forward: configs.ATEN, pool: tile,
                        configs.problem_key("forward", "bf16", 0, 256, 256, 30_000): configs.ATEN}})
    monkeypatch.setattr(configs, "device_key", lambda device: "sm90-132")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    cuda = torch.device("cuda", 0)
    assert configs.prefers_aten("pool", cuda, "bf16", 0, 512, 512, 30_000)        # the forward's verdict
    assert not configs.prefers_aten("pool", cuda, "bf16", 0, 256, 256, 30_000)    # its own, against the forward's
    assert configs.choose("pool", cuda, "bf16", 0, 256, 256, 30_000) == tile
    assert not configs.prefers_aten("pool", cuda, "bf16", 0, 64, 64, 30_000)      # unmeasured: our kernel
    x = torch.empty(8, 256, 64, 64, device="meta").contiguous(memory_format=torch.channels_last)
    out = torch.empty(8, 256, 62, 62, device="meta").contiguous(memory_format=torch.channels_last)
    pooled = torch.empty(8, 256, 31, 31, device="meta").contiguous(memory_format=torch.channels_last)
    w = torch.empty(9 * 256, 256, device="meta", dtype=torch.bfloat16)
    launch = kernels.plan_conv(x.to(torch.bfloat16), None, (0, 0), w, None, out.to(torch.bfloat16), None, (0, 0), 0,
                               True, device_type="cuda", pooled=pooled.to(torch.bfloat16))
    assert (launch.meta["BLOCK_M"], launch.meta["BLOCK_N"]) == (128, 64)          # the pool entry's tile
