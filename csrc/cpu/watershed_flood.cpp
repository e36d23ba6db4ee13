// Meyer's flooding of an 8-bit level image from markers, 4-connected, inside a mask: each pixel joins the
// marker it reaches by the path whose highest level is lowest; at equal costs, the marker whose flood
// reached it first. unet_fast/instances.py splits touching cells with it (its _flood_python is the same
// algorithm with a heap, the fallback without this extension, and the tests' oracle).
//
// A bucket queue: one FIFO per level. A pixel's cost is max(its predecessor's cost, its own level), never
// below the cost being flooded, so the buckets are emptied in order, each in the order its pixels came;
// that is the heap's (cost, order of entry) exactly, in O(pixels).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <vector>

namespace unet_fast {
namespace {

at::Tensor watershed_flood_cpu(const at::Tensor& level, const at::Tensor& markers, const at::Tensor& inside) {
  TORCH_CHECK(level.dim() == 2 && level.scalar_type() == at::kByte,
              "watershed_flood: level must be a 2-D uint8 tensor, got ", level.scalar_type(), " of ", level.sizes());
  TORCH_CHECK(markers.sizes() == level.sizes() && markers.scalar_type() == at::kLong,
              "watershed_flood: markers must be int64 of level's shape ", level.sizes(), ", got ",
              markers.scalar_type(), " of ", markers.sizes());
  TORCH_CHECK(inside.sizes() == level.sizes() && inside.scalar_type() == at::kBool,
              "watershed_flood: inside must be bool of level's shape ", level.sizes(), ", got ",
              inside.scalar_type(), " of ", inside.sizes());
  const at::Tensor lv = level.contiguous(), mk = markers.contiguous(), in = inside.contiguous();
  const int64_t height = lv.size(0), width = lv.size(1), n = height * width;
  const uint8_t* cost_of = lv.data_ptr<uint8_t>();
  const int64_t* marker = mk.data_ptr<int64_t>();
  const bool* is_inside = in.data_ptr<bool>();
  at::Tensor out = at::zeros({height, width}, mk.options());
  int64_t* label = out.data_ptr<int64_t>();

  std::vector<uint8_t> free(n);
  std::array<std::vector<int64_t>, 256> bucket;
  for (int64_t i = 0; i < n; ++i) {  // markers enter in raster order
    if (is_inside[i] && marker[i] != 0) {
      label[i] = marker[i];
      bucket[cost_of[i]].push_back(i);
    } else {
      free[i] = is_inside[i];
    }
  }
  for (int cost = 0; cost < 256; ++cost) {
    std::vector<int64_t>& queue = bucket[cost];
    for (size_t k = 0; k < queue.size(); ++k) {  // grows while flooded: pixels of this cost join its end
      const int64_t i = queue[k];
      const int64_t y = i / width, x = i % width;
      const int64_t next[4] = {y > 0 ? i - width : -1, y < height - 1 ? i + width : -1, x > 0 ? i - 1 : -1,
                               x < width - 1 ? i + 1 : -1};
      for (const int64_t j : next) {
        if (j < 0 || !free[j]) continue;
        free[j] = 0;
        label[j] = label[i];
        bucket[std::max<int>(cost, cost_of[j])].push_back(j);
      }
    }
    std::vector<int64_t>().swap(queue);  // its memory back before the next level
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(unet_fast, CPU, m) {
  m.impl("watershed_flood", &watershed_flood_cpu);
}

}  // namespace unet_fast
