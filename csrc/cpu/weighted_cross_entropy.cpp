// Weighted softmax cross-entropy on the CPU: loss and gradient w.r.t. the logits in one pass.
//
// Pixels are cut into fixed blocks (kBlock pixels of one image), one at::parallel_for work item
// each; a block is walked in chunks of kChunk pixels. A chunk's logits are gathered into a
// channel-major float buffer (a plane row for NCHW, a transpose for channels_last), the softmax
// math runs over pixels in plain loops that the compiler vectorises (our own exp/log, built for
// AVX-512, AVX2 and the baseline ISA and picked at load time), and the gradient
// (softmax - onehot) * w is written back in the logits' layout and dtype. Each block writes its
// partial loss sum and non-ignored count; they are added in block order, so the result does not
// depend on the thread count. Invalid targets and weights are flagged on the way (no extra pass)
// and reported after the loop, naming the first one.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

// FP selects may be computed unconditionally (no FP traps are enabled in torch), so GCC can
// if-convert them and vectorise without AVX-512 masks.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math")
#endif

namespace unet_fast {
namespace {

constexpr int64_t kChunk = 256;   // pixels per inner step: C * kChunk floats stay in L1/L2
constexpr int64_t kBlock = 4096;  // pixels per parallel work item and per partial sum
constexpr int64_t kNone = std::numeric_limits<int64_t>::max();

inline float bits_to_float(int32_t i) { float f; std::memcpy(&f, &i, 4); return f; }
inline int32_t float_to_bits(float f) { int32_t i; std::memcpy(&i, &f, 4); return i; }

// exp(x) for x <= 0 (arguments are max-subtracted): Cephes expf, range-reduced by ln 2.
inline float exp_nonpositive(float x) {
  x = x < -87.0f ? -87.0f : x;
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;  // round to nearest
  const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  return p * bits_to_float((static_cast<int32_t>(n) + 127) << 23);
}

// log(s) for a positive normal s (a sum of exps, in [1, C]): Cephes logf.
inline float log_positive(float s) {
  const int32_t bits = float_to_bits(s);
  float e = static_cast<float>(((bits >> 23) & 0xff) - 126);
  float m = bits_to_float((bits & 0x007fffff) | 0x3f000000);  // mantissa in [0.5, 1)
  const bool small = m < 0.707106781186547524f;
  e = small ? e - 1.0f : e;
  m = small ? m + m - 1.0f : m - 1.0f;
  const float z = m * m;
  float y = 7.0376836292e-2f;
  y = y * m - 1.1514610310e-1f;
  y = y * m + 1.1676998740e-1f;
  y = y * m - 1.2420140846e-1f;
  y = y * m + 1.4249322787e-1f;
  y = y * m - 1.6668057665e-1f;
  y = y * m + 2.0000714765e-1f;
  y = y * m - 2.4999993993e-1f;
  y = y * m + 3.3333331174e-1f;
  y = y * m * z;
  y += -2.12194440e-4f * e - 0.5f * z;
  return m + y + 0.693359375f * e;
}

inline double exp_nonpositive(double x) { return std::exp(x); }
inline double log_positive(double s) { return std::log(s); }

// The math of one chunk. buf[c * kChunk + i]: logit of channel c, pixel i; overwritten with the
// gradient when with_grad. cls[i]: target class, or -1 for ignored pixels (whose w[i] is 0).
template <typename acc_t>
inline __attribute__((always_inline)) void chunk_math(acc_t* __restrict__ buf, int64_t C, int64_t len,
                                                      const acc_t* __restrict__ cls, const acc_t* __restrict__ w,
                                                      acc_t* __restrict__ loss, bool with_grad) {
  acc_t m[kChunk], s[kChunk], xt[kChunk];
  for (int64_t i = 0; i < len; ++i) { m[i] = buf[i]; s[i] = 0; xt[i] = 0; }
  for (int64_t c = 1; c < C; ++c) {
    const acc_t* x = buf + c * kChunk;
    for (int64_t i = 0; i < len; ++i) {
      const acc_t a = m[i], b = x[i];
      m[i] = a < b ? b : a;  // a select, not std::max's reference, so the loop vectorises
    }
  }
  for (int64_t c = 0; c < C; ++c) {
    acc_t* x = buf + c * kChunk;
    const acc_t cf = static_cast<acc_t>(c);
    for (int64_t i = 0; i < len; ++i) {
      const acc_t shifted = x[i] - m[i];
      const acc_t e = exp_nonpositive(shifted);
      xt[i] += cls[i] == cf ? shifted : acc_t(0);
      s[i] += e;
      x[i] = e;
    }
  }
  for (int64_t i = 0; i < len; ++i) {
    const acc_t l = (log_positive(s[i]) - xt[i]) * w[i];
    loss[i] = cls[i] >= 0 ? l : acc_t(0);
    s[i] = w[i] / s[i];  // reused as the softmax scale of the gradient
  }
  if (!with_grad) return;
  for (int64_t c = 0; c < C; ++c) {
    acc_t* x = buf + c * kChunk;
    const acc_t cf = static_cast<acc_t>(c);
    for (int64_t i = 0; i < len; ++i) x[i] = x[i] * s[i] - (cls[i] == cf ? w[i] : acc_t(0));
  }
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("avx512f", "avx2,fma", "default")))
#endif
void chunk_math_f32(float* buf, int64_t C, int64_t len, const float* cls, const float* w, float* loss, bool with_grad) {
  chunk_math<float>(buf, C, len, cls, w, loss, with_grad);
}

void chunk_math_f64(double* buf, int64_t C, int64_t len, const double* cls, const double* w, double* loss,
                    bool with_grad) {
  chunk_math<double>(buf, C, len, cls, w, loss, with_grad);
}

inline void run_chunk_math(float* b, int64_t C, int64_t n, const float* c, const float* w, float* l, bool g) {
  chunk_math_f32(b, C, n, c, w, l, g);
}
inline void run_chunk_math(double* b, int64_t C, int64_t n, const double* c, const double* w, double* l, bool g) {
  chunk_math_f64(b, C, n, c, w, l, g);
}

struct Flags {
  int64_t count = 0;             // non-ignored pixels
  int64_t bad_target = kNone;    // flat pixel index of the first invalid target
  int64_t bad_weight = kNone;    // ... of the first negative or NaN weight
};

// Reads `len` targets and weights from flat pixel `p0` into cls / w (see chunk_math), counts the
// non-ignored pixels and records the first invalid target and weight.
template <typename acc_t, typename target_t, typename weight_t>
void prepare_targets(const void* target_v, const void* weight_v, int64_t p0, int64_t len, int64_t C,
                     int64_t ignore_index, acc_t* cls, acc_t* w, Flags& flags) {
  const target_t* target = static_cast<const target_t*>(target_v) + p0;
  const weight_t* weight = weight_v ? static_cast<const weight_t*>(weight_v) + p0 : nullptr;
  int64_t count = 0;
  bool bad_t = false, bad_w = false;
  for (int64_t i = 0; i < len; ++i) {
    const int64_t t = static_cast<int64_t>(target[i]);
    const bool kept = t != ignore_index;
    const bool in_range = t >= 0 && t < C;
    const acc_t wi = weight ? static_cast<acc_t>(weight[i]) : acc_t(1);
    bad_t |= kept && !in_range;
    bad_w |= !(wi >= 0);  // negative or NaN
    count += kept;
    const bool use = kept && in_range;
    cls[i] = use ? static_cast<acc_t>(t) : acc_t(-1);
    w[i] = use ? wi : acc_t(0);
  }
  flags.count += count;
  if (bad_t && flags.bad_target == kNone) {
    for (int64_t i = 0; i < len; ++i) {
      const int64_t t = static_cast<int64_t>(target[i]);
      if (t != ignore_index && (t < 0 || t >= C)) { flags.bad_target = p0 + i; break; }
    }
  }
  if (bad_w && flags.bad_weight == kNone) {
    for (int64_t i = 0; i < len; ++i) {
      if (!(static_cast<acc_t>(weight[i]) >= 0)) { flags.bad_weight = p0 + i; break; }
    }
  }
}

template <typename acc_t>
using PrepareFn = void (*)(const void*, const void*, int64_t, int64_t, int64_t, int64_t, acc_t*, acc_t*, Flags&);

template <typename acc_t, typename target_t>
PrepareFn<acc_t> pick_weight(const c10::optional<at::Tensor>& weight) {
  if (!weight) return &prepare_targets<acc_t, target_t, float>;  // weight pointer is null: unused
  switch (weight->scalar_type()) {
    case at::kFloat: return &prepare_targets<acc_t, target_t, float>;
    case at::kDouble: return &prepare_targets<acc_t, target_t, double>;
    case at::kBFloat16: return &prepare_targets<acc_t, target_t, at::BFloat16>;
    case at::kHalf: return &prepare_targets<acc_t, target_t, at::Half>;
    default: TORCH_CHECK(false, "weighted_cross_entropy: weight must be floating point, got ", weight->scalar_type());
  }
}

template <typename acc_t>
PrepareFn<acc_t> pick_prepare(const at::Tensor& target, const c10::optional<at::Tensor>& weight) {
  switch (target.scalar_type()) {
    case at::kByte: return pick_weight<acc_t, uint8_t>(weight);
    case at::kInt: return pick_weight<acc_t, int32_t>(weight);
    case at::kLong: return pick_weight<acc_t, int64_t>(weight);
    default: TORCH_CHECK(false, "weighted_cross_entropy: target must be uint8, int32 or int64, got ", target.scalar_type());
  }
}

struct BlockResult {
  double loss = 0;
  Flags flags;
};

template <typename scalar_t>
void run(const at::Tensor& logits, bool channels_last, const at::Tensor& target, const c10::optional<at::Tensor>& weight,
         int64_t ignore_index, bool per_pixel, at::Tensor& loss, at::Tensor* grad, std::vector<BlockResult>& blocks) {
  using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
  const int64_t N = logits.size(0), C = logits.size(1), HW = logits.size(2) * logits.size(3);
  const int64_t blocks_per_image = (HW + kBlock - 1) / kBlock;
  const scalar_t* x = logits.const_data_ptr<scalar_t>();
  scalar_t* g = grad ? grad->data_ptr<scalar_t>() : nullptr;
  acc_t* loss_out = per_pixel ? loss.data_ptr<acc_t>() : nullptr;
  const void* target_p = target.const_data_ptr();
  const void* weight_p = weight ? weight->const_data_ptr() : nullptr;
  const PrepareFn<acc_t> prepare = pick_prepare<acc_t>(target, weight);
  // Element (n, c, pixel p) of logits and grad sits at n * C * HW + c * plane + p * step.
  const int64_t plane = channels_last ? 1 : HW, step = channels_last ? C : 1;

  at::parallel_for(0, N * blocks_per_image, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> buf(C * kChunk);
    acc_t cls[kChunk], w[kChunk], chunk_loss[kChunk];
    for (int64_t b = begin; b < end; ++b) {
      const int64_t n = b / blocks_per_image;
      const int64_t p_begin = (b % blocks_per_image) * kBlock, p_end = std::min(HW, p_begin + kBlock);
      BlockResult& result = blocks[b];
      double block_loss = 0;
      for (int64_t p0 = p_begin; p0 < p_end; p0 += kChunk) {
        const int64_t len = std::min(kChunk, p_end - p0);
        const int64_t base = n * C * HW + p0 * step;
        for (int64_t c = 0; c < C; ++c) {
          const scalar_t* src = x + base + c * plane;
          acc_t* dst = buf.data() + c * kChunk;
          if (channels_last) {
            for (int64_t i = 0; i < len; ++i) dst[i] = static_cast<acc_t>(src[i * C]);
          } else {
            for (int64_t i = 0; i < len; ++i) dst[i] = static_cast<acc_t>(src[i]);
          }
        }
        const int64_t flat = n * HW + p0;  // pixel index in target, weight and per-pixel loss
        prepare(target_p, weight_p, flat, len, C, ignore_index, cls, w, result.flags);
        run_chunk_math(buf.data(), C, len, cls, w, per_pixel ? loss_out + flat : chunk_loss, g != nullptr);
        if (!per_pixel) {
          acc_t sum = 0;
          for (int64_t i = 0; i < len; ++i) sum += chunk_loss[i];
          block_loss += sum;
        }
        if (g) {
          for (int64_t c = 0; c < C; ++c) {
            const acc_t* src = buf.data() + c * kChunk;
            scalar_t* dst = g + base + c * plane;
            if (channels_last) {
              for (int64_t i = 0; i < len; ++i) dst[i * C] = static_cast<scalar_t>(src[i]);
            } else {
              for (int64_t i = 0; i < len; ++i) dst[i] = static_cast<scalar_t>(src[i]);
            }
          }
        }
      }
      result.loss = block_loss;
    }
  });
}

std::string position(int64_t flat, int64_t H, int64_t W) {
  const int64_t n = flat / (H * W), h = (flat % (H * W)) / W, w = flat % W;
  return "(n=" + std::to_string(n) + ", h=" + std::to_string(h) + ", w=" + std::to_string(w) + ")";
}

// reduction follows at::Reduction: 0 none (per-pixel loss), 1 mean over non-ignored pixels, 2 sum.
std::tuple<at::Tensor, at::Tensor, at::Tensor> weighted_cross_entropy_cpu(
    const at::Tensor& logits_in, const at::Tensor& target_in, const c10::optional<at::Tensor>& weight_in,
    int64_t reduction, int64_t ignore_index, bool compute_grad) {
  TORCH_CHECK(logits_in.dim() == 4, "weighted_cross_entropy: logits must be 4-D (N, C, H, W), got ", logits_in.sizes());
  const int64_t N = logits_in.size(0), C = logits_in.size(1), H = logits_in.size(2), W = logits_in.size(3);
  TORCH_CHECK(C >= 1, "weighted_cross_entropy: logits need at least one channel");
  TORCH_CHECK(target_in.sizes() == at::IntArrayRef({N, H, W}), "weighted_cross_entropy: target must have shape ",
              at::IntArrayRef({N, H, W}), ", got ", target_in.sizes());
  TORCH_CHECK(!weight_in || weight_in->sizes() == target_in.sizes(), "weighted_cross_entropy: weight must have shape ",
              target_in.sizes(), ", got ", weight_in ? weight_in->sizes() : at::IntArrayRef());
  TORCH_CHECK(reduction >= 0 && reduction <= 2, "weighted_cross_entropy: reduction must be 0 (none), 1 (mean) or 2 (sum), got ",
              reduction);
  const bool channels_last = logits_in.is_contiguous(at::MemoryFormat::ChannelsLast) && !logits_in.is_contiguous();
  const auto format = channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  const at::Tensor logits = logits_in.contiguous(format);
  const at::Tensor target = target_in.contiguous();
  const c10::optional<at::Tensor> weight = weight_in ? c10::optional<at::Tensor>(weight_in->contiguous()) : c10::nullopt;
  const auto acc_type = logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const bool per_pixel = reduction == 0;
  at::Tensor loss = per_pixel ? at::empty({N, H, W}, logits.options().dtype(acc_type))
                              : at::empty({}, logits.options().dtype(acc_type));
  at::Tensor grad = compute_grad ? at::empty(logits.sizes(), logits.options().memory_format(format))
                                 : at::empty({0}, logits.options());
  const int64_t blocks_per_image = (H * W + kBlock - 1) / kBlock;
  std::vector<BlockResult> blocks(N * blocks_per_image);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, logits.scalar_type(), "weighted_cross_entropy_cpu", [&] {
    run<scalar_t>(logits, channels_last, target, weight, ignore_index, per_pixel, loss, compute_grad ? &grad : nullptr,
                  blocks);
  });
  double total = 0;
  Flags all;
  for (const BlockResult& b : blocks) {  // block order: deterministic for any thread count
    total += b.loss;
    all.count += b.flags.count;
    all.bad_target = std::min(all.bad_target, b.flags.bad_target);
    all.bad_weight = std::min(all.bad_weight, b.flags.bad_weight);
  }
  TORCH_CHECK_INDEX(all.bad_target == kNone, "weighted_softmax_cross_entropy: target has value ",
                    target.reshape(-1)[all.bad_target].item<int64_t>(), " at ", position(all.bad_target, H, W),
                    "; class indices must be in [0, ", C, ") or equal ignore_index=", ignore_index);
  TORCH_CHECK_VALUE(all.bad_weight == kNone, "weighted_softmax_cross_entropy: weight has value ",
                    weight ? weight->reshape(-1)[all.bad_weight].item<double>() : 0.0, " at ",
                    position(all.bad_weight, H, W), "; weights must be >= 0 and not NaN");
  if (reduction == 1) total /= std::max<int64_t>(all.count, 1);
  if (!per_pixel) loss.fill_(total);
  return {loss, grad, at::scalar_tensor(all.count, logits.options().dtype(at::kLong))};
}

}  // namespace

TORCH_LIBRARY_IMPL(unet_fast, CPU, m) {
  m.impl("weighted_cross_entropy", &weighted_cross_entropy_cpu);
}

}  // namespace unet_fast
