// The layout an op's outputs take from its main input, as unet_fast/ops/_library.py:memory_format_of
// decides it: channels_last when the tensor is laid out so (and not also plain contiguous, as with one
// channel), else contiguous.
#pragma once

#include <ATen/ATen.h>

namespace unet_fast {

inline at::MemoryFormat memory_format_of(const at::Tensor& t) {
  const bool channels_last = t.is_contiguous(at::MemoryFormat::ChannelsLast) && !t.is_contiguous();
  return channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

}  // namespace unet_fast
