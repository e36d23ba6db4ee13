// Shared by the CPU and CUDA kernels of weighted_cross_entropy: argument checks and the dense
// inputs. Invalid values are reported to Python (first_bad), which names them.
#pragma once

#include <ATen/ATen.h>

#include "memory_format.h"


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

}  // namespace weighted_cross_entropy
}  // namespace unet_fast
