// A convolution's kernel gradient as one CPU kernel (conv_grad='kernel', regnet_jax/conv.py).
//
//   dk[i, j, ci, co] = sum_{b, ho, wo} x[b, sh*ho + i - ph, sw*wo + j - pw, ci] * dy[b, ho, wo, co]
//
// x [B, H, W, Ci] (zero outside the image), dy [B, Ho, Wo, Co], dk [kh, kw, Ci, Co]; sh, sw are
// the strides, ph, pw the low paddings (the high ones follow from the shapes and may be
// negative); NHWC/HWIO, float32, C-contiguous. XLA:CPU computes this as a convolution that
// contracts the batch and transposes both operands for it. Here each thread takes whole images;
// for each tap and each block of dk (CB input x up to 64 output channels, held in vector
// registers) it adds the outer products x[.., ci] dy[.., co] of every pixel of the image (whose
// x and dy stay in the L2 cache across the blocks); the threads' partial sums are added at the
// end.
#include <algorithm>
#include <cstring>
#include <memory>
#include <utility>

#include "kernel_common.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using regnet::Vec;

namespace {

struct Shape {
  int64_t H, W, Ci, Ho, Wo, Co, kh, kw, sh, sw, ph, pw;
};

// The outputs o in [lo, hi) whose input stride * o + offset lies in [0, size).
std::pair<int64_t, int64_t> Inside(int64_t offset, int64_t stride, int64_t size,
                                   int64_t outputs) {
  auto first_at_least = [&](int64_t t) {  // smallest o with stride * o + offset >= t
    const int64_t d = t - offset;
    return d <= 0 ? 0 : (d + stride - 1) / stride;
  };
  return {first_at_least(0), std::min(outputs, first_at_least(size))};
}

// Adds tap (i, j)'s products of one image (x [H, W, Ci], dy [Ho, Wo, Co]) to dk's block of
// input channels [ci0, ci0 + CB) and output channels [co0, co0 + NV * L); dk is that tap's
// [Ci, Co].
template <int L, int NV, int CB>
void AccumulateBlock(const Shape& s, const float* __restrict x, const float* __restrict dy,
                     float* __restrict dk, int64_t i, int64_t j, int64_t ci0, int64_t co0) {
  using V = Vec<L>;
  const auto [ho_lo, ho_hi] = Inside(i - s.ph, s.sh, s.H, s.Ho);
  const auto [wo_lo, wo_hi] = Inside(j - s.pw, s.sw, s.W, s.Wo);
  typename V::T acc[CB][NV];
  for (int c = 0; c < CB; ++c)
    for (int v = 0; v < NV; ++v) acc[c][v] = V::Load(dk + (ci0 + c) * s.Co + co0 + L * v);
  for (int64_t ho = ho_lo; ho < ho_hi; ++ho) {
    const float* dyrow = dy + ho * s.Wo * s.Co + co0;
    const float* xrow = x + (s.sh * ho + i - s.ph) * s.W * s.Ci + ci0;
    for (int64_t wo = wo_lo; wo < wo_hi; ++wo) {
      typename V::T d[NV];
      for (int v = 0; v < NV; ++v) d[v] = V::Load(dyrow + wo * s.Co + L * v);
      const float* xp = xrow + (s.sw * wo + j - s.pw) * s.Ci;
      for (int c = 0; c < CB; ++c)
        for (int v = 0; v < NV; ++v) acc[c][v] += xp[c] * d[v];
    }
  }
  for (int c = 0; c < CB; ++c)
    for (int v = 0; v < NV; ++v) V::Store(dk + (ci0 + c) * s.Co + co0 + L * v, acc[c][v]);
}

// AccumulateBlock over every input channel of one tap, NV vectors of L output channels from
// co0: blocks of CB input channels (16 accumulators), then single ones.
template <int L, int NV>
void AccumulateChannels(const Shape& s, const float* x, const float* dy, float* dk, int64_t i,
                        int64_t j, int64_t co0) {
  constexpr int CB = 16 / NV;
  int64_t ci0 = 0;
  for (; ci0 + CB <= s.Ci; ci0 += CB) AccumulateBlock<L, NV, CB>(s, x, dy, dk, i, j, ci0, co0);
  for (; ci0 < s.Ci; ++ci0) AccumulateBlock<L, NV, 1>(s, x, dy, dk, i, j, ci0, co0);
}

// One image's contribution to dk [kh, kw, Ci, Co]: output channels in chunks of 64, 32 and 16
// (4, 2, 1 vectors), then single ones.
void AccumulateImage(const Shape& s, const float* x, const float* dy, float* dk) {
  for (int64_t i = 0; i < s.kh; ++i)
    for (int64_t j = 0; j < s.kw; ++j) {
      float* tap = dk + (i * s.kw + j) * s.Ci * s.Co;
      int64_t co0 = 0;
      for (; co0 + 64 <= s.Co; co0 += 64) AccumulateChannels<16, 4>(s, x, dy, tap, i, j, co0);
      if (co0 + 32 <= s.Co) {
        AccumulateChannels<16, 2>(s, x, dy, tap, i, j, co0);
        co0 += 32;
      }
      if (co0 + 16 <= s.Co) {
        AccumulateChannels<16, 1>(s, x, dy, tap, i, j, co0);
        co0 += 16;
      }
      for (; co0 < s.Co; ++co0) AccumulateChannels<1, 1>(s, x, dy, tap, i, j, co0);
    }
}

ffi::Error KernelGradImpl(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                          ffi::ResultBuffer<ffi::F32> dk, int64_t sh, int64_t sw, int64_t ph,
                          int64_t pw) {
  const auto xd = x.dimensions(), yd = dy.dimensions(), kd = dk->dimensions();
  const Shape s{xd[1], xd[2], xd[3], yd[1], yd[2], yd[3], kd[0], kd[1], sh, sw, ph, pw};
  const int64_t batch = xd[0], size = dk->element_count();
  // One partial dk per thread, at most ~256 MB of them (ImageNet widths on a many-core CPU).
  constexpr int64_t kPartialBytes = int64_t{256} << 20;
  const int64_t threads = std::max<int64_t>(
      1, std::min<int64_t>(regnet::NumThreads(batch),
                           kPartialBytes / (sizeof(float) * std::max<int64_t>(size, 1))));
  std::unique_ptr<float[]> partial(new float[threads * size]);  // each thread zeroes its own
  regnet::ParallelOverBatch(threads, [&](int64_t t, int64_t n) {
    float* acc = partial.get() + t * size;
    std::memset(acc, 0, sizeof(float) * size);
    for (int64_t b = t; b < batch; b += n)
      AccumulateImage(s, x.typed_data() + b * s.H * s.W * s.Ci,
                      dy.typed_data() + b * s.Ho * s.Wo * s.Co, acc);
  });
  // Sum the partials, each thread a slice; a small dk (CIFAR's) on the caller's thread alone.
  float* out = dk->typed_data();
  regnet::ParallelOverBatch(size * threads >= (1 << 20) ? threads : 1, [&](int64_t t, int64_t n) {
    for (int64_t e = size * t / n; e < size * (t + 1) / n; ++e) {
      float sum = 0.f;
      for (int64_t p = 0; p < threads; ++p) sum += partial[p * size + e];
      out[e] = sum;
    }
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(RegnetConvKernelGrad, KernelGradImpl,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()  // x
                                  .Arg<ffi::Buffer<ffi::F32>>()  // dy
                                  .Ret<ffi::Buffer<ffi::F32>>()  // dk
                                  .Attr<int64_t>("sh")
                                  .Attr<int64_t>("sw")
                                  .Attr<int64_t>("ph")
                                  .Attr<int64_t>("pw"));
