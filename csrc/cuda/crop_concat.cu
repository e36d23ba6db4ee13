// crop_concat on CUDA: a copy kernel over the output in memory order, so stores are fully
// coalesced; each thread moves one 2-, 4-, 8- or 16-byte word picked from the row width
// and alignment. Launched on the current stream.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <torch/library.h>

#include "../common/memory_format.h"

#include <cstdint>
#include <vector>

namespace unet_fast {
namespace {

struct alignas(16) Word16 { uint4 v; };

// Output viewed as rows of `row_words` words. Row r is (n, c, h) for NCHW (a row is W pixels)
// or (n, h, w) for NHWC (a row is C channels, whose first Cs come from skip).
template <typename Word, bool kChannelsLast>
__global__ void crop_concat_kernel(const Word* __restrict__ skip, const Word* __restrict__ x,
                                   Word* __restrict__ out, int64_t rows, int64_t row_words,
                                   int64_t Cs_w, int64_t Cx_w, int64_t C, int64_t H, int64_t W,
                                   int64_t sN, int64_t sC, int64_t sH, int64_t sW, int64_t top, int64_t left) {
  const int64_t total = rows * row_words;
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
    const int64_t row = i / row_words, col = i % row_words;
    if (!kChannelsLast) {
      const int64_t h = row % H, c = (row / H) % C, n = row / (H * C);
      const int64_t Cs = C - Cx_w;  // channel counts, not words, in this layout
      out[i] = c >= Cs ? x[((n * Cx_w + (c - Cs)) * H + h) * row_words + col]
                       : skip[n * sN + c * sC + (top + h) * sH + (left * sW) + col];
    } else {
      const int64_t w = row % W, h = (row / W) % H, n = row / (H * W);
      out[i] = col < Cs_w ? skip[n * sN + (top + h) * sH + (left + w) * sW + col]
                          : x[row * Cx_w + (col - Cs_w)];
    }
  }
}

template <typename Word>
void launch(const at::Tensor& skip, const at::Tensor& x, at::Tensor& out, bool channels_last) {
  const int64_t elem = x.element_size(), ratio = sizeof(Word) / elem;
  const int64_t N = x.size(0), Cx = x.size(1), H = x.size(2), W = x.size(3), Cs = skip.size(1), C = Cs + Cx;
  const int64_t top = (skip.size(2) - H) / 2, left = (skip.size(3) - W) / 2;
  const int64_t rows = channels_last ? N * H * W : N * C * H;
  const int64_t row_words = (channels_last ? C : W) / ratio;
  const int64_t total = rows * row_words;
  if (total == 0) return;
  const int threads = 256;
  const int64_t blocks = std::min<int64_t>((total + threads - 1) / threads, 65535LL * 8);
  auto stream = c10::cuda::getCurrentCUDAStream();
  const Word* s = reinterpret_cast<const Word*>(skip.data_ptr());
  const Word* xp = reinterpret_cast<const Word*>(x.data_ptr());
  Word* o = reinterpret_cast<Word*>(out.data_ptr());
  // skip strides in words: the innermost stride of the copied dimension is 1 by construction.
  if (channels_last) {
    crop_concat_kernel<Word, true><<<blocks, threads, 0, stream>>>(
        s, xp, o, rows, row_words, Cs / ratio, Cx / ratio, C, H, W, skip.stride(0) / ratio, 1,
        skip.stride(2) / ratio, skip.stride(3) / ratio, top, left);
  } else {
    crop_concat_kernel<Word, false><<<blocks, threads, 0, stream>>>(
        s, xp, o, rows, row_words, 0, Cx, C, H, W, skip.stride(0) / ratio, skip.stride(1) / ratio,
        skip.stride(2) / ratio, 1, top, left / ratio);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

bool fits(int64_t bytes_per_word, int64_t elem, const std::vector<int64_t>& counts,
          const std::vector<const void*>& ptrs) {
  if (bytes_per_word < elem) return false;
  const int64_t ratio = bytes_per_word / elem;
  for (int64_t n : counts) if (n % ratio) return false;
  for (const void* p : ptrs) if (reinterpret_cast<uintptr_t>(p) % bytes_per_word) return false;
  return true;
}

// The checks of unet_fast/ops/crop_concat.py, for calls of this kernel that do not pass through it.
void check_args(const at::Tensor& skip, const at::Tensor& x) {
  TORCH_CHECK_VALUE(skip.dim() == 4, "crop_concat: skip must be a 4-D tensor (N, C, H, W), got ", skip.sizes());
  TORCH_CHECK_VALUE(x.dim() == 4, "crop_concat: x must be a 4-D tensor (N, C, H, W), got ", x.sizes());
  TORCH_CHECK_VALUE(skip.size(0) == x.size(0), "crop_concat: batch sizes differ: skip has ", skip.size(0),
                    ", x has ", x.size(0));
  TORCH_CHECK_VALUE(skip.size(2) >= x.size(2) && skip.size(3) >= x.size(3), "crop_concat: skip ",
                    skip.sizes().slice(2), " is smaller than x ", x.sizes().slice(2),
                    "; skip must be at least as large as x in height and width");
  TORCH_CHECK_TYPE(skip.scalar_type() == x.scalar_type(), "crop_concat: dtypes differ: skip is ",
                   skip.scalar_type(), ", x is ", x.scalar_type(), "; cast one of them");
  TORCH_CHECK_VALUE(skip.device() == x.device(), "crop_concat: devices differ: skip is on ", skip.device(),
                    ", x on ", x.device());
}

at::Tensor crop_concat_cuda(const at::Tensor& skip_in, const at::Tensor& x_in) {
  check_args(skip_in, x_in);
  c10::cuda::CUDAGuard guard(x_in.device());
  const auto format = memory_format_of(x_in);
  const bool channels_last = format == at::MemoryFormat::ChannelsLast;
  const at::Tensor x = x_in.contiguous(format);
  const at::Tensor skip = skip_in.contiguous(format);  // a no-op for the decoder's own features
  const int64_t N = x.size(0), Cx = x.size(1), H = x.size(2), W = x.size(3), Cs = skip.size(1);
  at::Tensor out = at::empty({N, Cs + Cx, H, W}, x.options().memory_format(format));
  const int64_t elem = x.element_size();
  const int64_t left = (skip.size(3) - W) / 2;
  // Every row start must be word-aligned: row widths, skip strides and the crop offset count.
  const std::vector<int64_t> counts =
      channels_last ? std::vector<int64_t>{Cs, Cx, skip.stride(0), skip.stride(2), skip.stride(3)}
                    : std::vector<int64_t>{W, left, skip.stride(0), skip.stride(1), skip.stride(2)};
  const std::vector<const void*> ptrs = {skip.data_ptr(), x.data_ptr(), out.data_ptr()};
  if (fits(16, elem, counts, ptrs)) launch<Word16>(skip, x, out, channels_last);
  else if (fits(8, elem, counts, ptrs)) launch<uint64_t>(skip, x, out, channels_last);
  else if (fits(4, elem, counts, ptrs)) launch<uint32_t>(skip, x, out, channels_last);
  else if (fits(2, elem, counts, ptrs)) launch<uint16_t>(skip, x, out, channels_last);
  else launch<uint8_t>(skip, x, out, channels_last);
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(unet_fast, CUDA, m) {
  m.impl("crop_concat", &crop_concat_cuda);
}

}  // namespace unet_fast
