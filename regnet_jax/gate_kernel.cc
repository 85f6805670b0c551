// The light-weight gate convolution of regnet_jax/cells.py as one CPU kernel (cell_impl='kernel').
//
// Forward:  y[b,h,x,c] = bias[c] + sum_{i,j} k[i,j,c] * m[b, h+i-1, x+j-1, c] (zero-padded),
//           m[.., g*N + n] = w[0, g*N+n] * p[.., n] + w[1, g*N+n] * q[.., n] (gate g's pair mix).
// Backward: dm = the same taps over dy with the kernel flipped; dk, dbias, dw reduced over the
//           batch (one accumulator per thread); dp[.., n] = sum_g w[0, g*N+n] dm[.., g*N+n], and
//           dq likewise.
// Shapes (NHWC, float32, C-contiguous): p, q [B, H, W, N]; w [2, C]; k [3, 3, C]; bias [C];
// y, dy [B, H, W, C] with C = G*N. The mix is recomputed row by row into a three-row ring
// buffer, so each pass reads p, q (and dy) once and writes y (or dp, dq) once (measured against
// XLA's fusions in docs/performance.md). Images are split over the machine's hardware threads.
#include <sched.h>

#include <algorithm>
#include <cstring>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using F32Buffer = ffi::Buffer<ffi::F32>;
using F32Result = ffi::ResultBuffer<ffi::F32>;

namespace {

struct Shape {
  int64_t B, H, W, N, C;
};

// Pair mix of input row r into dst[(W + 2) * C] (zero columns at both ends; zeros if r is
// outside the image): dst[x + 1][g * N + n] = w0[g*N+n] * p[r, x, n] + w1[g*N+n] * q[r, x, n].
void MixRow(const Shape& s, const float* p, const float* q, const float* w0, const float* w1,
            int64_t r, float* dst) {
  const int64_t C = s.C, N = s.N;
  if (r < 0 || r >= s.H) {
    std::memset(dst, 0, sizeof(float) * (s.W + 2) * C);
    return;
  }
  std::memset(dst, 0, sizeof(float) * C);
  std::memset(dst + (s.W + 1) * C, 0, sizeof(float) * C);
  for (int64_t x = 0; x < s.W; ++x) {
    const float* __restrict pr = p + (r * s.W + x) * N;
    const float* __restrict qr = q + (r * s.W + x) * N;
    float* __restrict d = dst + (x + 1) * C;
    for (int64_t g = 0; g < C / N; ++g) {
      const float* __restrict a = w0 + g * N;
      const float* __restrict b = w1 + g * N;
      float* __restrict dg = d + g * N;
      for (int64_t n = 0; n < N; ++n) dg[n] = a[n] * pr[n] + b[n] * qr[n];
    }
  }
}

// Eight channels in one vector register (GCC/Clang vector extension); a remainder of C % 8
// channels takes the scalar path of the same loops (Lanes = 1).
typedef float V8 __attribute__((vector_size(32)));

template <int Lanes>
struct Vec;
template <>
struct Vec<8> {
  using T = V8;
  static T Load(const float* p) { T v; std::memcpy(&v, p, sizeof(T)); return v; }
  static void Store(float* p, T v) { std::memcpy(p, &v, sizeof(T)); }
  static T Zero() { return T{}; }
};
template <>
struct Vec<1> {
  using T = float;
  static T Load(const float* p) { return *p; }
  static void Store(float* p, T v) { *p = v; }
  static T Zero() { return 0.f; }
};

// Calls fn.template operator()<Lanes>(c) for channel blocks c of 8, then single channels.
template <typename F>
void ForChannelBlocks(int64_t C, F&& fn) {
  int64_t c = 0;
  for (; c + 8 <= C; c += 8) fn.template operator()<8>(c);
  for (; c < C; ++c) fn.template operator()<1>(c);
}

template <typename F>
void ParallelOverBatch(int64_t batch, int64_t threads, F fn) {
  std::vector<std::thread> pool;
  for (int64_t t = 1; t < threads; ++t) pool.emplace_back(fn, t, threads);
  fn(0, threads);
  for (auto& th : pool) th.join();
}

// The CPUs this process may run on (taskset, cgroup cpusets), else the hardware's count.
int64_t NumThreads(int64_t batch) {
  cpu_set_t cpus;
  const int64_t available = sched_getaffinity(0, sizeof(cpus), &cpus) == 0
                                ? CPU_COUNT(&cpus) : std::thread::hardware_concurrency();
  return std::max<int64_t>(1, std::min<int64_t>(batch, available));
}

// Calls fn(b, h, rows) for every row h of thread t's images b (b = t, t + threads, ...), where
// rows[i] is the zero-padded pair mix of input row h + i - 1, (W + 2) * C floats (MixRow).
template <typename F>
void ForEachMixedRow(const Shape& s, const float* p, const float* q, const float* w0,
                     const float* w1, int64_t t, int64_t threads, F&& fn) {
  std::vector<float> buf(3 * (s.W + 2) * s.C);
  auto row = [&](int64_t r) { return buf.data() + ((r + 3) % 3) * (s.W + 2) * s.C; };
  for (int64_t b = t; b < s.B; b += threads) {
    const float* pb = p + b * s.H * s.W * s.N;
    const float* qb = q + b * s.H * s.W * s.N;
    MixRow(s, pb, qb, w0, w1, -1, row(-1));
    MixRow(s, pb, qb, w0, w1, 0, row(0));
    for (int64_t h = 0; h < s.H; ++h) {
      MixRow(s, pb, qb, w0, w1, h + 1, row(h + 1));
      const float* rows[3] = {row(h - 1), row(h), row(h + 1)};
      fn(b, h, rows);
    }
  }
}

ffi::Error GateFwdImpl(F32Buffer p, F32Buffer q, F32Buffer w, F32Buffer k, F32Buffer bias,
                       F32Result y) {
  auto d = p.dimensions();
  Shape s{d[0], d[1], d[2], d[3], bias.dimensions()[0]};
  const int64_t C = s.C, W = s.W;
  const float* w0 = w.typed_data();
  const float* w1 = w0 + C;
  const float* kk = k.typed_data();
  const float* bb = bias.typed_data();
  ParallelOverBatch(s.B, NumThreads(s.B), [&](int64_t t, int64_t threads) {
    ForEachMixedRow(s, p.typed_data(), q.typed_data(), w0, w1, t, threads,
                    [&](int64_t b, int64_t h, const float* const* rows) {
      float* yh = y->typed_data() + (b * s.H + h) * W * C;
      for (int64_t x = 0; x < W; ++x) {
        ForChannelBlocks(C, [&]<int L>(int64_t c) {
          using V = Vec<L>;
          typename V::T acc = V::Load(bb + c);
          for (int i = 0; i < 3; ++i)
            for (int j = 0; j < 3; ++j)
              acc += V::Load(kk + (i * 3 + j) * C + c) * V::Load(rows[i] + (x + j) * C + c);
          V::Store(yh + x * C + c, acc);
        });
      }
    });
  });
  return ffi::Error::Success();
}

ffi::Error GateBwdImpl(F32Buffer p, F32Buffer q, F32Buffer w, F32Buffer k, F32Buffer dy,
                       F32Result dp, F32Result dq, F32Result dw, F32Result dk, F32Result dbias) {
  auto d = p.dimensions();
  Shape s{d[0], d[1], d[2], d[3], dy.dimensions()[3]};
  const int64_t C = s.C, W = s.W, N = s.N, G = C / N;
  const float* w0 = w.typed_data();
  const float* w1 = w0 + C;
  const float* kk = k.typed_data();
  const int64_t num_threads = NumThreads(s.B);
  std::vector<float> acc(num_threads * 12 * C, 0.f);  // per thread: dk (9C), dw0, dw1, dbias
  ParallelOverBatch(s.B, num_threads, [&](int64_t t, int64_t threads) {
    std::vector<float> dm(W * C);
    float* a = acc.data() + t * 12 * C;
    float *adk = a, *adw0 = a + 9 * C, *adw1 = a + 10 * C, *adb = a + 11 * C;
    ForEachMixedRow(s, p.typed_data(), q.typed_data(), w0, w1, t, threads,
                    [&](int64_t b, int64_t h, const float* const* rows) {
      const int64_t image = b * s.H * W;
      const float* pb = p.typed_data() + image * N;
      const float* qb = q.typed_data() + image * N;
      const float* dyb = dy.typed_data() + image * C;
      float* dpb = dp->typed_data() + image * N;
      float* dqb = dq->typed_data() + image * N;
      const float* g = dyb + h * W * C;
      // dk[i, j] += sum_x m[h+i-1, x+j-1] * dy[h, x]; dbias += sum_x dy[h, x]: the ten sums
      // of a channel block stay in registers along the row.
      ForChannelBlocks(C, [&]<int L>(int64_t c) {
        using V = Vec<L>;
        typename V::T sums[10];
        for (auto& v : sums) v = V::Zero();
        for (int64_t x = 0; x < W; ++x) {
          typename V::T gx = V::Load(g + x * C + c);
          sums[9] += gx;
          for (int i = 0; i < 3; ++i)
            for (int j = 0; j < 3; ++j)
              sums[i * 3 + j] += V::Load(rows[i] + (x + j) * C + c) * gx;
        }
        for (int ij = 0; ij < 9; ++ij)
          V::Store(adk + ij * C + c, V::Load(adk + ij * C + c) + sums[ij]);
        V::Store(adb + c, V::Load(adb + c) + sums[9]);
      });
      // dm[x] of input row h: sum_{i,j} k[i,j] * dy[h-i+1, x-j+1] over the rows and columns
      // inside the image.
      for (int64_t x = 0; x < W; ++x) {
        ForChannelBlocks(C, [&]<int L>(int64_t c) {
          using V = Vec<L>;
          typename V::T sum = V::Zero();
          for (int i = 0; i < 3; ++i) {
            const int64_t ho = h - i + 1;
            if (ho < 0 || ho >= s.H) continue;
            for (int j = 0; j < 3; ++j) {
              const int64_t xo = x - j + 1;
              if (xo < 0 || xo >= W) continue;
              sum += V::Load(kk + (i * 3 + j) * C + c) * V::Load(dyb + (ho * W + xo) * C + c);
            }
          }
          V::Store(dm.data() + x * C + c, sum);
        });
      }
      // Through the pair mix.
      for (int64_t x = 0; x < W; ++x) {
        const float* __restrict pr = pb + (h * W + x) * N;
        const float* __restrict qr = qb + (h * W + x) * N;
        float* __restrict dpr = dpb + (h * W + x) * N;
        float* __restrict dqr = dqb + (h * W + x) * N;
        const float* m = dm.data() + x * C;
        std::memset(dpr, 0, sizeof(float) * N);
        std::memset(dqr, 0, sizeof(float) * N);
        for (int64_t gg = 0; gg < G; ++gg) {
          const float* __restrict mg = m + gg * N;
          const float* __restrict a0 = w0 + gg * N;
          const float* __restrict a1 = w1 + gg * N;
          float* __restrict e0 = adw0 + gg * N;
          float* __restrict e1 = adw1 + gg * N;
          for (int64_t n = 0; n < N; ++n) {
            dpr[n] += a0[n] * mg[n];
            dqr[n] += a1[n] * mg[n];
            e0[n] += pr[n] * mg[n];
            e1[n] += qr[n] * mg[n];
          }
        }
      }
    });
  });
  float* odk = dk->typed_data();
  float* odw = dw->typed_data();
  float* odb = dbias->typed_data();
  std::fill(odk, odk + 9 * C, 0.f);
  std::fill(odw, odw + 2 * C, 0.f);
  std::fill(odb, odb + C, 0.f);
  for (int64_t t = 0; t < num_threads; ++t) {
    const float* a = acc.data() + t * 12 * C;
    for (int64_t c = 0; c < 9 * C; ++c) odk[c] += a[c];
    for (int64_t c = 0; c < 2 * C; ++c) odw[c] += a[9 * C + c];
    for (int64_t c = 0; c < C; ++c) odb[c] += a[11 * C + c];
  }
  return ffi::Error::Success();
}

}  // namespace

// Both handlers take (p, q, w, k, bias or dy).
auto GateArgs() {
  return ffi::Ffi::Bind().Arg<F32Buffer>().Arg<F32Buffer>().Arg<F32Buffer>().Arg<F32Buffer>()
      .Arg<F32Buffer>();
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(RegnetGateFwd, GateFwdImpl, GateArgs().Ret<F32Buffer>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(RegnetGateBwd, GateBwdImpl,
                              GateArgs()  // dp, dq, dw, dk, dbias
                                  .Ret<F32Buffer>().Ret<F32Buffer>().Ret<F32Buffer>()
                                  .Ret<F32Buffer>().Ret<F32Buffer>());
