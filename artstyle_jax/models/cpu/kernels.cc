// XLA:CPU FFI handlers for ConvNeXt's depthwise convolution and LayerNorms, where XLA's own code
// generation does poorly on the CPU. Built at first use by kernels.py (-O3 -march=native;
// GCC's or Clang's vector extensions).
//
// Tensors are float32, row-major: x (B, H, W, C), taps (k, k, C), k odd, p = (k - 1) / 2,
// stride 1, 'SAME' zero padding (cross-correlation, as torch and flax):
//
//   ArtstyleDepthwiseConv:   y[b, h, w, c] = bias[c] + sum_{i, j} x[b, h + i - p, w + j - p, c] taps[i, j, c]
//   ArtstyleDepthwiseNorm:   the LayerNorm over c of that y (eps, two-pass variance, as flax):
//                            normed = (y - mean) * (rsqrt(var + eps) * scale) + shift
//   ArtstyleDepthwiseNormResiduals: normed, and for its gradient x_hat = (y - mean) * rsqrt(var + eps)
//                            (B, H, W, C) and rsqrt(var + eps) (B, H, W)
//   ArtstyleDepthwiseKernelGrad: grad[i, j, c] = sum_{b, h, w} x[b, h + i - p, w + j - p, c] grad_out[b, h, w, c]
//   ArtstyleLayerNorm, ArtstyleLayerNormResiduals: the LayerNorm over the last axis of x (..., C)
//                            alone, with the same outputs as the two above
//
// The convolutions (k = 3, 5 or 7) compute a strip of output columns at a time with the strip's
// accumulators and one kernel row's taps in vector registers, from zero-padded copies of the k
// input rows (a ring of k rows per task, each input row copied once); the LayerNorm runs on the
// strip while it is in the L1 cache. Rows (b, h) are split into chunks that XLA's intra-op
// thread pool and the calling thread take in turn; each chunk's result does not depend on
// which thread ran it, so every call gives the same bits.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// Vectors of 16 and 8 floats (GCC's vector extensions: one AVX-512 or AVX register, or several
// narrower ones), loaded from and stored to any float address (memcpy: unaligned moves).
typedef float V16 __attribute__((vector_size(64)));
typedef float V8 __attribute__((vector_size(32)));

template <typename V>
inline V Load(const float* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}
template <typename V>
inline void Store(float* p, V v) {
  std::memcpy(p, &v, sizeof(V));
}

// Output columns per strip: its accumulators, one kernel row's taps and an input vector fit in
// the vector registers (32 with AVX-512, 16 with AVX2).
#ifdef __AVX512F__
constexpr int kStrip = 8;
#else
constexpr int kStrip = 4;
#endif

// Calls f(chunk) for every chunk in [0, chunks), on the calling thread and on XLA's intra-op
// thread pool, and returns when all have run. A pool task that starts after the work is gone
// finds no chunk left and touches nothing but the shared counters.
template <typename F>
void ParallelFor(ffi::ThreadPool& pool, int64_t chunks, const F& f) {
  struct Counters {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
  };
  auto counters = std::make_shared<Counters>();
  auto work = [counters, chunks, &f] {
    for (int64_t chunk; (chunk = counters->next.fetch_add(1)) < chunks;) {
      f(chunk);
      counters->done.fetch_add(1, std::memory_order_release);
    }
  };
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), chunks) - 1;
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule(decltype(work)(work));
  work();
  while (counters->done.load(std::memory_order_acquire) < chunks) std::this_thread::yield();
}

// Chunks of rows for a problem of `work` multiply-adds: about one per 256k, at most 4 per thread.
int64_t Chunks(ffi::ThreadPool& pool, int64_t rows, int64_t work) {
  const int64_t threads = std::max<int64_t>(1, pool.num_threads());
  return std::max<int64_t>(1, std::min({rows, 4 * threads, work / (1 << 18) + 1}));
}

struct Shape {
  int64_t batch, height, width, channels;
};

// Zero-padded copies of the k input rows that one output row reads, for one task.
class PaddedRows {
 public:
  PaddedRows(const float* x, const Shape& s, int k)
      : x_(x), s_(s), k_(k), pad_((k - 1) / 2),
        // p columns on each side, and a strip's worth more on the right for the last strip.
        row_floats_((s.width + 2 * pad_ + kStrip) * s.channels),
        data_(k * row_floats_, 0.0f), tags_(k, -1) {}

  // The padded row hx of image b (its column w + p holds x[b, hx, w]), or nullptr outside.
  const float* Row(int64_t b, int64_t hx) {
    if (hx < 0 || hx >= s_.height) return nullptr;
    const int64_t slot = hx % k_, tag = b * s_.height + hx;
    float* row = data_.data() + slot * row_floats_;
    if (tags_[slot] != tag) {
      std::memcpy(row + pad_ * s_.channels, x_ + tag * s_.width * s_.channels,
                  sizeof(float) * s_.width * s_.channels);
      tags_[slot] = tag;
    }
    return row;
  }

 private:
  const float* x_;
  Shape s_;
  int k_, pad_;
  int64_t row_floats_;
  std::vector<float> data_;
  std::vector<int64_t> tags_;
};

// y[w, c .. c + lanes(V)) for the strip's kStrip columns starting at w0: sum over taps, then bias.
template <int K, typename V>
inline void ConvBlock(const float* const* rows, const float* taps, const float* bias, int64_t channels,
                      int64_t c, int64_t w0, float* strip) {
  // Fully unrolled, so that acc and tap stay in registers.
  V acc[kStrip] = {};
#pragma GCC unroll 8
  for (int i = 0; i < K; ++i) {
    if (rows[i] == nullptr) continue;
    V tap[K];
#pragma GCC unroll 8
    for (int j = 0; j < K; ++j) tap[j] = Load<V>(taps + (i * K + j) * channels + c);
    const float* in = rows[i] + w0 * channels + c;
#pragma GCC unroll 16
    for (int q = 0; q < kStrip + K - 1; ++q) {
      const V v = Load<V>(in + q * channels);
#pragma GCC unroll 8
      for (int j = 0; j < K; ++j) {
        const int w = q - j;
        if (w >= 0 && w < kStrip) acc[w] += v * tap[j];
      }
    }
  }
  const V b = Load<V>(bias + c);
#pragma GCC unroll 8
  for (int w = 0; w < kStrip; ++w) Store<V>(strip + w * channels + c, acc[w] + b);
}

// The convolution of output row (b, h) for columns [w0, w0 + kStrip), all channels, into strip
// (kStrip x C; the columns past the image's right edge are computed from zeros and ignored).
template <int K>
void ConvStrip(PaddedRows& padded, const float* taps, const float* bias, const Shape& s, int64_t b, int64_t h,
               int64_t w0, float* strip) {
  const float* rows[K];
  for (int i = 0; i < K; ++i) rows[i] = padded.Row(b, h + i - (K - 1) / 2);
  int64_t c = 0;
  for (; c + 16 <= s.channels; c += 16) ConvBlock<K, V16>(rows, taps, bias, s.channels, c, w0, strip);
  for (; c + 8 <= s.channels; c += 8) ConvBlock<K, V8>(rows, taps, bias, s.channels, c, w0, strip);
  for (; c < s.channels; ++c) ConvBlock<K, float>(rows, taps, bias, s.channels, c, w0, strip);
}

// Sum of n floats, 8 lanes at a time (the same order on every call).
inline float Sum(const float* p, int64_t n) {
  V8 acc = {};
  int64_t c = 0;
  for (; c + 8 <= n; c += 8) acc += Load<V8>(p + c);
  float total = 0.0f;
  for (int l = 0; l < 8; ++l) total += acc[l];
  for (; c < n; ++c) total += p[c];
  return total;
}

// Sum of the squares of n floats, in the same order as Sum.
inline float SumOfSquares(const float* p, int64_t n) {
  V8 acc = {};
  int64_t c = 0;
  for (; c + 8 <= n; c += 8) {
    const V8 v = Load<V8>(p + c);
    acc += v * v;
  }
  float total = 0.0f;
  for (int l = 0; l < 8; ++l) total += acc[l];
  for (; c < n; ++c) total += p[c] * p[c];
  return total;
}

// What each output row's strips are turned into.
struct ConvOutput {  // y itself.
  float* y;
  void operator()(const float* strip, int64_t token, int64_t channels, float* /*scratch*/) const {
    std::memcpy(y + token * channels, strip, sizeof(float) * channels);
  }
};

struct NormOutput {  // normed, and optionally x_hat and 1/std.
  const float* scale;
  const float* shift;
  float eps;
  float* normed;
  float* x_hat;    // nullptr: not wanted.
  float* inv_std;  // nullptr: not wanted.

  void operator()(const float* y, int64_t token, int64_t channels, float* centred) const {
    const float mean = Sum(y, channels) / static_cast<float>(channels);
    for (int64_t c = 0; c < channels; ++c) centred[c] = y[c] - mean;
    const float inv = 1.0f / std::sqrt(SumOfSquares(centred, channels) / static_cast<float>(channels) + eps);
    float* out = normed + token * channels;
    for (int64_t c = 0; c < channels; ++c) out[c] = centred[c] * (inv * scale[c]) + shift[c];
    if (x_hat != nullptr) {
      float* hat = x_hat + token * channels;
      for (int64_t c = 0; c < channels; ++c) hat[c] = centred[c] * inv;
    }
    if (inv_std != nullptr) inv_std[token] = inv;
  }
};

template <int K, typename Output>
void ConvRows(const float* x, const float* taps, const float* bias, const Shape& s, int64_t row_begin,
              int64_t row_end, const Output& output) {
  PaddedRows padded(x, s, K);
  std::vector<float> strip(kStrip * s.channels), scratch(s.channels);
  for (int64_t row = row_begin; row < row_end; ++row) {
    const int64_t b = row / s.height, h = row % s.height;
    for (int64_t w0 = 0; w0 < s.width; w0 += kStrip) {
      ConvStrip<K>(padded, taps, bias, s, b, h, w0, strip.data());
      const int64_t columns = std::min<int64_t>(kStrip, s.width - w0);
      for (int64_t w = 0; w < columns; ++w) {
        output(strip.data() + w * s.channels, row * s.width + w0 + w, s.channels, scratch.data());
      }
    }
  }
}

template <typename Output>
ffi::Error Convolve(ffi::ThreadPool& pool, const ffi::Buffer<ffi::F32>& x, const ffi::Buffer<ffi::F32>& taps,
                    const ffi::Buffer<ffi::F32>& bias, const Output& output, const char* name) {
  const auto dims = x.dimensions();
  const auto tap_dims = taps.dimensions();
  if (dims.size() != 4 || tap_dims.size() != 3 || tap_dims[0] != tap_dims[1] || tap_dims[2] != dims[3] ||
      bias.dimensions().size() != 1 || bias.dimensions()[0] != dims[3]) {
    return ffi::Error::InvalidArgument(std::string(name) + ": expected x (B, H, W, C), taps (k, k, C), bias (C,)");
  }
  const Shape s{dims[0], dims[1], dims[2], dims[3]};
  const int64_t k = tap_dims[0];
  const int64_t rows = s.batch * s.height;
  const int64_t chunks = Chunks(pool, rows, rows * s.width * s.channels * k * k);
  auto run = [&](auto kernel_size) {
    constexpr int K = decltype(kernel_size)::value;
    ParallelFor(pool, chunks, [&](int64_t chunk) {
      ConvRows<K>(x.typed_data(), taps.typed_data(), bias.typed_data(), s, rows * chunk / chunks,
                  rows * (chunk + 1) / chunks, output);
    });
  };
  switch (k) {
    case 3: run(std::integral_constant<int, 3>()); break;
    case 5: run(std::integral_constant<int, 5>()); break;
    case 7: run(std::integral_constant<int, 7>()); break;
    default:
      return ffi::Error::InvalidArgument(std::string(name) + ": kernel size must be 3, 5 or 7");
  }
  return ffi::Error::Success();
}

template <typename A, typename B>
bool SameDims(const A& da, const B& db) {
  return da.size() == db.size() && std::equal(da.begin(), da.end(), db.begin());
}

bool SameShape(const ffi::Buffer<ffi::F32>& a, ffi::Result<ffi::Buffer<ffi::F32>>& b) {
  return SameDims(a.dimensions(), b->dimensions());
}

// Whether x is (..., C) and scale and shift are (C,).
bool NormParamsFit(const ffi::Buffer<ffi::F32>& x, const ffi::Buffer<ffi::F32>& scale,
                   const ffi::Buffer<ffi::F32>& shift) {
  const auto dims = x.dimensions();
  return dims.size() > 0 && scale.dimensions().size() == 1 && scale.dimensions()[0] == dims.back() &&
         SameDims(scale.dimensions(), shift.dimensions());
}

// Whether normed and x_hat have x's shape and inv_std x's without its last axis.
bool ResidualsFit(const ffi::Buffer<ffi::F32>& x, ffi::Result<ffi::Buffer<ffi::F32>>& normed,
                  ffi::Result<ffi::Buffer<ffi::F32>>& x_hat, ffi::Result<ffi::Buffer<ffi::F32>>& inv_std) {
  const auto dims = x.dimensions();
  const auto inv_dims = inv_std->dimensions();
  return SameShape(x, normed) && SameShape(x, x_hat) && dims.size() > 0 && inv_dims.size() == dims.size() - 1 &&
         std::equal(inv_dims.begin(), inv_dims.end(), dims.begin());
}

ffi::Error DepthwiseConv(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> taps,
                         ffi::Buffer<ffi::F32> bias, ffi::ResultBuffer<ffi::F32> y) {
  if (!SameShape(x, y)) return ffi::Error::InvalidArgument("depthwise convolution: y must have x's shape");
  return Convolve(pool, x, taps, bias, ConvOutput{y->typed_data()}, "depthwise convolution");
}

ffi::Error DepthwiseNorm(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> taps,
                         ffi::Buffer<ffi::F32> bias, ffi::Buffer<ffi::F32> scale, ffi::Buffer<ffi::F32> shift,
                         ffi::ResultBuffer<ffi::F32> normed, float eps) {
  if (!SameShape(x, normed) || !NormParamsFit(x, scale, shift)) {
    return ffi::Error::InvalidArgument("depthwise norm: normed must have x's shape, scale and shift (C,)");
  }
  const NormOutput output{scale.typed_data(), shift.typed_data(), eps, normed->typed_data(), nullptr, nullptr};
  return Convolve(pool, x, taps, bias, output, "depthwise norm");
}

ffi::Error DepthwiseNormResiduals(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> taps,
                                  ffi::Buffer<ffi::F32> bias, ffi::Buffer<ffi::F32> scale,
                                  ffi::Buffer<ffi::F32> shift, ffi::ResultBuffer<ffi::F32> normed,
                                  ffi::ResultBuffer<ffi::F32> x_hat, ffi::ResultBuffer<ffi::F32> inv_std,
                                  float eps) {
  if (!ResidualsFit(x, normed, x_hat, inv_std) || !NormParamsFit(x, scale, shift)) {
    return ffi::Error::InvalidArgument(
        "depthwise norm: normed and x_hat must have x's shape, inv_std (B, H, W), scale and shift (C,)");
  }
  const NormOutput output{scale.typed_data(), shift.typed_data(), eps, normed->typed_data(), x_hat->typed_data(),
                          inv_std->typed_data()};
  return Convolve(pool, x, taps, bias, output, "depthwise norm");
}

ffi::Error LayerNormTokens(ffi::ThreadPool& pool, const ffi::Buffer<ffi::F32>& x, const ffi::Buffer<ffi::F32>& scale,
                           const ffi::Buffer<ffi::F32>& shift, const NormOutput& output) {
  if (!NormParamsFit(x, scale, shift)) {
    return ffi::Error::InvalidArgument("layer norm: expected x (..., C), scale and shift (C,)");
  }
  const int64_t channels = x.dimensions().back();
  const int64_t tokens = channels == 0 ? 0 : x.element_count() / channels;
  const int64_t chunks = Chunks(pool, tokens, tokens * channels * 8);
  ParallelFor(pool, chunks, [&](int64_t chunk) {
    std::vector<float> scratch(channels);
    for (int64_t token = tokens * chunk / chunks; token < tokens * (chunk + 1) / chunks; ++token) {
      output(x.typed_data() + token * channels, token, channels, scratch.data());
    }
  });
  return ffi::Error::Success();
}

ffi::Error LayerNorm(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> scale,
                     ffi::Buffer<ffi::F32> shift, ffi::ResultBuffer<ffi::F32> normed, float eps) {
  if (!SameShape(x, normed)) return ffi::Error::InvalidArgument("layer norm: normed must have x's shape");
  return LayerNormTokens(pool, x, scale, shift,
                         NormOutput{scale.typed_data(), shift.typed_data(), eps, normed->typed_data(), nullptr, nullptr});
}

ffi::Error LayerNormResiduals(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> scale,
                              ffi::Buffer<ffi::F32> shift, ffi::ResultBuffer<ffi::F32> normed,
                              ffi::ResultBuffer<ffi::F32> x_hat, ffi::ResultBuffer<ffi::F32> inv_std, float eps) {
  if (!ResidualsFit(x, normed, x_hat, inv_std)) {
    return ffi::Error::InvalidArgument("layer norm: normed and x_hat must have x's shape, inv_std x's without C");
  }
  return LayerNormTokens(pool, x, scale, shift,
                         NormOutput{scale.typed_data(), shift.typed_data(), eps, normed->typed_data(),
                                    x_hat->typed_data(), inv_std->typed_data()});
}

// The kernel gradient's contribution of rows [row_begin, row_end) of the flattened (B * H) grid,
// added to acc (k, k, C): per row, per tap, the sum over w runs in registers, 8 channels at a
// time, over one row of x and one of grad_out that stay in the L1 cache.
void AccumulateKernelGrad(const float* x, const float* grad_out, const Shape& s, int64_t k, int64_t row_begin,
                          int64_t row_end, float* acc) {
  constexpr int64_t kLanes = 8;
  const int64_t pad = (k - 1) / 2;
  const int64_t row_size = s.width * s.channels;
  for (int64_t row = row_begin; row < row_end; ++row) {
    const int64_t b = row / s.height, h = row % s.height;
    const float* g_row = grad_out + row * row_size;
    for (int64_t i = 0; i < k; ++i) {
      const int64_t hx = h + i - pad;
      if (hx < 0 || hx >= s.height) continue;
      const float* x_row = x + (b * s.height + hx) * row_size;
      for (int64_t j = 0; j < k; ++j) {
        // Output columns w whose input column w + j - pad lies inside the image.
        const int64_t w_begin = std::max<int64_t>(0, pad - j);
        const int64_t w_end = std::min<int64_t>(s.width, s.width + pad - j);
        float* out = acc + (i * k + j) * s.channels;
        int64_t c = 0;
        for (; c + kLanes <= s.channels; c += kLanes) {
          float sum[kLanes] = {};
          for (int64_t w = w_begin; w < w_end; ++w) {
            const float* xs = x_row + (w + j - pad) * s.channels + c;
            const float* gs = g_row + w * s.channels + c;
            for (int64_t l = 0; l < kLanes; ++l) sum[l] += xs[l] * gs[l];
          }
          for (int64_t l = 0; l < kLanes; ++l) out[c + l] += sum[l];
        }
        for (; c < s.channels; ++c) {
          float sum = 0.0f;
          for (int64_t w = w_begin; w < w_end; ++w) {
            sum += x_row[(w + j - pad) * s.channels + c] * g_row[w * s.channels + c];
          }
          out[c] += sum;
        }
      }
    }
  }
}

ffi::Error KernelGrad(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> grad_out,
                      ffi::ResultBuffer<ffi::F32> grad, int64_t k) {
  const auto dims = x.dimensions();
  if (dims.size() != 4 || !SameDims(dims, grad_out.dimensions())) {
    return ffi::Error::InvalidArgument("depthwise kernel gradient: x and grad_out must be (B, H, W, C), the same");
  }
  const Shape s{dims[0], dims[1], dims[2], dims[3]};
  const auto out_dims = grad->dimensions();
  if (k < 1 || k % 2 != 1 || out_dims.size() != 3 || out_dims[0] != k || out_dims[1] != k ||
      out_dims[2] != s.channels) {
    return ffi::Error::InvalidArgument("depthwise kernel gradient: grad must be (k, k, C) with k odd");
  }
  const int64_t rows = s.batch * s.height;
  const int64_t taps = k * k * s.channels;
  const int64_t chunks = Chunks(pool, rows, rows * s.width * s.channels * k * k);
  std::vector<std::vector<float>> partial(chunks, std::vector<float>(taps, 0.0f));
  ParallelFor(pool, chunks, [&](int64_t chunk) {
    AccumulateKernelGrad(x.typed_data(), grad_out.typed_data(), s, k, rows * chunk / chunks,
                         rows * (chunk + 1) / chunks, partial[chunk].data());
  });
  float* out = grad->typed_data();
  std::fill(out, out + taps, 0.0f);
  for (const auto& part : partial) {
    for (int64_t n = 0; n < taps; ++n) out[n] += part[n];
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(ArtstyleDepthwiseConv, DepthwiseConv,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(ArtstyleDepthwiseNorm, DepthwiseNorm,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("eps"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(ArtstyleDepthwiseNormResiduals, DepthwiseNormResiduals,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("eps"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(ArtstyleDepthwiseKernelGrad, KernelGrad,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("k"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(ArtstyleLayerNorm, LayerNorm,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("eps"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(ArtstyleLayerNormResiduals, LayerNormResiduals,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("eps"));
