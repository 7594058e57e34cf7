// The kernel gradient of a stride-1 'SAME' depthwise convolution, as an XLA:CPU FFI handler.
//
//   grad[i, j, c] = sum_{b, h, w} x[b, h + i - p, w + j - p, c] * grad_out[b, h, w, c],
//   p = (k - 1) / 2, x zero outside the image.
//
// x and grad_out are (B, H, W, C) float32, row-major; grad is (k, k, C) float32. The rows
// (b, h) are split between threads, each summing into its own (k, k, C) buffer; per row, per
// tap, the sum over w runs in registers, 8 channels at a time, over one row of x and one of
// grad_out that stay in the L1 cache. Built at first use by cpu_kernels.py.
#include <sched.h>

#include <algorithm>
#include <cstdint>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kLanes = 8;

// Adds the contribution of rows [row_begin, row_end) of the flattened (B * H) grid to acc.
void AccumulateRows(const float* x, const float* grad_out, int64_t height, int64_t width, int64_t channels,
                    int64_t k, int64_t row_begin, int64_t row_end, float* acc) {
  const int64_t pad = (k - 1) / 2;
  const int64_t row_size = width * channels;
  for (int64_t row = row_begin; row < row_end; ++row) {
    const int64_t b = row / height, h = row % height;
    const float* g_row = grad_out + row * row_size;
    for (int64_t i = 0; i < k; ++i) {
      const int64_t hx = h + i - pad;
      if (hx < 0 || hx >= height) continue;
      const float* x_row = x + (b * height + hx) * row_size;
      for (int64_t j = 0; j < k; ++j) {
        // Output columns w whose input column w + j - pad lies inside the image.
        const int64_t w_begin = std::max<int64_t>(0, pad - j);
        const int64_t w_end = std::min<int64_t>(width, width + pad - j);
        float* out = acc + (i * k + j) * channels;
        int64_t c = 0;
        for (; c + kLanes <= channels; c += kLanes) {
          float sum[kLanes] = {};
          for (int64_t w = w_begin; w < w_end; ++w) {
            const float* xs = x_row + (w + j - pad) * channels + c;
            const float* gs = g_row + w * channels + c;
            for (int64_t l = 0; l < kLanes; ++l) sum[l] += xs[l] * gs[l];
          }
          for (int64_t l = 0; l < kLanes; ++l) out[c + l] += sum[l];
        }
        for (; c < channels; ++c) {
          float sum = 0.0f;
          for (int64_t w = w_begin; w < w_end; ++w) {
            sum += x_row[(w + j - pad) * channels + c] * g_row[w * channels + c];
          }
          out[c] += sum;
        }
      }
    }
  }
}

int64_t AvailableCores() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
  return std::max(1u, std::thread::hardware_concurrency());
}

ffi::Error KernelGrad(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> grad_out, ffi::ResultBuffer<ffi::F32> grad,
                      int64_t k) {
  const auto dims = x.dimensions();
  if (dims.size() != 4 || grad_out.dimensions().size() != 4) {
    return ffi::Error::InvalidArgument("depthwise kernel gradient: x and grad_out must be (B, H, W, C)");
  }
  for (int d = 0; d < 4; ++d) {
    if (grad_out.dimensions()[d] != dims[d]) {
      return ffi::Error::InvalidArgument("depthwise kernel gradient: x and grad_out differ in shape");
    }
  }
  const int64_t batch = dims[0], height = dims[1], width = dims[2], channels = dims[3];
  const auto out_dims = grad->dimensions();
  if (k < 1 || k % 2 != 1 || out_dims.size() != 3 || out_dims[0] != k || out_dims[1] != k ||
      out_dims[2] != channels) {
    return ffi::Error::InvalidArgument("depthwise kernel gradient: grad must be (k, k, C) with k odd");
  }
  const int64_t rows = batch * height;
  const int64_t taps = k * k * channels;
  // Fewer threads than cores for small problems: a thread is worth it from ~1M MACs.
  const int64_t work = rows * width * channels * k * k;
  const int64_t threads = std::max<int64_t>(1, std::min({AvailableCores(), rows, work / (1 << 20) + 1}));
  std::vector<std::vector<float>> partial(threads, std::vector<float>(taps, 0.0f));
  std::vector<std::thread> workers;
  for (int64_t t = 0; t < threads; ++t) {
    const int64_t begin = rows * t / threads, end = rows * (t + 1) / threads;
    auto run = [&, t, begin, end] {
      AccumulateRows(x.typed_data(), grad_out.typed_data(), height, width, channels, k, begin, end,
                     partial[t].data());
    };
    if (t + 1 == threads) {
      run();
    } else {
      workers.emplace_back(run);
    }
  }
  for (auto& worker : workers) worker.join();
  float* out = grad->typed_data();
  std::fill(out, out + taps, 0.0f);
  for (const auto& part : partial) {
    for (int64_t n = 0; n < taps; ++n) out[n] += part[n];
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(ArtstyleDepthwiseKernelGrad, KernelGrad,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("k"));
