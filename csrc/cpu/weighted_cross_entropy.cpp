// Weighted softmax cross-entropy on the CPU: loss and gradient w.r.t. the logits in one pass.
//
// Pixels are cut into fixed blocks (kBlock pixels of one image), one at::parallel_for work item
// each; a block is walked in chunks of kChunk pixels. The softmax math runs over the chunk's
// pixels in plain loops that the compiler vectorises (our own exp/log, built for AVX-512, AVX2
// and the baseline ISA and picked at load time). For fp32/fp64 NCHW it reads the logit planes
// and writes the gradient (softmax - onehot) * w straight into the gradient planes; other
// dtypes and channels_last go through a channel-major float buffer (a gather, then a scatter of
// the gradient in the logits' layout and dtype). Targets are read in their own dtype. Each
// block writes its partial loss sum and non-ignored count; they are added in block order, so the
// result does not depend on the thread count. Invalid targets and weights are flagged on the way
// (no extra pass) and reported after the loop, naming the first one. A NaN logit, or an infinite largest
// logit, makes its pixel's loss and gradient NaN, exactly where aten's are (tests/test_weighted_cross_entropy.py).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../common/weighted_cross_entropy.h"

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

// exp(x) for x <= 0 (arguments are max-subtracted): Cephes expf, range-reduced by ln 2. NaN (from a NaN
// logit, or inf - inf when the largest logit is infinite) propagates, so the pixel's loss is NaN as aten's is.
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
  const float e = p * bits_to_float((static_cast<int32_t>(n) + 127) << 23);
  return x != x ? x : e;  // NaN stays NaN (as aten's exp), whatever the bit tricks above made of it
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
  const float result = m + y + 0.693359375f * e;
  return s != s ? s : result;  // NaN in, NaN out: the bit tricks above would make a finite number of it
}

inline double exp_nonpositive(double x) { return std::exp(x); }
inline double log_positive(double s) { return std::log(s); }

// Target codes, as the chunk math reads them: the class index, kIgnored for ignore_index,
// kNegative for any other negative value (invalid, like values >= C).
constexpr float kIgnored = -1.0f, kNegative = -2.0f;

template <typename acc_t>
struct ChunkResult {
  acc_t loss = 0;       // sum of the chunk's pixel losses
  int32_t kept = 0;     // pixels whose target is not ignore_index
  int32_t bad_target = 0, bad_weight = 0;
};

// The math of one chunk of len pixels. Logit (c, i) is in[c * in_plane + i]; out (same layout
// with out_plane) receives exp(x - max) and then, when with_grad, the gradient
// (softmax - onehot) * w. in and out may be the same buffer. weight may be null (all ones);
// loss (per pixel) may be null.
template <typename acc_t>
inline __attribute__((always_inline)) ChunkResult<acc_t> chunk_math(
    const acc_t* in, int64_t in_plane, acc_t* out, int64_t out_plane, int64_t C, int64_t len,
    const acc_t* __restrict__ code, const acc_t* __restrict__ weight, acc_t* __restrict__ loss, bool with_grad) {
  acc_t m[kChunk], s[kChunk], xt[kChunk], cls[kChunk], w[kChunk], l[kChunk];
  const acc_t num_classes = static_cast<acc_t>(C);
  int32_t kept = 0, bad_target = 0, bad_weight = 0;
  for (int64_t i = 0; i < len; ++i) {
    const acc_t t = code[i], wi = weight ? weight[i] : acc_t(1);
    const bool is_kept = t != acc_t(kIgnored), valid = t >= 0 && t < num_classes;
    kept += is_kept;
    bad_target += is_kept && !valid;
    bad_weight += !(wi >= 0 && wi <= std::numeric_limits<acc_t>::max());  // negative, NaN or infinite
    cls[i] = valid ? t : acc_t(-1);
    w[i] = valid ? wi : acc_t(0);
    m[i] = in[i];
    s[i] = 0;
    xt[i] = 0;
  }
  for (int64_t c = 1; c < C; ++c) {
    const acc_t* x = in + c * in_plane;
    for (int64_t i = 0; i < len; ++i) {
      const acc_t a = m[i], b = x[i];
      m[i] = a < b ? b : a;  // a select, not std::max's reference, so the loop vectorises
    }
  }
  for (int64_t c = 0; c < C; ++c) {
    const acc_t* x = in + c * in_plane;
    acc_t* e_out = out + c * out_plane;
    const acc_t cf = static_cast<acc_t>(c);
    for (int64_t i = 0; i < len; ++i) {
      const acc_t shifted = x[i] - m[i];
      const acc_t e = exp_nonpositive(shifted);
      xt[i] += cls[i] == cf ? shifted : acc_t(0);
      s[i] += e;
      e_out[i] = e;
    }
  }
  for (int64_t i = 0; i < len; ++i) {
    const acc_t li = (log_positive(s[i]) - xt[i]) * w[i];
    l[i] = cls[i] >= 0 ? li : acc_t(0);
    s[i] = w[i] / s[i];  // reused as the softmax scale of the gradient
  }
  if (loss) {
    for (int64_t i = 0; i < len; ++i) loss[i] = l[i];
  }
  // Eight interleaved partial sums: a fixed order the compiler can vectorise.
  acc_t lanes[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 8 <= len; i += 8) {
    for (int k = 0; k < 8; ++k) lanes[k] += l[i + k];
  }
  for (; i < len; ++i) lanes[0] += l[i];
  ChunkResult<acc_t> result;
  result.loss = ((lanes[0] + lanes[4]) + (lanes[1] + lanes[5])) + ((lanes[2] + lanes[6]) + (lanes[3] + lanes[7]));
  result.kept = kept;
  result.bad_target = bad_target;
  result.bad_weight = bad_weight;
  if (!with_grad) return result;
  for (int64_t c = 0; c < C; ++c) {
    acc_t* g = out + c * out_plane;
    const acc_t cf = static_cast<acc_t>(c);
    for (int64_t i = 0; i < len; ++i) g[i] = g[i] * s[i] - (cls[i] == cf ? w[i] : acc_t(0));
  }
  return result;
}

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
__attribute__((target_clones("avx512f", "avx2,fma", "default")))
#endif
ChunkResult<float> chunk_math_f32(const float* in, int64_t in_plane, float* out, int64_t out_plane, int64_t C,
                                  int64_t len, const float* code, const float* weight, float* loss, bool with_grad) {
  return chunk_math<float>(in, in_plane, out, out_plane, C, len, code, weight, loss, with_grad);
}

ChunkResult<double> chunk_math_f64(const double* in, int64_t in_plane, double* out, int64_t out_plane, int64_t C,
                                   int64_t len, const double* code, const double* weight, double* loss, bool with_grad) {
  return chunk_math<double>(in, in_plane, out, out_plane, C, len, code, weight, loss, with_grad);
}

inline ChunkResult<float> run_chunk_math(const float* in, int64_t ip, float* out, int64_t op, int64_t C, int64_t len,
                                         const float* code, const float* w, float* loss, bool g) {
  return chunk_math_f32(in, ip, out, op, C, len, code, w, loss, g);
}
inline ChunkResult<double> run_chunk_math(const double* in, int64_t ip, double* out, int64_t op, int64_t C, int64_t len,
                                          const double* code, const double* w, double* loss, bool g) {
  return chunk_math_f64(in, ip, out, op, C, len, code, w, loss, g);
}

struct BlockResult {
  double loss = 0;
  int64_t count = 0;             // non-ignored pixels
  int64_t bad_target = kNone;    // flat pixel index of the first invalid target
  int64_t bad_weight = kNone;    // ... of the first negative, NaN or infinite weight
};

// One image's pixels [p_begin, p_end), chunk by chunk. Logits (n, c, p) sit at x + n*C*HW + c*plane + p*step;
// the gradient g (may be null) has the same layout. target, weight and loss are flat [N*H*W].
template <typename scalar_t, typename target_t>
void run_block(const scalar_t* x, scalar_t* g, const target_t* target,
               const std::conditional_t<std::is_same_v<scalar_t, double>, double, float>* weight,
               std::conditional_t<std::is_same_v<scalar_t, double>, double, float>* loss_out, int64_t n,
               int64_t p_begin, int64_t p_end, int64_t C, int64_t HW, bool channels_last, int64_t ignore_index,
               BlockResult& result) {
  using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
  // fp32/fp64 NCHW: the math reads the logit planes and writes the gradient planes in place.
  const bool direct = std::is_same_v<scalar_t, acc_t> && !channels_last;
  const int64_t plane = channels_last ? 1 : HW, step = channels_last ? C : 1;
  std::vector<acc_t> buf(C * kChunk);
  acc_t code[kChunk];
  double block_loss = 0;
  for (int64_t p0 = p_begin; p0 < p_end; p0 += kChunk) {
    const int64_t len = std::min(kChunk, p_end - p0);
    const int64_t base = n * C * HW + p0 * step;
    const int64_t flat = n * HW + p0;  // pixel index in target, weight and per-pixel loss
    const target_t* t = target + flat;
    for (int64_t i = 0; i < len; ++i) {
      const int64_t ti = static_cast<int64_t>(t[i]);
      code[i] = ti == ignore_index ? acc_t(kIgnored) : ti < 0 ? acc_t(kNegative) : static_cast<acc_t>(ti);
    }
    const acc_t* in;
    acc_t* out;
    int64_t in_plane, out_plane;
    if (direct) {
      in = reinterpret_cast<const acc_t*>(x) + base;
      in_plane = HW;
      out = g ? reinterpret_cast<acc_t*>(g) + base : buf.data();
      out_plane = g ? HW : kChunk;
    } else {  // gather the chunk into buf as acc_t, channel-major
      for (int64_t c = 0; c < C; ++c) {
        const scalar_t* src = x + base + c * plane;
        acc_t* dst = buf.data() + c * kChunk;
        for (int64_t i = 0; i < len; ++i) dst[i] = static_cast<acc_t>(src[i * step]);
      }
      in = out = buf.data();
      in_plane = out_plane = kChunk;
    }
    const ChunkResult<acc_t> r = run_chunk_math(in, in_plane, out, out_plane, C, len, code,
                                                weight ? weight + flat : nullptr, loss_out ? loss_out + flat : nullptr,
                                                g != nullptr);
    if (g && !direct) {
      for (int64_t c = 0; c < C; ++c) {
        const acc_t* src = buf.data() + c * kChunk;
        scalar_t* dst = g + base + c * plane;
        for (int64_t i = 0; i < len; ++i) dst[i * step] = static_cast<scalar_t>(src[i]);
      }
    }
    block_loss += r.loss;
    result.count += r.kept;
    if (r.bad_target && result.bad_target == kNone) {  // rare: find the exact pixel
      for (int64_t i = 0; i < len; ++i) {
        const int64_t ti = static_cast<int64_t>(t[i]);
        if (ti != ignore_index && (ti < 0 || ti >= C)) { result.bad_target = flat + i; break; }
      }
    }
    if (r.bad_weight && result.bad_weight == kNone) {
      for (int64_t i = 0; i < len; ++i) {
        const acc_t wi = weight[flat + i];
        if (!(wi >= 0 && wi <= std::numeric_limits<acc_t>::max())) { result.bad_weight = flat + i; break; }
      }
    }
  }
  result.loss = block_loss;
}

template <typename scalar_t, typename target_t>
void run(const at::Tensor& logits, bool channels_last, const at::Tensor& target, const c10::optional<at::Tensor>& weight,
         int64_t ignore_index, bool per_pixel, at::Tensor& loss, at::Tensor* grad, std::vector<BlockResult>& blocks) {
  using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
  const int64_t N = logits.size(0), C = logits.size(1), HW = logits.size(2) * logits.size(3);
  const int64_t blocks_per_image = (HW + kBlock - 1) / kBlock;
  const scalar_t* x = logits.const_data_ptr<scalar_t>();
  scalar_t* g = grad ? grad->data_ptr<scalar_t>() : nullptr;
  acc_t* loss_out = per_pixel ? loss.data_ptr<acc_t>() : nullptr;
  const target_t* t = target.const_data_ptr<target_t>();
  const acc_t* w = weight ? weight->const_data_ptr<acc_t>() : nullptr;
  // 16 blocks (64k pixels, ~0.2 ms) per thread at least: waking threads for less costs more than it saves.
  at::parallel_for(0, N * blocks_per_image, 16, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const int64_t n = b / blocks_per_image, p_begin = (b % blocks_per_image) * kBlock;
      run_block<scalar_t, target_t>(x, g, t, w, loss_out, n, p_begin, std::min(HW, p_begin + kBlock), C, HW,
                                    channels_last, ignore_index, blocks[b]);
    }
  });
}

// reduction follows at::Reduction: 0 none (per-pixel loss), 1 mean over non-ignored pixels, 2 sum.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> weighted_cross_entropy_cpu(
    const at::Tensor& logits_in, const at::Tensor& target_in, const c10::optional<at::Tensor>& weight_in,
    int64_t reduction, int64_t ignore_index, bool compute_grad) {
  weighted_cross_entropy::check_args(logits_in, target_in, weight_in, reduction);
  const int64_t N = logits_in.size(0), C = logits_in.size(1), H = logits_in.size(2), W = logits_in.size(3);
  const auto inputs = weighted_cross_entropy::dense_inputs(logits_in, target_in, weight_in);
  const at::Tensor& logits = inputs.logits;
  const at::Tensor& target = inputs.target;
  const c10::optional<at::Tensor>& weight = inputs.weight;
  const bool channels_last = inputs.channels_last;
  const auto acc_type = inputs.acc_type;
  const bool per_pixel = reduction == 0;
  at::Tensor loss = per_pixel ? at::empty({N, H, W}, logits.options().dtype(acc_type))
                              : at::empty({}, logits.options().dtype(acc_type));
  at::Tensor grad = compute_grad ? at::empty(logits.sizes(), logits.options().memory_format(memory_format_of(logits)))
                                 : at::empty({0}, logits.options());
  const int64_t blocks_per_image = (H * W + kBlock - 1) / kBlock;
  std::vector<BlockResult> blocks(N * blocks_per_image);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, logits.scalar_type(), "weighted_cross_entropy_cpu", [&] {
    at::Tensor* g = compute_grad ? &grad : nullptr;
    switch (target.scalar_type()) {
      case at::kByte: run<scalar_t, uint8_t>(logits, channels_last, target, weight, ignore_index, per_pixel, loss, g, blocks); break;
      case at::kInt: run<scalar_t, int32_t>(logits, channels_last, target, weight, ignore_index, per_pixel, loss, g, blocks); break;
      case at::kLong: run<scalar_t, int64_t>(logits, channels_last, target, weight, ignore_index, per_pixel, loss, g, blocks); break;
      default: TORCH_CHECK(false, "weighted_cross_entropy: target must be uint8, int32 or int64, got ", target.scalar_type());
    }
  });
  double total = 0;
  BlockResult all;
  for (const BlockResult& b : blocks) {  // block order: deterministic for any thread count
    total += b.loss;
    all.count += b.count;
    all.bad_target = std::min(all.bad_target, b.bad_target);
    all.bad_weight = std::min(all.bad_weight, b.bad_weight);
  }
  if (reduction == 1) total /= std::max<int64_t>(all.count, 1);
  if (!per_pixel) loss.fill_(total);
  at::Tensor first_bad = at::empty({2}, logits.options().dtype(at::kLong));
  first_bad[0] = all.bad_target == kNone ? -1 : all.bad_target;
  first_bad[1] = all.bad_weight == kNone ? -1 : all.bad_weight;
  return {loss, grad, at::scalar_tensor(all.count, logits.options().dtype(at::kLong)), first_bad};
}

}  // namespace

TORCH_LIBRARY_IMPL(unet_fast, CPU, m) {
  m.impl("weighted_cross_entropy", &weighted_cross_entropy_cpu);
}

}  // namespace unet_fast
