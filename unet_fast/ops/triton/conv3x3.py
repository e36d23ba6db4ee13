"""Triton kernels for the 3x3 convolution (stride 1) of the U-Net, as implicit GEMMs on tensor cores.

Forward: y = act(conv(input) + bias) where input is x, or the channel concatenation
[centre window of skip, x] read in place: the K loop runs over skip's channels, then x's, each
from its own tensor, so neither the crop nor the concatenation is ever materialised.
GEMM view: rows = output pixels (n, oh, ow), columns = output channels, K = (tap, input channel),
so NHWC activations give contiguous channel vectors on both the A loads and the output stores.
Any strides work (NCHW and non-contiguous inputs too, only slower).

The same kernel computes the input gradient (dgrad): that is the convolution of the masked output
gradient with the flipped, transposed weight and padding 2 - p; its epilogue splits the result
channels between grad_skip's window and grad_x, again without a concatenated buffer.
The weight gradient (wgrad) is a second kernel: per tap, rows = input channels, columns = output
channels, K = output pixels, split over the grid (split-K) with a deterministic sum afterwards.

Optional, forward only: the 2x2 max-pool of the output from the same epilogue (POOL: rows come in
fours, one pooling window each), and a direct kernel for unpooled inputs of at most 4 channels (the
first layer), whose K = 9 * C_in would otherwise be mostly padding in tensor-core tiles.

For the small deep layers, whose few output tiles leave SMs idle, forward and dgrad can split their K
loop (Config.split_k): the programs of a tile write fp32 partial sums, and conv3x3_split_sum_kernel adds
them in order and runs the epilogue. Only a measured table entry chooses it.

An alternative forward/dgrad kernel, conv3x3_tma_kernel, loads both operands through tensor descriptors
(TMA on sm_90): each program computes a patch of output pixels of one image, so a tap's input is one
rectangular NHWC box. It runs only where a measured table entry asks for it (Config.tma; the tuner tries
it on sm_90 and later) and the operands allow it (``tma_applies``); until measured, nothing chooses it.

Accumulation is fp32. fp16/bf16 inputs use their tensor-core path; fp32 inputs use TF32 when
``torch.backends.cudnn.allow_tf32`` allows it (as PyTorch's own convolutions do) and exact fp32
("ieee") otherwise. Configurations are fixed per (dtype, channel counts): no autotuning, so the
interpreter runs the same code and the shipped set can be compile-checked offline.
"""
from __future__ import annotations

import dataclasses

import torch

from . import Launch, conv3x3_configs as configs, triton_or_none

from ...geometry import crop_offset, zero_outside_center

triton = triton_or_none()

if triton is not None:
    import triton.language as tl

    @triton.jit
    def _round_to_tf32(x):
        """fp32 -> the nearest TF32 value (ties away from zero), as cuDNN and cuBLAS convert: the tensor
        cores read only the top 19 bits of an fp32 operand, so feeding it unrounded truncates, which
        measured 2.6x the error of cuDNN's TF32 convolutions on an H200 (benchmarks/results/*-run1)."""
        bits = x.to(tl.uint32, bitcast=True)
        rounded = ((bits + 0x1000) & 0xFFFFE000).to(tl.float32, bitcast=True)
        # a NaN stays NaN: the GPUs' NaN (0x7fffffff) would carry into the sign bit and round to -0.0
        return tl.where(x != x, x, rounded)

    @triton.jit
    def _output_pixels(offs_m, N, OH, OW, POOL: tl.constexpr):
        """(n, oh, ow, valid) of GEMM rows. With POOL, rows come in fours, each a 2x2 window of a
        ceil(OH / 2) x ceil(OW / 2) grid of windows that covers every output pixel, for _store_pooled."""
        if POOL:
            PH = (OH + 1) // 2
            PW = (OW + 1) // 2
            window = offs_m // 4
            q = offs_m % 4
            n = window // (PH * PW)
            rem = window % (PH * PW)
            oh = (rem // PW) * 2 + q // 2
            ow = (rem % PW) * 2 + q % 2
            ok = (window < N * PH * PW) & (oh < OH) & (ow < OW)
        else:
            n = offs_m // (OH * OW)
            rem = offs_m % (OH * OW)
            oh = rem // OW
            ow = rem - oh * OW
            ok = offs_m < N * OH * OW
        return n.to(tl.int64), oh, ow, ok

    @triton.jit
    def _relu(x):
        """max(x, 0) with relu(NaN) = NaN, as F.relu: tl.maximum's default (maxnum) would make a NaN 0."""
        return tl.maximum(x, 0.0, propagate_nan=tl.PropagateNan.ALL)

    @triton.jit
    def _max_propagating_nan(a, b):
        return tl.maximum(a, b, propagate_nan=tl.PropagateNan.ALL)

    @triton.jit
    def _store_pooled(acc, pool_ptr, sp_n, sp_c, sp_h, sp_w, pid_m, offs_n, col_ok, N, OH, OW,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        """pool = max of each window's four rows of acc (rows laid out by _output_pixels with POOL).

        Only windows wholly inside the output are stored: the pool floors, as F.max_pool2d does.
        acc is the activated fp32 value: rounding is monotonic, so max-then-round equals the max of y.
        A window holding a NaN pools to NaN, as F.max_pool2d (tl.max would skip the NaN).
        """
        pooled = tl.reduce(tl.reshape(acc, (BLOCK_M // 4, 4, BLOCK_N)), 1, _max_propagating_nan)
        PH = (OH + 1) // 2
        PW = (OW + 1) // 2
        window = pid_m * (BLOCK_M // 4) + tl.arange(0, BLOCK_M // 4)
        n = (window // (PH * PW)).to(tl.int64)
        rem = window % (PH * PW)
        ph = rem // PW
        pw = rem % PW
        ok = (window < N * PH * PW) & (ph < OH // 2) & (pw < OW // 2)
        rows = n * sp_n + ph.to(tl.int64) * sp_h + pw.to(tl.int64) * sp_w
        tl.store(pool_ptr + rows[:, None] + (offs_n * sp_c)[None, :],
                 pooled.to(pool_ptr.dtype.element_ty), mask=ok[:, None] & col_ok[None, :])

    @triton.jit
    def _accumulate_source(acc, src_ptr, row_base, ih0, iw0, row_ok, s_c, s_h, s_w, C, H, W,
                           w_ptr, w_row0, w_rows, offs_n, col_ok, Cout, step_lo, step_hi,
                           PAD: tl.constexpr, BLOCK_K: tl.constexpr, INPUT_PRECISION: tl.constexpr,
                           ROUND_TF32: tl.constexpr, SWAP: tl.constexpr):
        """acc += im2col(src)[rows, (tap, c)] @ w[(tap, w_row0 + c), cols] for c in [0, C), over the K steps
        [step_lo, step_hi) of the 9 * cdiv(C, BLOCK_K) (all of them but under split-K).

        row_base is the (int64) address offset of each row's tap (0, 0) pixel in src; (ih0, iw0) its
        coordinates in the (virtual) input of height H and width W, used for the padding masks.
        One flat loop over (tap, channel block), so the compiler pipelines it as a single K loop.
        SWAP: acc is the transposed tile (cols, rows) and the product is w^T @ im2col^T, so a layer of
        64 output channels makes the 64 the MMA's M and the pixels its wide N (m64n256 on sm_90).
        """
        offs_k = tl.arange(0, BLOCK_K)
        k_blocks = tl.cdiv(C, BLOCK_K)
        for it in range(step_lo, step_hi):
            tap = it // k_blocks
            c = (it - tap * k_blocks) * BLOCK_K + offs_k
            kh = tap // 3
            kw = tap - kh * 3
            ok = row_ok
            if PAD > 0:
                ih = ih0 + kh
                iw = iw0 + kw
                ok = ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            c_ok = c < C
            a = tl.load(src_ptr + (row_base + kh * s_h + kw * s_w)[:, None] + (c.to(tl.int64) * s_c)[None, :],
                        mask=ok[:, None] & c_ok[None, :], other=0.0)
            b = tl.load(w_ptr + (tap * w_rows + w_row0 + c).to(tl.int64)[:, None] * Cout + offs_n[None, :],
                        mask=c_ok[:, None] & col_ok[None, :], other=0.0)
            if ROUND_TF32:
                a = _round_to_tf32(a)
                b = _round_to_tf32(b)
            acc = _mma(acc, a, b, INPUT_PRECISION, SWAP)
        return acc

    @triton.jit
    def _mma(acc, a, b, INPUT_PRECISION: tl.constexpr, SWAP: tl.constexpr):
        """acc += a @ b, or with SWAP acc (the transposed tile) += b^T @ a^T."""
        if SWAP:
            acc = tl.dot(tl.trans(b), tl.trans(a), acc, input_precision=INPUT_PRECISION)
        else:
            acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)
        return acc

    # Spatial sizes and offsets vary per layer and tile but do not change the code: not specialised on
    # (as Triton otherwise does for ints equal to 1 or divisible by 16), so one compiled kernel serves
    # every layer of a configuration. Strides and channel counts stay specialised: their alignment
    # decides vector widths, and without 16-byte loads there is no cp.async pipeline (ptxas: 1 stage).
    @triton.jit(do_not_specialize=["N", "H", "W", "OH", "OW", "skip_top", "skip_left", "out2_top", "out2_left"])
    def conv3x3_kernel(
        x_ptr, sx_n, sx_c, sx_h, sx_w,
        skip_ptr, ss_n, ss_c, ss_h, ss_w, skip_top, skip_left,
        w_ptr, bias_ptr,
        out_ptr, so_n, so_c, so_h, so_w,
        out2_ptr, so2_n, so2_c, so2_h, so2_w, out2_top, out2_left,
        pool_ptr, sp_n, sp_c, sp_h, sp_w,
        mask_ptr, sm_n, sm_c, sm_h, sm_w,
        partial_ptr, STEPS_PER_SPLIT,
        N, H, W, OH, OW, Cs, Cx, Cout, C_SPLIT,
        PAD: tl.constexpr, HAS_SKIP: tl.constexpr, HAS_BIAS: tl.constexpr, RELU: tl.constexpr,
        HAS_OUT2: tl.constexpr, POOL: tl.constexpr, MASK_OUT: tl.constexpr, SPLIT_K: tl.constexpr,
        GROUP_M: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr, INPUT_PRECISION: tl.constexpr, ROUND_TF32: tl.constexpr, SWAP: tl.constexpr,
    ):
        """out = act(conv3x3([skip window, x], w, padding=PAD) + bias); w packed as (9 * (Cs + Cx), Cout).

        With HAS_OUT2, output channels [0, C_SPLIT) go to out2's window at (out2_top, out2_left)
        and the rest to out (channel - C_SPLIT): the dgrad split between grad_skip and grad_x.
        With POOL, also pool = max_pool2d(out, 2). With MASK_OUT, out is 0 where mask (out's shape) is <= 0:
        the dgrad of a layer whose x is the previous layer's ReLU output applies that ReLU's mask here,
        instead of the previous layer's backward making a masked copy of the whole gradient.
        With SPLIT_K > 1 (not with POOL), program (tile, split) sums the K steps [split, split + 1) *
        STEPS_PER_SPLIT of the skip-then-x sequence into partial[split, row, column] (fp32), and
        conv3x3_split_sum_kernel adds the splits up and runs the epilogue: more programs for the deep layers,
        whose few output tiles leave SMs idle, summed in a fixed order (deterministic, no atomics).
        """
        pid = tl.program_id(0)
        num_n = tl.cdiv(Cout, BLOCK_N)
        if GROUP_M > 1:  # GROUP_M row tiles sweep each column tile together: their weight tile is read once
            num_m = tl.num_programs(0) // num_n
            first_m = (pid // (GROUP_M * num_n)) * GROUP_M
            group_rows = tl.minimum(num_m - first_m, GROUP_M)
            in_group = pid % (GROUP_M * num_n)
            pid_m = first_m + in_group % group_rows
            pid_n = in_group // group_rows
        else:
            pid_m = pid // num_n  # neighbouring programs share the same rows (A tile) and differ in columns
            pid_n = pid - pid_m * num_n
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        col_ok = offs_n < Cout
        n, oh, ow, row_ok = _output_pixels(offs_m, N, OH, OW, POOL)
        ih0 = oh - PAD
        iw0 = ow - PAD
        # 64-bit addresses: one image of a large tile can hold more than 2^31 elements per layer
        ih64 = ih0.to(tl.int64)
        iw64 = iw0.to(tl.int64)

        if SWAP:
            acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
        else:
            acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        skip_steps = 9 * tl.cdiv(Cs, BLOCK_K) if HAS_SKIP else 0
        x_steps = 9 * tl.cdiv(Cx, BLOCK_K)
        if SPLIT_K > 1:  # this split's steps of the skip-then-x sequence
            lo = tl.program_id(1) * STEPS_PER_SPLIT
            skip_lo, skip_hi = lo, tl.minimum(lo + STEPS_PER_SPLIT, skip_steps)
            x_lo = tl.maximum(lo - skip_steps, 0)
            x_hi = tl.minimum(lo + STEPS_PER_SPLIT - skip_steps, x_steps)
        else:
            skip_lo, skip_hi, x_lo, x_hi = 0, skip_steps, 0, x_steps
        if HAS_SKIP:
            skip_base = n * ss_n + (ih64 + skip_top) * ss_h + (iw64 + skip_left) * ss_w
            acc = _accumulate_source(acc, skip_ptr, skip_base, ih0, iw0, row_ok, ss_c, ss_h, ss_w, Cs, H, W,
                                     w_ptr, 0, Cs + Cx, offs_n, col_ok, Cout, skip_lo, skip_hi,
                                     PAD, BLOCK_K, INPUT_PRECISION, ROUND_TF32, SWAP)
        x_base = n * sx_n + ih64 * sx_h + iw64 * sx_w
        acc = _accumulate_source(acc, x_ptr, x_base, ih0, iw0, row_ok, sx_c, sx_h, sx_w, Cx, H, W,
                                 w_ptr, Cs, Cs + Cx, offs_n, col_ok, Cout, x_lo, x_hi, PAD, BLOCK_K, INPUT_PRECISION,
                                 ROUND_TF32, SWAP)
        if SWAP:
            acc = tl.trans(acc)
        if SPLIT_K > 1:
            part = partial_ptr + (tl.program_id(1) * N * OH * OW + offs_m).to(tl.int64)[:, None] * Cout
            tl.store(part + offs_n[None, :], acc, mask=row_ok[:, None] & col_ok[None, :])
        else:
            acc = _epilogue(acc, n, oh, ow, row_ok, offs_n, col_ok, bias_ptr, out_ptr, so_n, so_c, so_h, so_w,
                            out2_ptr, so2_n, so2_c, so2_h, so2_w, out2_top, out2_left, mask_ptr, sm_n, sm_c, sm_h,
                            sm_w, C_SPLIT, HAS_BIAS, RELU, HAS_OUT2, MASK_OUT)
            if POOL:
                _store_pooled(acc, pool_ptr, sp_n, sp_c, sp_h, sp_w, pid_m, offs_n, col_ok, N, OH, OW, BLOCK_M,
                              BLOCK_N)

    @triton.jit
    def _epilogue(acc, n, oh, ow, row_ok, offs_n, col_ok, bias_ptr, out_ptr, so_n, so_c, so_h, so_w,
                  out2_ptr, so2_n, so2_c, so2_h, so2_w, out2_top, out2_left, mask_ptr, sm_n, sm_c, sm_h, sm_w,
                  C_SPLIT, HAS_BIAS: tl.constexpr, RELU: tl.constexpr, HAS_OUT2: tl.constexpr,
                  MASK_OUT: tl.constexpr):
        """Bias, ReLU, the split between out2's window and out, the ReLU mask of out, the stores; returns
        the activated fp32 tile (for the pooled epilogue)."""
        if HAS_BIAS:
            acc += tl.load(bias_ptr + offs_n, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        if RELU:
            acc = _relu(acc)
        value = acc.to(out_ptr.dtype.element_ty)
        oh64 = oh.to(tl.int64)
        ow64 = ow.to(tl.int64)
        if HAS_OUT2:
            out2_rows = n * so2_n + (oh64 + out2_top) * so2_h + (ow64 + out2_left) * so2_w
            tl.store(out2_ptr + out2_rows[:, None] + (offs_n * so2_c)[None, :], value,
                     mask=row_ok[:, None] & (offs_n < C_SPLIT)[None, :])
        out_rows = n * so_n + oh64 * so_h + ow64 * so_w
        out_ok = row_ok[:, None] & (col_ok & (offs_n >= C_SPLIT))[None, :]
        if MASK_OUT:
            mask_rows = n * sm_n + oh64 * sm_h + ow64 * sm_w
            relu_out = tl.load(mask_ptr + mask_rows[:, None] + ((offs_n - C_SPLIT).to(tl.int64) * sm_c)[None, :],
                               mask=out_ok, other=1.0)
            value = tl.where(relu_out <= 0, 0.0, acc).to(out_ptr.dtype.element_ty)  # a NaN passes, as masked_fill
        tl.store(out_ptr + out_rows[:, None] + ((offs_n - C_SPLIT) * so_c)[None, :], value, mask=out_ok)
        return acc

    @triton.jit(do_not_specialize=["N", "OH", "OW", "out2_top", "out2_left"])
    def conv3x3_split_sum_kernel(
        partial_ptr, SPLITS, bias_ptr,
        out_ptr, so_n, so_c, so_h, so_w,
        out2_ptr, so2_n, so2_c, so2_h, so2_w, out2_top, out2_left,
        mask_ptr, sm_n, sm_c, sm_h, sm_w,
        N, OH, OW, Cout, C_SPLIT,
        HAS_BIAS: tl.constexpr, RELU: tl.constexpr, HAS_OUT2: tl.constexpr, MASK_OUT: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    ):
        """conv3x3_kernel's split-K second half: the sum of partial[0:SPLITS] in order, then its epilogue."""
        offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        col_ok = offs_n < Cout
        n, oh, ow, row_ok = _output_pixels(offs_m, N, OH, OW, False)
        ok = row_ok[:, None] & col_ok[None, :]
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for split in range(0, SPLITS):
            rows = (split * N * OH * OW + offs_m).to(tl.int64)
            acc += tl.load(partial_ptr + rows[:, None] * Cout + offs_n[None, :], mask=ok, other=0.0)
        _epilogue(acc, n, oh, ow, row_ok, offs_n, col_ok, bias_ptr, out_ptr, so_n, so_c, so_h, so_w,
                  out2_ptr, so2_n, so2_c, so2_h, so2_w, out2_top, out2_left, mask_ptr, sm_n, sm_c, sm_h, sm_w,
                  C_SPLIT, HAS_BIAS, RELU, HAS_OUT2, MASK_OUT)

    @triton.jit
    def _accumulate_tma(acc, src, n, ih0, iw0, C, w_desc, w_row0, w_rows, col0,
                        TILE_H: tl.constexpr, TILE_W: tl.constexpr, BLOCK_K: tl.constexpr,
                        INPUT_PRECISION: tl.constexpr, SWAP: tl.constexpr):
        """_accumulate_source through tensor descriptors: each (tap, channel block) step loads the input as one
        (1, TILE_H, TILE_W, BLOCK_K) box at the tap's offset and the weights as one (BLOCK_K, BLOCK_N) box.
        Out of bounds reads zeros: the padding, the channels past C (so the weight rows they meet, the next
        source's or tap's, add nothing) and the rows past the output, which are not stored."""
        k_blocks = tl.cdiv(C, BLOCK_K)
        for it in range(0, 9 * k_blocks):
            tap = it // k_blocks
            c0 = (it - tap * k_blocks) * BLOCK_K
            kh = tap // 3
            kw = tap - kh * 3
            a = tl.reshape(src.load([n, ih0 + kh, iw0 + kw, c0]), (TILE_H * TILE_W, BLOCK_K))
            acc = _mma(acc, a, w_desc.load([tap * w_rows + w_row0 + c0, col0]), INPUT_PRECISION, SWAP)
        return acc

    @triton.jit(do_not_specialize=["N", "H", "W", "OH", "OW", "skip_top", "skip_left", "out2_top", "out2_left"])
    def conv3x3_tma_kernel(
        x_ptr, sx_n, sx_h, sx_w,
        skip_ptr, ss_n, ss_h, ss_w, skip_top, skip_left, SH, SW,
        w_ptr, bias_ptr,
        out_ptr, so_n, so_c, so_h, so_w,
        out2_ptr, so2_n, so2_c, so2_h, so2_w, out2_top, out2_left,
        mask_ptr, sm_n, sm_c, sm_h, sm_w,
        N, H, W, OH, OW, Cs, Cx, Cout, C_SPLIT,
        PAD: tl.constexpr, HAS_SKIP: tl.constexpr, HAS_BIAS: tl.constexpr, RELU: tl.constexpr,
        HAS_OUT2: tl.constexpr, MASK_OUT: tl.constexpr,
        TILE_H: tl.constexpr, TILE_W: tl.constexpr, BLOCK_N: tl.constexpr,
        BLOCK_K: tl.constexpr, INPUT_PRECISION: tl.constexpr, SWAP: tl.constexpr,
    ):
        """conv3x3_kernel without POOL or TF32 rounding, its operands loaded by TMA (tensor descriptors, sm_90):
        a program computes a TILE_H x TILE_W patch of one image's output pixels, so each tap's input is one
        rectangular box of the NHWC input (channel stride 1, other strides multiples of 16 bytes), read by
        the copy engine with its bounds checked in hardware instead of per-element masks and addresses."""
        pid = tl.program_id(0)
        num_n = tl.cdiv(Cout, BLOCK_N)
        pid_m = pid // num_n
        pid_n = pid - pid_m * num_n
        tiles_h = tl.cdiv(OH, TILE_H)
        tiles_w = tl.cdiv(OW, TILE_W)
        n = pid_m // (tiles_h * tiles_w)
        rem = pid_m - n * (tiles_h * tiles_w)
        oh0 = (rem // tiles_w) * TILE_H
        ow0 = (rem % tiles_w) * TILE_W
        offs_m = tl.arange(0, TILE_H * TILE_W)
        oh = oh0 + offs_m // TILE_W
        ow = ow0 + offs_m % TILE_W
        row_ok = (oh < OH) & (ow < OW)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        col_ok = offs_n < Cout
        w_desc = tl.make_tensor_descriptor(w_ptr, shape=[9 * (Cs + Cx), Cout], strides=[Cout, 1],
                                           block_shape=[BLOCK_K, BLOCK_N])
        if SWAP:
            acc = tl.zeros((BLOCK_N, TILE_H * TILE_W), dtype=tl.float32)
        else:
            acc = tl.zeros((TILE_H * TILE_W, BLOCK_N), dtype=tl.float32)
        if HAS_SKIP:  # skip_ptr: the window the forward reads (bounds = the window's, so padding reads zeros)
            skip = tl.make_tensor_descriptor(skip_ptr, shape=[N, SH, SW, Cs], strides=[ss_n, ss_h, ss_w, 1],
                                             block_shape=[1, TILE_H, TILE_W, BLOCK_K])
            acc = _accumulate_tma(acc, skip, n, oh0 - PAD + skip_top, ow0 - PAD + skip_left, Cs, w_desc, 0,
                                  Cs + Cx, pid_n * BLOCK_N, TILE_H, TILE_W, BLOCK_K, INPUT_PRECISION, SWAP)
        x = tl.make_tensor_descriptor(x_ptr, shape=[N, H, W, Cx], strides=[sx_n, sx_h, sx_w, 1],
                                      block_shape=[1, TILE_H, TILE_W, BLOCK_K])
        acc = _accumulate_tma(acc, x, n, oh0 - PAD, ow0 - PAD, Cx, w_desc, Cs, Cs + Cx, pid_n * BLOCK_N,
                              TILE_H, TILE_W, BLOCK_K, INPUT_PRECISION, SWAP)
        if SWAP:
            acc = tl.trans(acc)
        _epilogue(acc, n.to(tl.int64), oh, ow, row_ok, offs_n, col_ok, bias_ptr, out_ptr, so_n, so_c, so_h, so_w,
                  out2_ptr, so2_n, so2_c, so2_h, so2_w, out2_top, out2_left, mask_ptr, sm_n, sm_c, sm_h, sm_w,
                  C_SPLIT, HAS_BIAS, RELU, HAS_OUT2, MASK_OUT)

    @triton.jit
    def conv3x3_direct_kernel(
        x_ptr, sx_n, sx_c, sx_h, sx_w,
        w_ptr, bias_ptr,
        out_ptr, so_n, so_c, so_h, so_w,
        N, H, W, OH, OW, Cout,
        CIN: tl.constexpr, PAD: tl.constexpr, HAS_BIAS: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    ):
        """relu(conv3x3(x, w, padding=PAD) + bias) for x of CIN <= 4 channels, without a GEMM.

        9 * CIN rank-1 updates (a column of input pixels times a row of weights) in fp32 FMA: the
        GEMM kernel pads each tap's K to 16 channels, so at CIN = 1 it would do 16x the work.
        """
        pid = tl.program_id(0)
        num_n = tl.cdiv(Cout, BLOCK_N)
        pid_m = pid // num_n
        pid_n = pid - pid_m * num_n
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        col_ok = offs_n < Cout
        n, oh, ow, row_ok = _output_pixels(offs_m, N, OH, OW, False)
        x_base = n * sx_n + (oh - PAD).to(tl.int64) * sx_h + (ow - PAD).to(tl.int64) * sx_w

        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for tap in tl.static_range(9):
            kh = tap // 3
            kw = tap % 3
            ok = row_ok
            if PAD > 0:
                ih = oh - PAD + kh
                iw = ow - PAD + kw
                ok = ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            for c in tl.static_range(CIN):
                channel = tl.full((), c, tl.int64) * sx_c  # int64: an NCHW image's channel stride can be large
                a = tl.load(x_ptr + x_base + (kh * sx_h + kw * sx_w) + channel, mask=ok, other=0.0)
                b = tl.load(w_ptr + (tap * CIN + c) * Cout + offs_n, mask=col_ok, other=0.0)
                acc += a.to(tl.float32)[:, None] * b.to(tl.float32)[None, :]

        if HAS_BIAS:
            acc += tl.load(bias_ptr + offs_n, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        acc = _relu(acc)
        out_rows = n * so_n + oh.to(tl.int64) * so_h + ow.to(tl.int64) * so_w
        tl.store(out_ptr + out_rows[:, None] + (offs_n * so_c)[None, :],
                 acc.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])

    @triton.jit(do_not_specialize=["N", "H", "W", "OH", "OW", "skip_top", "skip_left", "P_PER_SPLIT"])
    def conv3x3_wgrad_kernel(
        g_ptr, sg_n, sg_c, sg_h, sg_w,
        x_ptr, sx_n, sx_c, sx_h, sx_w,
        skip_ptr, ss_n, ss_c, ss_h, ss_w, skip_top, skip_left,
        partial_ptr, bias_partial_ptr,
        N, H, W, OH, OW, Cs, Cx, Cout, P_PER_SPLIT,
        PAD: tl.constexpr, HAS_SKIP: tl.constexpr, ONE_SOURCE_PER_TILE: tl.constexpr, BIAS_GRAD: tl.constexpr,
        BLOCK_CI: tl.constexpr, BLOCK_CO: tl.constexpr, BLOCK_P: tl.constexpr, INPUT_PRECISION: tl.constexpr,
        ROUND_TF32: tl.constexpr, FOLD_TAPS: tl.constexpr,
    ):
        """partial[split, tap, ci, co] = sum over this split's output pixels p of input[p + tap, ci] * g[p, co].

        FOLD_TAPS (x alone, of few channels: the first layer): a program's BLOCK_CI rows are all (tap, ci)
        pairs, k = tap * Cx + ci, its input block gathered from the nine shifted windows, so each block of g
        is read once for the nine taps instead of once per tap (the grid's tap axis is 1).

        ONE_SOURCE_PER_TILE (skip's channels a multiple of BLOCK_CI): each program's input channels lie
        wholly in skip or wholly in x, so it reads one tensor with one load per step (which the
        compiler pipelines like the others) instead of two masked loads summed in registers.
        BIAS_GRAD: one more row of programs (channel tile index num_ci, tap 0) sums g over the split's pixels
        into bias_partial[split, co], in the same launch, so the bias gradient needs no launch of its own.
        Its own programs, not the GEMM's: on an H100 (triton 3.6) summing the pipelined block that also fed
        tl.dot raced at 3 stages (benchmarks/results/2026-11-26-NVIDIA_H100.md).
        """
        pid = tl.program_id(0)
        tap = tl.program_id(1)
        split = tl.program_id(2)
        num_co = tl.cdiv(Cout, BLOCK_CO)
        pid_ci = pid // num_co
        pid_co = pid - pid_ci * num_co
        Cin = Cs + Cx
        co = pid_co * BLOCK_CO + tl.arange(0, BLOCK_CO)
        co_ok = co < Cout
        pixels = N * OH * OW
        p_begin = split * P_PER_SPLIT
        p_end = tl.minimum(p_begin + P_PER_SPLIT, pixels)
        if FOLD_TAPS:
            gemm_program = pid_ci == 0
        else:
            gemm_program = pid_ci * BLOCK_CI < Cin
        if gemm_program:
            if FOLD_TAPS:
                _wgrad_tile_folded(g_ptr, sg_n, sg_h, sg_w, sg_c, x_ptr, sx_n, sx_c, sx_h, sx_w, partial_ptr,
                                   H, W, OH, OW, Cx, Cout, split, co, co_ok, p_begin, p_end,
                                   PAD, BLOCK_CI, BLOCK_CO, BLOCK_P, INPUT_PRECISION, ROUND_TF32)
            else:
                _wgrad_tile(g_ptr, sg_n, sg_h, sg_w, sg_c, x_ptr, sx_n, sx_c, sx_h, sx_w,
                            skip_ptr, ss_n, ss_c, ss_h, ss_w, skip_top, skip_left, partial_ptr,
                            H, W, OH, OW, Cs, Cx, Cout, tap, split, pid_ci, co, co_ok, p_begin, p_end,
                            PAD, HAS_SKIP, ONE_SOURCE_PER_TILE, BLOCK_CI, BLOCK_CO, BLOCK_P, INPUT_PRECISION,
                            ROUND_TF32)
        elif BIAS_GRAD:
            if tap == 0:
                bias_sum = tl.zeros((BLOCK_CO,), dtype=tl.float32)
                for p0 in range(p_begin, p_end, BLOCK_P):
                    p_ok, n, oh, ow = _wgrad_pixels(p0, p_end, OH, OW, BLOCK_P)
                    g = _wgrad_grad_block(g_ptr, sg_n, sg_c, sg_h, sg_w, n, oh, ow, p_ok, co, co_ok)
                    bias_sum += tl.sum(g.to(tl.float32), axis=0)
                tl.store(bias_partial_ptr + split * Cout + co, bias_sum, mask=co_ok)

    @triton.jit
    def _wgrad_pixels(p0, p_end, OH, OW, BLOCK_P: tl.constexpr):
        """The wgrad K step's output pixels p0 .. p0 + BLOCK_P: (in range, image index (int64), row, column)."""
        p = p0 + tl.arange(0, BLOCK_P)
        rem = p % (OH * OW)
        oh = rem // OW
        return p < p_end, (p // (OH * OW)).to(tl.int64), oh, rem - oh * OW

    @triton.jit
    def _wgrad_grad_block(g_ptr, sg_n, sg_c, sg_h, sg_w, n, oh, ow, p_ok, co, co_ok):
        """g[pixels, output channels] of one wgrad K step, zero outside."""
        rows = n * sg_n + oh.to(tl.int64) * sg_h + ow.to(tl.int64) * sg_w
        return tl.load(g_ptr + rows[:, None] + (co.to(tl.int64) * sg_c)[None, :],
                       mask=p_ok[:, None] & co_ok[None, :], other=0.0)

    @triton.jit
    def _wgrad_tile_folded(g_ptr, sg_n, sg_h, sg_w, sg_c, x_ptr, sx_n, sx_c, sx_h, sx_w, partial_ptr,
                           H, W, OH, OW, Cx, Cout, split, co, co_ok, p_begin, p_end,
                           PAD: tl.constexpr, BLOCK_CI: tl.constexpr, BLOCK_CO: tl.constexpr, BLOCK_P: tl.constexpr,
                           INPUT_PRECISION: tl.constexpr, ROUND_TF32: tl.constexpr):
        """conv3x3_wgrad_kernel's GEMM with FOLD_TAPS: every (tap, input channel) row of one output-channel
        tile of one split, row k = tap * Cx + ci."""
        k = tl.arange(0, BLOCK_CI)
        k_ok = k < 9 * Cx
        row_tap = k // Cx
        k_ci = k - row_tap * Cx
        k_kh = row_tap // 3
        k_kw = row_tap - k_kh * 3
        acc = tl.zeros((BLOCK_CI, BLOCK_CO), dtype=tl.float32)
        for p0 in range(p_begin, p_end, BLOCK_P):
            p_ok, n, oh, ow = _wgrad_pixels(p0, p_end, OH, OW, BLOCK_P)
            ih = oh[:, None] + k_kh[None, :] - PAD
            iw = ow[:, None] + k_kw[None, :] - PAD
            in_ok = p_ok[:, None] & k_ok[None, :]
            if PAD > 0:
                in_ok = in_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            a = tl.load(x_ptr + (n * sx_n)[:, None] + (k_ci.to(tl.int64) * sx_c)[None, :]
                        + ih.to(tl.int64) * sx_h + iw.to(tl.int64) * sx_w, mask=in_ok, other=0.0)
            g = _wgrad_grad_block(g_ptr, sg_n, sg_c, sg_h, sg_w, n, oh, ow, p_ok, co, co_ok)
            if ROUND_TF32:
                a = _round_to_tf32(a)
                g = _round_to_tf32(g)
            acc = tl.dot(tl.trans(a), g, acc, input_precision=INPUT_PRECISION)
        # row k is (tap, ci) = (k // Cx, k % Cx): partial[split, tap, ci, co] at (split * 9 * Cx + k) * Cout + co
        out = partial_ptr + (split * 9 * Cx + k).to(tl.int64)[:, None] * Cout + co[None, :]
        tl.store(out, acc, mask=k_ok[:, None] & co_ok[None, :])

    @triton.jit
    def _wgrad_tile(g_ptr, sg_n, sg_h, sg_w, sg_c, x_ptr, sx_n, sx_c, sx_h, sx_w,
                    skip_ptr, ss_n, ss_c, ss_h, ss_w, skip_top, skip_left, partial_ptr,
                    H, W, OH, OW, Cs, Cx, Cout, tap, split, pid_ci, co, co_ok, p_begin, p_end,
                    PAD: tl.constexpr, HAS_SKIP: tl.constexpr, ONE_SOURCE_PER_TILE: tl.constexpr,
                    BLOCK_CI: tl.constexpr, BLOCK_CO: tl.constexpr, BLOCK_P: tl.constexpr,
                    INPUT_PRECISION: tl.constexpr, ROUND_TF32: tl.constexpr):
        """conv3x3_wgrad_kernel's GEMM: one (tap, input-channel tile, output-channel tile) of one split."""
        Cin = Cs + Cx
        kh = tap // 3
        kw = tap - kh * 3
        ci = pid_ci * BLOCK_CI + tl.arange(0, BLOCK_CI)
        if ONE_SOURCE_PER_TILE:  # pick this tile's tensor once: (pointer, strides, window offset, channel base)
            from_skip = pid_ci * BLOCK_CI < Cs
            src_ptr = tl.where(from_skip, skip_ptr, x_ptr)
            s_n = tl.where(from_skip, ss_n, sx_n)
            s_c = tl.where(from_skip, ss_c, sx_c)
            s_h = tl.where(from_skip, ss_h, sx_h)
            s_w = tl.where(from_skip, ss_w, sx_w)
            top = tl.where(from_skip, skip_top, 0)
            left = tl.where(from_skip, skip_left, 0)
            c_local = ci - tl.where(from_skip, 0, Cs)
            c_ok = (ci < Cin) & (c_local < tl.where(from_skip, Cs, Cx))

        acc = tl.zeros((BLOCK_CI, BLOCK_CO), dtype=tl.float32)
        for p0 in range(p_begin, p_end, BLOCK_P):
            p_ok, n, oh, ow = _wgrad_pixels(p0, p_end, OH, OW, BLOCK_P)
            ih = oh + kh - PAD
            iw = ow + kw - PAD
            in_ok = p_ok
            if PAD > 0:
                in_ok = in_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            ih64 = ih.to(tl.int64)
            iw64 = iw.to(tl.int64)
            if ONE_SOURCE_PER_TILE:
                rows = n * s_n + (ih64 + top) * s_h + (iw64 + left) * s_w
                a = tl.load(src_ptr + rows[:, None] + (c_local.to(tl.int64) * s_c)[None, :],
                            mask=in_ok[:, None] & c_ok[None, :], other=0.0)
            else:
                a = tl.load(x_ptr + (n * sx_n + ih64 * sx_h + iw64 * sx_w)[:, None]
                            + ((ci - Cs).to(tl.int64) * sx_c)[None, :],
                            mask=in_ok[:, None] & ((ci >= Cs) & (ci < Cin))[None, :], other=0.0)
                if HAS_SKIP:
                    skip_rows = n * ss_n + (ih64 + skip_top) * ss_h + (iw64 + skip_left) * ss_w
                    a += tl.load(skip_ptr + skip_rows[:, None] + (ci.to(tl.int64) * ss_c)[None, :],
                                 mask=in_ok[:, None] & (ci < Cs)[None, :], other=0.0)
            g = _wgrad_grad_block(g_ptr, sg_n, sg_c, sg_h, sg_w, n, oh, ow, p_ok, co, co_ok)
            if ROUND_TF32:
                a = _round_to_tf32(a)
                g = _round_to_tf32(g)
            acc = tl.dot(tl.trans(a), g, acc, input_precision=INPUT_PRECISION)
        out = partial_ptr + ((split * 9 + tap) * Cin + ci).to(tl.int64)[:, None] * Cout + co[None, :]
        tl.store(out, acc, mask=(ci < Cin)[:, None] & co_ok[None, :])


MAX_GEMM_ROWS = 2 ** 31 - 1  # pixel indices are 32-bit inside the kernels (addresses are 64-bit)


def input_precision(dtype: torch.dtype, device_type: str = "cuda") -> str:
    """tl.dot's input precision: TF32 for fp32 only where PyTorch allows it for convolutions, and only
    on a GPU (the interpreter computes fp32 products exactly, as aten does on the CPU)."""
    if dtype == torch.float32 and (device_type != "cuda" or not _cudnn_allows_tf32()):
        return "ieee"
    return "tf32"  # ignored by tl.dot for fp16/bf16 inputs


def mark_constant_for_dynamo(fn):
    """``torch.compiler.assume_constant_result`` without its import of torch._dynamo, which takes a
    second or more: most runs never compile, and every command-line start would pay it. The public
    decorator only sets this attribute (tests/test_import.py checks that it still does)."""
    fn._dynamo_marked_constant = True
    return fn


@mark_constant_for_dynamo  # dynamo cannot trace the flag's __getattr__ (H200 run 4): a compiled graph
def _cudnn_allows_tf32() -> bool:  # keeps the value it was traced with
    """cuDNN's TF32 switch for convolutions, read through whichever API torch has (2.9+ added
    torch.backends.cudnn.conv.fp32_precision; "none" defers to the legacy allow_tf32 flag)."""
    conv = getattr(torch.backends.cudnn, "conv", None)
    precision = getattr(conv, "fp32_precision", "none")
    if precision in ("tf32", "ieee"):
        return precision == "tf32"
    return bool(torch.backends.cudnn.allow_tf32)


THIN_LAYER_CHANNELS = 16  # fp32 layers reading fewer input channels stay exact, as cuDNN keeps them


def _compute_type(dtype: torch.dtype, device_type: str, layer_in_channels: int) -> tuple[str, str, bool]:
    """(tl.dot input precision, the config table's dtype name, whether fp32 operands are rounded to TF32).

    A layer reading fewer than THIN_LAYER_CHANNELS input channels (the first layer of a grey or RGB
    image) computes fp32 exactly in every pass: cuDNN does not use TF32 there either (its error on an
    H200 was 0-1e-7 against our 2.9e-4, run 3), and such thin layers gain nothing from tensor cores.
    """
    precision = input_precision(dtype, device_type)
    if dtype == torch.float32 and layer_in_channels < THIN_LAYER_CHANNELS:
        precision = "ieee"
    return precision, configs.dtype_name(dtype, precision), dtype == torch.float32 and precision == "tf32"


def check_rows(rows: int, what: str) -> None:
    if rows > MAX_GEMM_ROWS:
        raise ValueError(f"conv3x3_relu: {what} has {rows} output pixels in one call, more than the kernels' "
                         f"2^31 - 1; split it (unet_fast.inference.predict_tiled segments any image in tiles)")


def _prefers_aten(kind: str, x, cs: int, cx: int, cout: int, rows: int) -> bool:
    _, dtype_name, _ = _compute_type(x.dtype, x.device.type, cout if kind == "dgrad" else cs + cx)
    return configs.prefers_aten(kind, x.device, dtype_name, cs, cx, cout, rows)


def forward_prefers_aten(x, weight, skip, padding: int, pool: bool = False) -> bool:
    """True where the measured table says cuDNN's conv + ReLU (+ pool) beat every Triton tile for this layer."""
    n, cx, h, w = x.shape
    cs = skip.shape[1] if skip is not None else 0
    rows = _gemm_rows(n, h + 2 * padding - 2, w + 2 * padding - 2, pool)
    return _prefers_aten("pool" if pool else "forward", x, cs, cx, weight.shape[0], rows)


def backward_prefers_aten(grad, weight, x, skip, padding: int) -> tuple[bool, bool]:
    """(dgrad, wgrad): whether the measured table says cuDNN beat every Triton tile for each."""
    n, cx, h, w = x.shape
    cs = skip.shape[1] if skip is not None else 0
    rows = grad.shape[0] * grad.shape[2] * grad.shape[3]
    return (_prefers_aten("dgrad", x, 0, grad.shape[1], cs + cx, n * h * w),
            _prefers_aten("wgrad", x, cs, cx, grad.shape[1], rows))


def _strides(t: torch.Tensor) -> tuple[int, int, int, int]:
    return tuple(t.stride())


def plan_conv(x, skip, skip_offset, w_packed, bias, out, out2, out2_offset, padding, relu,
              device_type: str | None = None, pooled=None, kind: str = "forward",
              config: configs.Config | None = None, out_mask=None) -> Launch:
    """conv3x3_kernel's launch for these tensors (device_type overrides x's, e.g. for meta tensors).

    pooled: where to write max_pool2d(out, 2) from the epilogue, or None. kind: "forward" or "dgrad",
    the config table's key; config: these tiles instead of the table's or the heuristic's (the tuner).
    out_mask: a tensor of out's shape; out is written as 0 where it is <= 0 (a ReLU's mask), or None.
    """
    n, cx, h, w = x.shape
    cs = skip.shape[1] if skip is not None else 0
    cout = w_packed.shape[1]
    oh, ow = h + 2 * padding - 2, w + 2 * padding - 2
    c_split = out2.shape[1] if out2 is not None else 0
    device_type = device_type or x.device.type
    rows = _gemm_rows(n, oh, ow, pooled is not None)
    check_rows(rows, "the input")
    precision, dtype_name, round_tf32 = _compute_type(x.dtype, device_type, cout if kind == "dgrad" else cs + cx)
    if config is None:
        device = x.device if x.device.type == device_type else torch.device(device_type)
        config = configs.choose("pool" if pooled is not None else kind, device, dtype_name, cs, cx, cout, rows)
    if config.swap and pooled is not None:  # the pooled epilogue needs pixels as rows: same tiles, unswapped
        config = dataclasses.replace(config, swap=False)
    if pooled is not None and config.block_m * config.block_n > configs.POOLED_MAX_TILE:
        config = dataclasses.replace(config, block_m=configs.POOLED_MAX_TILE // config.block_n)
    if config.split_k > 1 and (pooled is not None or config.tma):  # split-K: the pointer kernel, unpooled
        config = dataclasses.replace(config, split_k=1)
    skip_t = skip if skip is not None else x  # never read without HAS_SKIP
    out2_t = out2 if out2 is not None else out
    mask_t = out_mask if out_mask is not None else out  # never read without MASK_OUT
    if config.tma:
        # the window of skip the forward reads, as a tensor of its own: the descriptor's bounds are then the
        # window's, so padding (and the rows past the output) read zeros, never skip's pixels around it
        window = skip_t if skip is None else skip[:, :, skip_offset[0]:skip_offset[0] + h,
                                                  skip_offset[1]:skip_offset[1] + w]
        if tma_applies(x, None if skip is None else window, w_packed, pooled, round_tf32, config):
            return _plan_tma(x, window, skip is not None, w_packed, bias, out, out2_t, out2 is not None,
                             out2_offset, mask_t, out_mask is not None, padding, relu, c_split, precision, config)
        config = dataclasses.replace(config, tma=False)
    grid = (triton.cdiv(rows, config.block_m) * triton.cdiv(cout, config.block_n),)
    pool_t = pooled if pooled is not None else out  # never written without POOL
    steps = (9 * triton.cdiv(cs, config.block_k) if cs else 0) + 9 * triton.cdiv(cx, config.block_k)
    per_split = triton.cdiv(steps, config.split_k)
    splits = triton.cdiv(steps, per_split)
    partial = out  # never written without SPLIT_K > 1
    if splits > 1:
        partial = torch.empty((splits, rows, cout), device=x.device, dtype=torch.float32)
        grid = (grid[0], splits)
    args = (x, *_strides(x),
            skip_t, *_strides(skip_t), *skip_offset,
            w_packed, bias if bias is not None else w_packed,
            out, *_strides(out),
            out2_t, *_strides(out2_t), *out2_offset,
            pool_t, *_strides(pool_t),
            mask_t, *_strides(mask_t),
            partial, per_split,
            n, h, w, oh, ow, cs, cx, cout, c_split)
    meta = dict(PAD=padding, HAS_SKIP=skip is not None, HAS_BIAS=bias is not None, RELU=relu,
                HAS_OUT2=out2 is not None, POOL=pooled is not None, MASK_OUT=out_mask is not None,
                SPLIT_K=splits, GROUP_M=config.group_m, BLOCK_M=config.block_m,
                BLOCK_N=config.block_n, BLOCK_K=config.block_k, INPUT_PRECISION=precision, ROUND_TF32=round_tf32,
                SWAP=config.swap, num_warps=config.num_warps, num_stages=config.num_stages)
    then = None
    if splits > 1:
        sum_args = (partial, splits, bias if bias is not None else w_packed,
                    out, *_strides(out), out2_t, *_strides(out2_t), *out2_offset, mask_t, *_strides(mask_t),
                    n, oh, ow, cout, c_split)
        then = Launch(conv3x3_split_sum_kernel, (triton.cdiv(rows, 64), triton.cdiv(cout, 64)), sum_args,
                      dict(HAS_BIAS=bias is not None, RELU=relu, HAS_OUT2=out2 is not None,
                           MASK_OUT=out_mask is not None, BLOCK_M=64, BLOCK_N=64, num_warps=4, num_stages=1))
    return Launch(conv3x3_kernel, grid, args, meta, then)


TMA_TILE_W = 16  # output pixels per row of a TMA program's patch: block_m / 16 rows of 16


def _tma_operand_ok(t: torch.Tensor) -> bool:
    """A tensor descriptor's rules: NHWC (channel stride 1), other strides and the base 16-byte aligned."""
    size = t.element_size()
    return (t.stride(1) == 1 and all(stride * size % 16 == 0 for stride in (t.stride(0), t.stride(2), t.stride(3)))
            and t.data_ptr() % 16 == 0)


def tma_applies(x, skip_window, w_packed, pooled, round_tf32: bool, config: configs.Config) -> bool:
    """Whether conv3x3_tma_kernel can run these operands with ``config``: no pooled epilogue, no TF32 rounding
    (TMA feeds the tensor cores unchanged), NHWC operands aligned for descriptors (x, the window of skip the
    forward reads, the packed weight), a patch of 16-pixel rows and an output-channel tile the kernel was
    measured right with on a GPU (configs.tma_measured_right)."""
    cout = w_packed.shape[1]
    return (pooled is None and not round_tf32 and config.block_m % TMA_TILE_W == 0
            and configs.tma_measured_right(config)
            and _tma_operand_ok(x) and (skip_window is None or _tma_operand_ok(skip_window))
            and w_packed.is_contiguous() and cout * w_packed.element_size() % 16 == 0
            and w_packed.data_ptr() % 16 == 0)


def _tma_scratch(size: int, alignment: int, stream):
    return torch.empty(size, dtype=torch.int8, device="cuda")


def _plan_tma(x, window, has_skip, w_packed, bias, out, out2_t, has_out2, out2_offset, mask_t,
              has_mask, padding, relu, c_split, precision, config) -> Launch:
    """conv3x3_tma_kernel's launch (``window``: skip's window, x's height and width); on CUDA, Triton's
    allocator is set first where none is (the kernel builds its descriptors in global scratch memory;
    Triton's allocator is per thread)."""
    from triton.runtime import _allocation

    n, cx, h, w = x.shape
    cout = w_packed.shape[1]
    oh, ow = h + 2 * padding - 2, w + 2 * padding - 2
    tile_h = config.block_m // TMA_TILE_W
    if x.device.type == "cuda" and isinstance(_allocation._allocator.get(), _allocation.NullAllocator):
        triton.set_allocator(_tma_scratch)
    grid = (n * triton.cdiv(oh, tile_h) * triton.cdiv(ow, TMA_TILE_W) * triton.cdiv(cout, config.block_n),)
    args = (x, x.stride(0), x.stride(2), x.stride(3),
            window, window.stride(0), window.stride(2), window.stride(3), 0, 0, *window.shape[2:],
            w_packed, bias if bias is not None else w_packed,
            out, *_strides(out),
            out2_t, *_strides(out2_t), *out2_offset,
            mask_t, *_strides(mask_t),
            n, h, w, oh, ow, window.shape[1] if has_skip else 0, cx, cout, c_split)
    meta = dict(PAD=padding, HAS_SKIP=has_skip, HAS_BIAS=bias is not None, RELU=relu, HAS_OUT2=has_out2,
                MASK_OUT=has_mask, TILE_H=tile_h, TILE_W=TMA_TILE_W, BLOCK_N=config.block_n,
                BLOCK_K=config.block_k, INPUT_PRECISION=precision, SWAP=config.swap,
                num_warps=config.num_warps, num_stages=config.num_stages)
    return Launch(conv3x3_tma_kernel, grid, args, meta)


def _gemm_rows(n: int, oh: int, ow: int, pool: bool) -> int:
    """Rows of the GEMM: output pixels, or with pooling 4 per 2x2 window, partial windows included."""
    return n * 4 * ((oh + 1) // 2) * ((ow + 1) // 2) if pool else n * oh * ow


DIRECT_MAX_CHANNELS = 4


def direct_applies(x_channels: int, skip, pool: bool) -> bool:
    """The direct kernel serves x alone with at most DIRECT_MAX_CHANNELS channels, unpooled: the first
    layer (never pooled; a pooled epilogue there spilled registers on sm_90, tests/triton_static.py)."""
    return skip is None and not pool and x_channels <= DIRECT_MAX_CHANNELS


def plan_direct(x, w_packed, bias, out, padding) -> Launch:
    """conv3x3_direct_kernel's launch: plan_conv's forward result (ReLU, no skip, no pool) for C_in <= 4."""
    n, cin, h, w = x.shape
    cout = w_packed.shape[1]
    oh, ow = h + 2 * padding - 2, w + 2 * padding - 2
    check_rows(n * oh * ow, "the input")
    # 128 x 32 tiles: about 100 registers per thread at 4 warps on sm_80/sm_90, against about 160 at
    # 128 x 64, so more programs per SM for this store-bound kernel (x, 1-4 channels, is re-read per tile).
    block_m, block_n = 128, min(32, configs.channel_block(cout))
    grid = (triton.cdiv(n * oh * ow, block_m) * triton.cdiv(cout, block_n),)
    args = (x, *_strides(x),
            w_packed, bias if bias is not None else w_packed,
            out, *_strides(out),
            n, h, w, oh, ow, cout)
    meta = dict(CIN=cin, PAD=padding, HAS_BIAS=bias is not None, BLOCK_M=block_m, BLOCK_N=block_n,
                num_warps=4, num_stages=1)
    return Launch(conv3x3_direct_kernel, grid, args, meta)


def plan_forward(x, skip, w_packed, bias, out, pooled, padding: int, direct: bool,
                 device_type: str | None = None, config: configs.Config | None = None) -> Launch:
    """The forward launch: the direct kernel when asked for and it applies, else the GEMM."""
    if direct and direct_applies(x.shape[1], skip, pooled is not None):
        return plan_direct(x, w_packed, bias, out, padding)
    return plan_conv(x, skip, _skip_offset(skip, *x.shape[2:]), w_packed, bias, out, None, (0, 0), padding, True,
                     device_type, pooled=pooled, config=config)


def _skip_offset(skip, h, w) -> tuple[int, int]:
    if skip is None:
        return (0, 0)
    return (crop_offset(skip.shape[2], h), crop_offset(skip.shape[3], w))


def pack_forward_weight(weight: torch.Tensor) -> torch.Tensor:
    """(tap, input channel) rows, output channels contiguous: the GEMM's B operand."""
    return weight.permute(2, 3, 1, 0).reshape(-1, weight.shape[0]).contiguous()


def pack_dgrad_weight(weight: torch.Tensor) -> torch.Tensor:
    """dgrad = conv of grad with the spatially flipped weight, input and output channels swapped."""
    return weight.flip(2, 3).permute(2, 3, 0, 1).reshape(-1, weight.shape[1]).contiguous()


def conv3x3_forward(x, weight, bias, skip, padding: int, pool: bool = False, direct: bool = False,
                    config: configs.Config | None = None, packed_weight: torch.Tensor | None = None
                    ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(relu(conv2d([centre_crop(skip), x], weight, bias, padding)), its 2x2 max-pool or None), channels_last.

    packed_weight: pack_forward_weight(weight), where the caller has it already."""
    n, _, h, w = x.shape
    cout = weight.shape[0]
    oh, ow = h + 2 * padding - 2, w + 2 * padding - 2
    out = torch.empty((n, cout, oh, ow), device=x.device, dtype=x.dtype, memory_format=torch.channels_last)
    pooled = None
    if pool:
        pooled = torch.empty((n, cout, oh // 2, ow // 2), device=x.device, dtype=x.dtype,
                             memory_format=torch.channels_last)
    if packed_weight is None:
        packed_weight = pack_forward_weight(weight)
    plan_forward(x, skip, packed_weight, bias, out, pooled, padding, direct, config=config).run()
    return out, pooled


def conv3x3_input_grad(grad, weight, x, skip, padding: int, config: configs.Config | None = None,
                       packed_weight: torch.Tensor | None = None, relu_mask_x: bool = False
                       ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Gradients of conv2d([centre_crop(skip), x], weight, padding) for x and for skip (full shape).

    ``grad`` is the output gradient with the activation's mask already applied. relu_mask_x: x is a
    ReLU's output; grad_x comes back with that ReLU's mask applied (0 where x <= 0), i.e. as the
    gradient of the ReLU's input. packed_weight: pack_dgrad_weight(weight), where the caller has it.
    """
    grad_x = torch.empty(x.shape, device=x.device, dtype=x.dtype, memory_format=torch.channels_last)
    grad_skip = None
    offset = _skip_offset(skip, *x.shape[2:])
    if skip is not None:  # the kernel writes the window the forward read; zero around it
        grad_skip = torch.empty(skip.shape, device=skip.device, dtype=skip.dtype, memory_format=torch.channels_last)
        zero_outside_center(grad_skip, x.shape[2:])
    if packed_weight is None:
        packed_weight = pack_dgrad_weight(weight)
    plan_conv(grad.to(x.dtype), None, (0, 0), packed_weight, None, grad_x, grad_skip, offset, 2 - padding,
              relu=False, kind="dgrad", config=config, out_mask=x if relu_mask_x else None).run()
    return grad_x, grad_skip


WGRAD_WAVES = 4            # wgrad split-K aims at this many programs per SM on a GPU ...
WGRAD_MIN_STEPS = 4        # ... with at least this many K steps per split, for the software pipeline
_INTERPRETER_WGRAD_SPLIT = (27, 1)  # the interpreter: few programs


def wgrad_split_target(device: torch.device) -> tuple[int, int]:
    """(programs to aim for, fewest K steps per split) of the wgrad split-K on ``device``."""
    if device.type != "cuda":
        return _INTERPRETER_WGRAD_SPLIT
    return WGRAD_WAVES * torch.cuda.get_device_properties(device).multi_processor_count, WGRAD_MIN_STEPS


def wgrad_folds_taps(x_channels: int, skip) -> bool:
    """Whether conv3x3_wgrad_kernel folds the nine taps into its rows (FOLD_TAPS): x alone, of at most
    DIRECT_MAX_CHANNELS channels (the first layer), whose tap-per-program grid re-read the large
    gradient nine times to fill rows of 1-4 channels (an H100: 2.3 ms, 1.3 TFLOP/s, batch 8 at 572)."""
    return skip is None and x_channels <= DIRECT_MAX_CHANNELS


def _fold_rows(x_channels: int) -> int:
    return max(16, triton.next_power_of_2(9 * x_channels))


def wgrad_splits(pixels: int, cin: int, cout: int, cfg: configs.Config, target: tuple[int, int],
                 fold_taps: bool = False) -> tuple[int, int]:
    """(number of K splits, pixels per split) for conv3x3_wgrad_kernel; target: ``wgrad_split_target``'s;
    fold_taps: ``wgrad_folds_taps``'s (one program per output-channel tile and split, not nine)."""
    if fold_taps:
        tiles, taps = triton.cdiv(cout, cfg.block_n), 1
    else:
        tiles, taps = triton.cdiv(cin, cfg.block_m) * triton.cdiv(cout, cfg.block_n), 9
    chunks = triton.cdiv(pixels, cfg.block_k)
    programs, min_steps = target
    splits = max(1, min(triton.cdiv(programs, tiles * taps), chunks // min_steps))
    per_split = triton.cdiv(chunks, splits) * cfg.block_k
    return triton.cdiv(pixels, per_split), per_split


def wgrad_config(grad, x, skip, device_type: str | None = None) -> configs.Config:
    device_type = device_type or x.device.type
    cs = skip.shape[1] if skip is not None else 0
    _, dtype_name, _ = _compute_type(x.dtype, device_type, cs + x.shape[1])
    pixels = grad.shape[0] * grad.shape[2] * grad.shape[3]
    device = x.device if x.device.type == device_type else torch.device(device_type)
    return configs.choose("wgrad", device, dtype_name, cs, x.shape[1], grad.shape[1], pixels)


def plan_wgrad(grad, x, skip, partial, per_split: int, padding: int, device_type: str | None = None,
               bias_partial=None, config: configs.Config | None = None) -> Launch:
    """conv3x3_wgrad_kernel's launch writing ``partial`` of shape (splits, 9, C_in, C_out), and with
    ``bias_partial`` (splits, C_out) the bias gradient's partial sums too."""
    n, cx, h, w = x.shape
    cs = skip.shape[1] if skip is not None else 0
    cin, cout = cs + cx, grad.shape[1]
    oh, ow = grad.shape[2:]
    device_type = device_type or x.device.type
    check_rows(n * oh * ow, "the gradient")
    precision, _, round_tf32 = _compute_type(x.dtype, device_type, cin)
    cfg = config or wgrad_config(grad, x, skip, device_type)
    fold = wgrad_folds_taps(cx, skip)
    rows = _fold_rows(cx) if fold else cfg.block_m  # FOLD_TAPS: every (tap, channel) pair in one tile
    # the GEMM's tiles, then with the bias one more row of channel tiles (its programs at tap 0 sum g)
    row_tiles = 1 if fold else triton.cdiv(cin, cfg.block_m)
    tiles = (row_tiles + (bias_partial is not None)) * triton.cdiv(cout, cfg.block_n)
    skip_t = skip if skip is not None else x  # never read without HAS_SKIP
    args = (grad, *_strides(grad),
            x, *_strides(x),
            skip_t, *_strides(skip_t), *_skip_offset(skip, h, w),
            partial, bias_partial if bias_partial is not None else partial,
            n, h, w, oh, ow, cs, cx, cout, per_split)
    meta = dict(PAD=padding, HAS_SKIP=skip is not None, ONE_SOURCE_PER_TILE=skip is not None and cs % cfg.block_m == 0,
                BIAS_GRAD=bias_partial is not None, BLOCK_CI=rows, BLOCK_CO=cfg.block_n, BLOCK_P=cfg.block_k,
                INPUT_PRECISION=precision, ROUND_TF32=round_tf32, FOLD_TAPS=fold,
                num_warps=max(cfg.num_warps, configs.warps(rows, cfg.block_n)) if fold else cfg.num_warps,
                num_stages=cfg.num_stages)
    return Launch(conv3x3_wgrad_kernel, (tiles, 1 if fold else 9, partial.shape[0]), args, meta)


def conv3x3_weight_grad(grad, x, skip, padding: int, bias_grad: bool = False,
                        config: configs.Config | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Gradients of conv2d([centre_crop(skip), x], weight, padding) for the weight, and with
    ``bias_grad`` for the bias (the sum of ``grad`` over pixels), both in float32."""
    n, cx, h, w = x.shape
    cin, cout = cx + (skip.shape[1] if skip is not None else 0), grad.shape[1]
    grad = grad.to(x.dtype)
    cfg = config or wgrad_config(grad, x, skip)
    splits, per_split = wgrad_splits(n * grad.shape[2] * grad.shape[3], cin, cout, cfg, wgrad_split_target(x.device),
                                     wgrad_folds_taps(cx, skip))
    partial = torch.empty((splits, 9, cin, cout), device=x.device, dtype=torch.float32)
    bias_partial = torch.empty((splits, cout), device=x.device, dtype=torch.float32) if bias_grad else None
    plan_wgrad(grad, x, skip, partial, per_split, padding, bias_partial=bias_partial, config=cfg).run()
    # (split, kh, kw, ci, co) -> (co, ci, kh, kw); summing the splits here keeps the result deterministic
    grad_weight = partial.sum(0).view(3, 3, cin, cout).permute(3, 2, 0, 1)
    return grad_weight, (bias_partial.sum(0) if bias_grad else None)
