// crop_concat on the CPU: one pass that writes the concatenated tensor, reading the
// cropped window of skip in place (no intermediate crop or contiguous copy of it).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstring>

namespace unet_fast {
namespace {

void check_args(const at::Tensor& skip, const at::Tensor& x) {
  TORCH_CHECK(skip.dim() == 4 && x.dim() == 4, "crop_concat: skip and x must be 4-D (N, C, H, W), got ",
              skip.sizes(), " and ", x.sizes());
  TORCH_CHECK(skip.size(0) == x.size(0), "crop_concat: batch sizes differ: skip ", skip.size(0), ", x ", x.size(0));
  TORCH_CHECK(skip.size(2) >= x.size(2) && skip.size(3) >= x.size(3),
              "crop_concat: skip ", skip.sizes(), " is smaller than x ", x.sizes(), " and cannot be cropped to it");
  TORCH_CHECK(skip.scalar_type() == x.scalar_type(), "crop_concat: dtypes differ: skip ", skip.scalar_type(),
              ", x ", x.scalar_type());
  TORCH_CHECK(skip.device() == x.device(), "crop_concat: devices differ");
}

at::Tensor crop_concat_cpu(const at::Tensor& skip, const at::Tensor& x_in) {
  check_args(skip, x_in);
  const bool channels_last = x_in.is_contiguous(at::MemoryFormat::ChannelsLast) && !x_in.is_contiguous();
  const auto format = channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const at::Tensor x = x_in.contiguous(format);
  const int64_t N = x.size(0), Cx = x.size(1), H = x.size(2), W = x.size(3);
  const int64_t Cs = skip.size(1), C = Cs + Cx;
  const int64_t top = (skip.size(2) - H) / 2, left = (skip.size(3) - W) / 2;
  at::Tensor out = at::empty({N, C, H, W}, x.options().memory_format(format));
  const int64_t elem = x.element_size();
  const char* s = static_cast<const char*>(skip.data_ptr());
  const char* xp = static_cast<const char*>(x.data_ptr());
  char* o = static_cast<char*>(out.data_ptr());
  const int64_t sN = skip.stride(0), sC = skip.stride(1), sH = skip.stride(2), sW = skip.stride(3);

  if (!channels_last) {
    // One output row (n, c, h) per work item; x rows are contiguous, skip rows may be strided.
    at::parallel_for(0, N * C * H, 64, [&](int64_t begin, int64_t end) {
      for (int64_t row = begin; row < end; ++row) {
        const int64_t h = row % H, c = (row / H) % C, n = row / (H * C);
        char* dst = o + row * W * elem;
        if (c >= Cs) {
          std::memcpy(dst, xp + ((n * Cx + (c - Cs)) * H + h) * W * elem, W * elem);
        } else {
          const char* src = s + (n * sN + c * sC + (top + h) * sH + left * sW) * elem;
          if (sW == 1) {
            std::memcpy(dst, src, W * elem);
          } else {
            for (int64_t w = 0; w < W; ++w) std::memcpy(dst + w * elem, src + w * sW * elem, elem);
          }
        }
      }
    });
  } else {
    // One output pixel (n, h, w) per work item: Cs channels from skip, then Cx from x.
    at::parallel_for(0, N * H * W, 256, [&](int64_t begin, int64_t end) {
      for (int64_t pix = begin; pix < end; ++pix) {
        const int64_t w = pix % W, h = (pix / W) % H, n = pix / (H * W);
        char* dst = o + pix * C * elem;
        const char* src = s + (n * sN + (top + h) * sH + (left + w) * sW) * elem;
        if (sC == 1) {
          std::memcpy(dst, src, Cs * elem);
        } else {
          for (int64_t c = 0; c < Cs; ++c) std::memcpy(dst + c * elem, src + c * sC * elem, elem);
        }
        std::memcpy(dst + Cs * elem, xp + pix * Cx * elem, Cx * elem);
      }
    });
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(unet_fast, CPU, m) {
  m.impl("crop_concat", &crop_concat_cpu);
}

}  // namespace unet_fast
