// Shared by the CPU and CUDA kernels of weighted_cross_entropy: argument checks and the
// errors raised for the first invalid target or weight, so both devices say the same thing.
#pragma once

#include <ATen/ATen.h>

#include "memory_format.h"

#include <string>

namespace unet_fast {
namespace weighted_cross_entropy {

inline void check_args(const at::Tensor& logits, const at::Tensor& target,
                       const c10::optional<at::Tensor>& weight, int64_t reduction) {
  TORCH_CHECK(logits.dim() == 4, "weighted_cross_entropy: logits must be 4-D (N, C, H, W), got ", logits.sizes());
  const int64_t N = logits.size(0), C = logits.size(1), H = logits.size(2), W = logits.size(3);
  TORCH_CHECK(C >= 1, "weighted_cross_entropy: logits need at least one channel");
  TORCH_CHECK(target.sizes() == at::IntArrayRef({N, H, W}), "weighted_cross_entropy: target must have shape ",
              at::IntArrayRef({N, H, W}), ", got ", target.sizes());
  TORCH_CHECK(!weight || weight->sizes() == target.sizes(), "weighted_cross_entropy: weight must have shape ",
              target.sizes(), ", got ", weight ? weight->sizes() : at::IntArrayRef());
  TORCH_CHECK(!weight || at::isFloatingType(weight->scalar_type()),
              "weighted_cross_entropy: weight must be floating point, got ",
              weight ? weight->scalar_type() : at::kFloat);
  TORCH_CHECK(target.device() == logits.device() && (!weight || weight->device() == logits.device()),
              "weighted_cross_entropy: logits, target and weight must be on one device");
  TORCH_CHECK(reduction >= 0 && reduction <= 2,
              "weighted_cross_entropy: reduction must be 0 (none), 1 (mean) or 2 (sum), got ", reduction);
}

// The kernels' view of the inputs: logits dense in their own layout (NCHW or channels_last),
// target dense, weight dense in the accumulation type (a no-op for the usual fp32 map).
struct Inputs {
  at::Tensor logits, target;
  c10::optional<at::Tensor> weight;
  bool channels_last;
  at::ScalarType acc_type;
};

inline Inputs dense_inputs(const at::Tensor& logits, const at::Tensor& target,
                           const c10::optional<at::Tensor>& weight) {
  const auto format = memory_format_of(logits);
  const auto acc_type = logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  return {logits.contiguous(format), target.contiguous(),
          weight ? c10::optional<at::Tensor>(weight->to(acc_type).contiguous()) : c10::nullopt,
          format == at::MemoryFormat::ChannelsLast, acc_type};
}

inline std::string position(int64_t flat, int64_t H, int64_t W) {
  const int64_t n = flat / (H * W), h = (flat % (H * W)) / W, w = flat % W;
  return "(n=" + std::to_string(n) + ", h=" + std::to_string(h) + ", w=" + std::to_string(w) + ")";
}

// first_bad_* are flat pixel indices, or negative when every value was valid.
inline void raise_for_invalid(int64_t first_bad_target, int64_t first_bad_weight, const at::Tensor& target,
                              const c10::optional<at::Tensor>& weight, int64_t C, int64_t ignore_index) {
  const int64_t H = target.size(1), W = target.size(2);
  TORCH_CHECK_INDEX(first_bad_target < 0, "weighted_softmax_cross_entropy: target has value ",
                    target.reshape(-1)[first_bad_target].item<int64_t>(), " at ",
                    position(first_bad_target, H, W), "; class indices must be in [0, ", C,
                    ") or equal ignore_index=", ignore_index);
  TORCH_CHECK_VALUE(first_bad_weight < 0, "weighted_softmax_cross_entropy: weight has value ",
                    weight ? weight->reshape(-1)[first_bad_weight].item<double>() : 0.0, " at ",
                    position(first_bad_weight, H, W), "; weights must be >= 0 and not NaN");
}

}  // namespace weighted_cross_entropy
}  // namespace unet_fast
