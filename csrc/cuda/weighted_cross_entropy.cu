// Weighted softmax cross-entropy on CUDA: loss and gradient w.r.t. the logits in one pass.
//
// One thread per pixel (kItems pixels per thread, consecutive threads on consecutive pixels, so
// NCHW loads and stores are coalesced); the class axis is walked twice: an online max / sum of
// exponentials with the target logit picked on the way, then (when the gradient is wanted) a
// second read of the pixel's logits, from L1/L2, to write (softmax - onehot) * weight. Each
// block reduces its loss, non-ignored count and first invalid target / weight with cub and writes
// them to its slot; one more block adds the slots in a fixed order. No float atomics, so results
// are deterministic. The first invalid pixel is read back after the kernels (one small copy,
// a synchronisation) to raise an error that names it. Launched on the current stream.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cub/block/block_reduce.cuh>
#include <torch/library.h>

#include "../common/weighted_cross_entropy.h"

#include <cstdint>
#include <string>

namespace unet_fast {
namespace {

constexpr int kThreads = 256;
constexpr int kItems = 4;  // pixels per thread: a block covers 1024 pixels

__device__ __forceinline__ float exp_acc(float x) { return expf(x); }
__device__ __forceinline__ double exp_acc(double x) { return exp(x); }
__device__ __forceinline__ float log_acc(float x) { return logf(x); }
__device__ __forceinline__ double log_acc(double x) { return log(x); }

constexpr int kNoBad = kThreads * kItems;  // "no invalid pixel in this block"

// cub::Min left CUB in CUDA 13; these work with every version.
struct MinInt {
  __device__ __forceinline__ int operator()(int a, int b) const { return a < b ? a : b; }
};
struct MinIndex {
  __device__ __forceinline__ int64_t operator()(int64_t a, int64_t b) const { return a < b ? a : b; }
};

// No __launch_bounds__: with it ptxas aims at 40 registers on sm_80 and spills.
template <typename scalar_t, typename target_t, typename acc_t>
__global__ void weighted_cross_entropy_kernel(
    const scalar_t* __restrict__ logits, const target_t* __restrict__ target, const acc_t* __restrict__ weight,
    acc_t* __restrict__ loss_out, scalar_t* __restrict__ grad, acc_t* __restrict__ part_loss,
    int64_t* __restrict__ part_count, int64_t* __restrict__ part_bad, int64_t num_pixels, int64_t HW, int64_t C,
    int64_t stride_n, int64_t stride_c, int64_t stride_p, int64_t ignore_index) {
  // Grid (pixel blocks of one image, images): no 64-bit division by HW (a subroutine that spills).
  // Per-thread state in 32 bits (pixel offsets within the block): 64-bit accumulators spill.
  acc_t loss_sum = 0;
  int kept_count = 0, bad_target = kNoBad, bad_weight = kNoBad;
  const int64_t n = blockIdx.y, first = static_cast<int64_t>(blockIdx.x) * (kThreads * kItems);
  const int64_t slot = n * gridDim.x + blockIdx.x;
  for (int k = 0; k < kItems; ++k) {
    const int local = k * kThreads + threadIdx.x;
    const int64_t p = first + local;
    if (p >= HW) break;
    const int64_t pix = n * HW + p;
    const int64_t t = static_cast<int64_t>(target[pix]);
    const acc_t w_raw = weight ? weight[pix] : acc_t(1);
    const bool kept = t != ignore_index, valid = t >= 0 && t < C, use = kept && valid;
    if (kept && !valid) bad_target = min(bad_target, local);
    if (!(w_raw >= acc_t(0)) || isinf(w_raw)) bad_weight = min(bad_weight, local);  // negative, NaN or infinite
    kept_count += kept;
    const acc_t w = use ? w_raw : acc_t(0);
    const int64_t offset = n * stride_n + p * stride_p;
    const scalar_t* x = logits + offset;
    acc_t m = static_cast<acc_t>(x[0]), s = 1, xt = t == 0 ? m : acc_t(0);
    for (int64_t c = 1; c < C; ++c) {
      const acc_t v = static_cast<acc_t>(x[c * stride_c]);
      if (v > m) {
        s = s * exp_acc(m - v) + acc_t(1);
        m = v;
      } else {
        s += exp_acc(v - m);
      }
      if (c == t) xt = v;
    }
    // + (m - m): NaN when the largest logit is infinite, where aten's x - max is inf - inf (its online
    // sum above would make exp(inf - inf) a 1); 0 otherwise. NaN logits already made s NaN.
    const acc_t lse = m + log_acc(s) + (m - m);
    const acc_t loss = use ? (lse - xt) * w : acc_t(0);
    loss_sum += loss;
    if (loss_out) loss_out[pix] = loss;
    if (grad) {
      scalar_t* g = grad + offset;
      for (int64_t c = 0; c < C; ++c) {
        const acc_t v = static_cast<acc_t>(x[c * stride_c]);
        g[c * stride_c] = static_cast<scalar_t>(exp_acc(v - lse) * w - (c == t ? w : acc_t(0)));
      }
    }
  }
  using ReduceAcc = cub::BlockReduce<acc_t, kThreads>;
  using ReduceInt = cub::BlockReduce<int, kThreads>;
  __shared__ union {
    typename ReduceAcc::TempStorage acc;
    typename ReduceInt::TempStorage index;
  } storage;
  const acc_t block_loss = ReduceAcc(storage.acc).Sum(loss_sum);
  __syncthreads();
  const int block_count = ReduceInt(storage.index).Sum(kept_count);
  __syncthreads();
  const int block_bad_target = ReduceInt(storage.index).Reduce(bad_target, MinInt());
  __syncthreads();
  const int block_bad_weight = ReduceInt(storage.index).Reduce(bad_weight, MinInt());
  if (threadIdx.x == 0) {
    const int64_t block_first = n * HW + first;
    part_loss[slot] = block_loss;
    part_count[slot] = block_count;
    part_bad[2 * slot] = block_bad_target == kNoBad ? num_pixels : block_first + block_bad_target;
    part_bad[2 * slot + 1] = block_bad_weight == kNoBad ? num_pixels : block_first + block_bad_weight;
  }
}

// One block: adds the per-block slots in a fixed order; writes the reduced loss (when asked),
// the count and the first invalid pixels (-1 for none).
template <typename acc_t>
__global__ void __launch_bounds__(kThreads) finish_kernel(
    const acc_t* __restrict__ part_loss, const int64_t* __restrict__ part_count, const int64_t* __restrict__ part_bad,
    int64_t parts, int64_t num_pixels, int64_t reduction, acc_t* __restrict__ loss, int64_t* __restrict__ count,
    int64_t* __restrict__ bad) {
  double loss_sum = 0;
  int64_t count_sum = 0, bad_target = num_pixels, bad_weight = num_pixels;
  for (int64_t i = threadIdx.x; i < parts; i += kThreads) {
    loss_sum += static_cast<double>(part_loss[i]);
    count_sum += part_count[i];
    bad_target = min(bad_target, part_bad[2 * i]);
    bad_weight = min(bad_weight, part_bad[2 * i + 1]);
  }
  using ReduceDouble = cub::BlockReduce<double, kThreads>;
  using ReduceIndex = cub::BlockReduce<int64_t, kThreads>;
  __shared__ union {
    typename ReduceDouble::TempStorage dbl;
    typename ReduceIndex::TempStorage index;
  } storage;
  const double total = ReduceDouble(storage.dbl).Sum(loss_sum);
  __syncthreads();
  const int64_t total_count = ReduceIndex(storage.index).Sum(count_sum);
  __syncthreads();
  const int64_t first_bad_target = ReduceIndex(storage.index).Reduce(bad_target, MinIndex());
  __syncthreads();
  const int64_t first_bad_weight = ReduceIndex(storage.index).Reduce(bad_weight, MinIndex());
  if (threadIdx.x == 0) {
    if (reduction != 0) {
      *loss = static_cast<acc_t>(reduction == 1 ? total / static_cast<double>(max(total_count, int64_t(1))) : total);
    }
    *count = total_count;
    bad[0] = first_bad_target < num_pixels ? first_bad_target : -1;
    bad[1] = first_bad_weight < num_pixels ? first_bad_weight : -1;
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> weighted_cross_entropy_cuda(
    const at::Tensor& logits_in, const at::Tensor& target_in, const c10::optional<at::Tensor>& weight_in,
    int64_t reduction, int64_t ignore_index, bool compute_grad) {
  weighted_cross_entropy::check_args(logits_in, target_in, weight_in, reduction);
  const int64_t N = logits_in.size(0), C = logits_in.size(1), H = logits_in.size(2), W = logits_in.size(3);
  c10::cuda::CUDAGuard guard(logits_in.device());
  const auto inputs = weighted_cross_entropy::dense_inputs(logits_in, target_in, weight_in);
  const at::Tensor& logits = inputs.logits;
  const at::Tensor& target = inputs.target;
  const c10::optional<at::Tensor>& weight = inputs.weight;
  const bool channels_last = inputs.channels_last;
  const auto acc_type = inputs.acc_type;
  const auto options = logits.options();
  const bool per_pixel = reduction == 0;
  at::Tensor loss = per_pixel ? at::empty({N, H, W}, options.dtype(acc_type)) : at::empty({}, options.dtype(acc_type));
  at::Tensor grad = compute_grad ? at::empty(logits.sizes(), options.memory_format(memory_format_of(logits)))
                                 : at::empty({0}, options);
  at::Tensor count = at::empty({}, options.dtype(at::kLong));
  at::Tensor bad = at::empty({2}, options.dtype(at::kLong));
  const int64_t num_pixels = N * H * W;
  const int64_t blocks_per_image = (H * W + kThreads * kItems - 1) / (kThreads * kItems);
  TORCH_CHECK(N <= 65535, "weighted_cross_entropy: at most 65535 images per call on CUDA, got ", N);
  const int64_t parts = std::max<int64_t>(N * blocks_per_image, 1);
  at::Tensor part_loss = at::empty({parts}, options.dtype(acc_type));
  at::Tensor part_count = at::empty({parts}, options.dtype(at::kLong));
  at::Tensor part_bad = at::empty({2 * parts}, options.dtype(at::kLong));
  const int64_t stride_c = channels_last ? 1 : H * W, stride_p = channels_last ? C : 1;
  auto stream = c10::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, logits.scalar_type(), "weighted_cross_entropy_cuda", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    auto launch = [&](auto target_tag) {
      using target_t = decltype(target_tag);
      if (num_pixels > 0) {  // else finish_kernel reads no slots
        const dim3 grid(blocks_per_image, N);
        weighted_cross_entropy_kernel<scalar_t, target_t, acc_t><<<grid, kThreads, 0, stream>>>(
            logits.const_data_ptr<scalar_t>(), target.const_data_ptr<target_t>(),
            weight ? weight->const_data_ptr<acc_t>() : nullptr, per_pixel ? loss.data_ptr<acc_t>() : nullptr,
            compute_grad ? grad.data_ptr<scalar_t>() : nullptr, part_loss.data_ptr<acc_t>(),
            part_count.data_ptr<int64_t>(), part_bad.data_ptr<int64_t>(), num_pixels, H * W, C, C * H * W, stride_c,
            stride_p, ignore_index);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
      finish_kernel<acc_t><<<1, kThreads, 0, stream>>>(
          part_loss.const_data_ptr<acc_t>(), part_count.const_data_ptr<int64_t>(), part_bad.const_data_ptr<int64_t>(),
          num_pixels > 0 ? parts : 0, num_pixels, reduction, per_pixel ? nullptr : loss.data_ptr<acc_t>(),
          count.data_ptr<int64_t>(), bad.data_ptr<int64_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    };
    switch (target.scalar_type()) {
      case at::kByte: launch(uint8_t{}); break;
      case at::kInt: launch(int32_t{}); break;
      case at::kLong: launch(int64_t{}); break;
      default: TORCH_CHECK(false, "weighted_cross_entropy: target must be uint8, int32 or int64, got ", target.scalar_type());
    }
  });

  // No synchronisation here: the caller reads `bad` when it chooses (unet_fast/ops/weighted_cross_entropy.py).
  return {loss, grad, count, bad};
}

}  // namespace

TORCH_LIBRARY_IMPL(unet_fast, CUDA, m) {
  m.impl("weighted_cross_entropy", &weighted_cross_entropy_cuda);
}

}  // namespace unet_fast
