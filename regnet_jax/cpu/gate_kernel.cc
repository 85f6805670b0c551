// The light-weight gate convolution of regnet_jax/cells.py as one CPU kernel (cell_impl='kernel').
//
// Pairs:    the cell's inputs a, b [B, H, W, N] form N channel pairs (p_n, q_n): (a_n, b_n) with
//           the interleave pairing; channels (2n, 2n+1) of concat([a, b]) with the concat
//           pairing (the literal grouped 1x1), taken apart row by row inside the kernel.
// Forward:  y[b,h,x,c] = bias[c] + sum_{i,j} k[i,j,c] * m[b, h+i-1, x+j-1, c] (zero-padded),
//           m[.., g*N + n] = w[0, g*N+n] * p[.., n] + w[1, g*N+n] * q[.., n] (gate g's pair mix).
// Backward: dm = the same taps over dy with the kernel flipped; dk, dbias, dw reduced over the
//           batch (one accumulator per thread); dp[.., n] = sum_g w[0, g*N+n] dm[.., g*N+n], and
//           dq likewise, put back into da, db by the pairing.
// Updates:  a cell's gates go straight into its update (the ConvLSTM's four, z = (i, f, o, g):
//           c' = s(f) c + s(i) tanh(g), h' = s(o) tanh(c'); the ConvGRU's two convolutions), so
//           that neither the gates nor their gradients leave the kernel; the forward keeps the
//           activations the backward reads (e.g. the LSTM's s(i), s(f), s(o), tanh(g)), unless
//           given empty buffers for them (nothing will be differentiated).
// Shapes (NHWC, float32, C-contiguous): a, b [B, H, W, N]; w [2, C]; k [3, 3, C]; bias [C];
// y, dy [B, H, W, C] with C = G*N. The mix is recomputed row by row into a three-row ring
// buffer, so each pass reads a, b (and dy) once and writes y (or da, db) once (measured against
// XLA's fusions in docs/performance.md). Images are split over the machine's hardware threads.
#include <cstring>
#include <utility>
#include <vector>

#include "kernel_common.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using regnet::NumThreads;
using regnet::ParallelOverBatch;
using regnet::Vec;
using F32Buffer = ffi::Buffer<ffi::F32>;
using F32Result = ffi::ResultBuffer<ffi::F32>;

namespace {

struct Shape {
  int64_t B, H, W, N, C;
  bool concat;  // the pairing: channels (2n, 2n+1) of concat([a, b]), else (a_n, b_n)
};

// Moves one row's channels between a, b [W, N] and their concat-paired members p, q [W, N]
// (pair n is channels (2n, 2n + 1) of concat([a, b]); with an odd N one pair is (a's last, b's
// first)): into p, q if ToPairs (A = const float, P = float), else back into a, b.
template <bool ToPairs, typename A, typename P>
void ConcatPairs(const Shape& s, A* a, A* b, P* p, P* q) {
  const int64_t N = s.N, half = N / 2, odd = N % 2;
  if (N % 16 == 0) {
    // p, q are the even and odd channels of concat([a, b]): 16 pairs at a time, two vectors of
    // the concatenation (each inside a or b) against one of p and one of q.
    using V = Vec<16>;
    for (int64_t x = 0; x < s.W; ++x) {
      A *ax = a + x * N, *bx = b + x * N;
      P *px = p + x * N, *qx = q + x * N;
      auto cat = [&](int64_t i) { return i < N ? ax + i : bx + (i - N); };
      for (int64_t k = 0; k < N; k += 16) {
        if constexpr (ToPairs) {
          const V::T lo = V::Load(cat(2 * k)), hi = V::Load(cat(2 * k + 16));
          V::Store(px + k, __builtin_shufflevector(lo, hi, 0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20,
                                                   22, 24, 26, 28, 30));
          V::Store(qx + k, __builtin_shufflevector(lo, hi, 1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21,
                                                   23, 25, 27, 29, 31));
        } else {
          const V::T pk = V::Load(px + k), qk = V::Load(qx + k);
          V::Store(cat(2 * k), __builtin_shufflevector(pk, qk, 0, 16, 1, 17, 2, 18, 3, 19, 4, 20,
                                                       5, 21, 6, 22, 7, 23));
          V::Store(cat(2 * k + 16), __builtin_shufflevector(pk, qk, 8, 24, 9, 25, 10, 26, 11, 27,
                                                            12, 28, 13, 29, 14, 30, 15, 31));
        }
      }
    }
    return;
  }
  auto move = [](auto& member, auto& channel) {
    if constexpr (ToPairs) member = channel; else channel = member;
  };
  for (int64_t x = 0; x < s.W; ++x) {
    A *ax = a + x * N, *bx = b + x * N;
    P *px = p + x * N, *qx = q + x * N;
    for (int64_t n = 0; n < half; ++n) {
      move(px[n], ax[2 * n]);
      move(qx[n], ax[2 * n + 1]);
    }
    if (odd) {
      move(px[half], ax[N - 1]);
      move(qx[half], bx[0]);
    }
    for (int64_t n = 0; n < half; ++n) {
      move(px[N - half + n], bx[odd + 2 * n]);
      move(qx[N - half + n], bx[odd + 2 * n + 1]);
    }
  }
}

// The pair members p, q [W, N] of one row of a, b [W, N]: a and b themselves with the
// interleave pairing, else taken apart into buf [2, W, N].
std::pair<const float*, const float*> PairRow(const Shape& s, const float* a, const float* b,
                                              float* buf) {
  if (!s.concat) return {a, b};
  ConcatPairs<true>(s, a, b, buf, buf + s.W * s.N);
  return {buf, buf + s.W * s.N};
}

// PairRow's inverse for gradients: dp, dq [W, N] of one row into da, db [W, N].
void UnpairRow(const Shape& s, const float* dp, const float* dq, float* da, float* db) {
  if (s.concat) {
    ConcatPairs<false>(s, da, db, dp, dq);
    return;
  }
  std::memcpy(da, dp, sizeof(float) * s.W * s.N);
  std::memcpy(db, dq, sizeof(float) * s.W * s.N);
}

// Calls fn.template operator()<Lanes>(c) for channel blocks c of 16, then 8, then single ones.
template <typename F>
void ForChannelBlocks(int64_t C, F&& fn) {
  int64_t c = 0;
  for (; c + 16 <= C; c += 16) fn.template operator()<16>(c);
  for (; c + 8 <= C; c += 8) fn.template operator()<8>(c);
  for (; c < C; ++c) fn.template operator()<1>(c);
}

// Pair mix of input row r of one image's a, b [H, W, N] into dst[(W + 2) * C] (zero columns
// at both ends; zeros if r is outside the image):
// dst[x + 1][g * N + n] = w0[g*N+n] * p[r, x, n] + w1[g*N+n] * q[r, x, n]; buf as PairRow's.
void MixRow(const Shape& s, const float* a, const float* b, const float* w0, const float* w1,
            int64_t r, float* buf, float* dst) {
  const int64_t C = s.C, N = s.N;
  if (r < 0 || r >= s.H) {
    std::memset(dst, 0, sizeof(float) * (s.W + 2) * C);
    return;
  }
  std::memset(dst, 0, sizeof(float) * C);
  std::memset(dst + (s.W + 1) * C, 0, sizeof(float) * C);
  auto [p, q] = PairRow(s, a + r * s.W * N, b + r * s.W * N, buf);
  for (int64_t x = 0; x < s.W; ++x) {
    float* d = dst + (x + 1) * C;
    ForChannelBlocks(N, [&]<int L>(int64_t n) {
      using V = Vec<L>;
      const typename V::T pn = V::Load(p + x * N + n), qn = V::Load(q + x * N + n);
      for (int64_t gn = n; gn < C; gn += N)
        V::Store(d + gn, V::Load(w0 + gn) * pn + V::Load(w1 + gn) * qn);
    });
  }
}

// Calls fn(i, h, rows) for every row h of thread t's images i (i = t, t + threads, ...), where
// rows[j] is the zero-padded pair mix of input row h + j - 1, (W + 2) * C floats (MixRow).
template <typename F>
void ForEachMixedRow(const Shape& s, const float* a, const float* b, const float* w0,
                     const float* w1, int64_t t, int64_t threads, F&& fn) {
  std::vector<float> buf(3 * (s.W + 2) * s.C), pairs(2 * s.W * s.N);
  auto row = [&](int64_t r) { return buf.data() + ((r + 3) % 3) * (s.W + 2) * s.C; };
  for (int64_t i = t; i < s.B; i += threads) {
    const float* ai = a + i * s.H * s.W * s.N;
    const float* bi = b + i * s.H * s.W * s.N;
    MixRow(s, ai, bi, w0, w1, -1, pairs.data(), row(-1));
    MixRow(s, ai, bi, w0, w1, 0, pairs.data(), row(0));
    for (int64_t h = 0; h < s.H; ++h) {
      MixRow(s, ai, bi, w0, w1, h + 1, pairs.data(), row(h + 1));
      const float* rows[3] = {row(h - 1), row(h), row(h + 1)};
      fn(i, h, rows);
    }
  }
}

// The gates of one output row from its three mixed input rows: dst[x * C + c] for x < W.
void GateRow(const Shape& s, const float* const* rows, const float* kk, const float* bb,
             float* dst) {
  const int64_t C = s.C;
  for (int64_t x = 0; x < s.W; ++x) {
    ForChannelBlocks(C, [&]<int L>(int64_t c) {
      using V = Vec<L>;
      typename V::T acc = V::Load(bb + c);
      for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j)
          acc += V::Load(kk + (i * 3 + j) * C + c) * V::Load(rows[i] + (x + j) * C + c);
      V::Store(dst + x * C + c, acc);
    });
  }
}

// tanh as the rational approximation XLA and Eigen use for float32 (|error| < 3e-7), for a
// vector or a float.
template <typename T>
T Tanh(T x) {
  constexpr float kLimit = 7.90531110763549805f;
  x = x > kLimit ? kLimit : x;
  x = x < -kLimit ? -kLimit : x;
  const T x2 = x * x;
  T num = T{} - 2.76076847742355e-16f;
  for (float a : {2.00018790482477e-13f, -8.60467152213735e-11f, 5.12229709037114e-08f,
                  1.48572235717979e-05f, 6.37261928875436e-04f, 4.89352455891786e-03f})
    num = num * x2 + a;
  T den = T{} + 1.19825839466702e-06f;
  for (float b : {1.18534705686654e-04f, 2.26843463243900e-03f, 4.89352518554385e-03f})
    den = den * x2 + b;
  return x * num / den;
}

template <typename T>
T Sigmoid(T x) {
  return 0.5f + 0.5f * Tanh(0.5f * x);
}

// The shapes of a call: a [B, H, W, N] and C gate channels.
Shape ShapeOf(const F32Buffer& a, int64_t C, bool concat) {
  auto d = a.dimensions();
  return {d[0], d[1], d[2], d[3], C, concat};
}

ffi::Error GateFwdImpl(F32Buffer a, F32Buffer b, F32Buffer w, F32Buffer k, F32Buffer bias,
                       F32Result y, bool concat) {
  const Shape s = ShapeOf(a, bias.dimensions()[0], concat);
  const float* w0 = w.typed_data();
  ParallelOverBatch(NumThreads(s.B), [&](int64_t t, int64_t threads) {
    ForEachMixedRow(s, a.typed_data(), b.typed_data(), w0, w0 + s.C, t, threads,
                    [&](int64_t i, int64_t h, const float* const* rows) {
      GateRow(s, rows, k.typed_data(), bias.typed_data(),
              y->typed_data() + (i * s.H + h) * s.W * s.C);
    });
  });
  return ffi::Error::Success();
}

// The gate convolution followed by a cell's update: update.template operator()<L>(i, z, n) for
// every pixel i (flat index into [B, H, W]) and channel block n < N, with z that pixel's C gates.
template <typename Update>
ffi::Error ForwardWithUpdate(F32Buffer a, F32Buffer b, F32Buffer w, F32Buffer k, F32Buffer bias,
                             bool concat, Update update) {
  const Shape s = ShapeOf(a, bias.dimensions()[0], concat);
  const float* w0 = w.typed_data();
  ParallelOverBatch(NumThreads(s.B), [&](int64_t t, int64_t threads) {
    std::vector<float> z(s.W * s.C);
    ForEachMixedRow(s, a.typed_data(), b.typed_data(), w0, w0 + s.C, t, threads,
                    [&](int64_t i, int64_t h, const float* const* rows) {
      GateRow(s, rows, k.typed_data(), bias.typed_data(), z.data());
      for (int64_t x = 0; x < s.W; ++x)
        ForChannelBlocks(s.N, [&]<int L>(int64_t n) {
          update.template operator()<L>((i * s.H + h) * s.W + x, z.data() + x * s.C, n);
        });
    });
  });
  return ffi::Error::Success();
}

// The gate convolution's backward pass, given each image's gate gradients: image_dy(i, buf)
// returns image i's [H, W, C] gradient (it may compute it into the thread's buffer buf).
template <typename ImageDy>
ffi::Error GateBackward(const Shape& s, F32Buffer a, F32Buffer b, F32Buffer w, F32Buffer k,
                        ImageDy image_dy, F32Result da, F32Result db, F32Result dw,
                        F32Result dk, F32Result dbias) {
  const int64_t C = s.C, W = s.W, N = s.N;
  const float* w0 = w.typed_data();
  const float* w1 = w0 + C;
  const float* kk = k.typed_data();
  const int64_t num_threads = NumThreads(s.B);
  std::vector<float> acc(num_threads * 12 * C, 0.f);  // per thread: dk (9C), dw0, dw1, dbias
  ParallelOverBatch(num_threads, [&](int64_t t, int64_t threads) {
    std::vector<float> dm(W * C), buf, pairs(2 * W * N), dpq(2 * W * N);
    const float* dyb = nullptr;
    float* mine = acc.data() + t * 12 * C;
    float *adk = mine, *adw0 = mine + 9 * C, *adw1 = mine + 10 * C, *adb = mine + 11 * C;
    ForEachMixedRow(s, a.typed_data(), b.typed_data(), w0, w1, t, threads,
                    [&](int64_t image, int64_t h, const float* const* rows) {
      const int64_t row = (image * s.H + h) * W * N;  // of a, b, da, db
      if (h == 0) dyb = image_dy(image, buf);
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
      // Through the pair mix, then back from the pairs to a, b. (Row h was taken apart once
      // already, for its mix; keeping that copy in a second buffer instead measured slower.)
      auto [p, q] = PairRow(s, a.typed_data() + row, b.typed_data() + row, pairs.data());
      // dp[n] = sum_g w0[gN+n] dm[gN+n], dq likewise; dw0 += p dm, dw1 += q dm.
      for (int64_t x = 0; x < W; ++x) {
        const float* m = dm.data() + x * C;
        ForChannelBlocks(N, [&]<int L>(int64_t n) {
          using V = Vec<L>;
          const typename V::T pn = V::Load(p + x * N + n), qn = V::Load(q + x * N + n);
          typename V::T dp = V::Zero(), dq = V::Zero();
          for (int64_t gn = n; gn < C; gn += N) {
            const typename V::T mg = V::Load(m + gn);
            dp += V::Load(w0 + gn) * mg;
            dq += V::Load(w1 + gn) * mg;
            V::Store(adw0 + gn, V::Load(adw0 + gn) + pn * mg);
            V::Store(adw1 + gn, V::Load(adw1 + gn) + qn * mg);
          }
          V::Store(dpq.data() + x * N + n, dp);
          V::Store(dpq.data() + (W + x) * N + n, dq);
        });
      }
      UnpairRow(s, dpq.data(), dpq.data() + W * N, da->typed_data() + row,
                db->typed_data() + row);
    });
  });
  float* odk = dk->typed_data();
  float* odw = dw->typed_data();
  float* odb = dbias->typed_data();
  std::fill(odk, odk + 9 * C, 0.f);
  std::fill(odw, odw + 2 * C, 0.f);
  std::fill(odb, odb + C, 0.f);
  for (int64_t t = 0; t < num_threads; ++t) {
    const float* theirs = acc.data() + t * 12 * C;
    for (int64_t c = 0; c < 9 * C; ++c) odk[c] += theirs[c];
    for (int64_t c = 0; c < 2 * C; ++c) odw[c] += theirs[9 * C + c];
    for (int64_t c = 0; c < C; ++c) odb[c] += theirs[11 * C + c];
  }
  return ffi::Error::Success();
}

ffi::Error GateBwdImpl(F32Buffer a, F32Buffer b, F32Buffer w, F32Buffer k, F32Buffer dy,
                       F32Result da, F32Result db, F32Result dw, F32Result dk, F32Result dbias,
                       bool concat) {
  const Shape s = ShapeOf(a, dy.dimensions()[3], concat);
  auto image_dy = [&](int64_t i, std::vector<float>&) {
    return dy.typed_data() + i * s.H * s.W * s.C;
  };
  return GateBackward(s, a, b, w, k, image_dy, da, db, dw, dk, dbias);
}

// The backward pass of a gate convolution followed by a cell's update: grad.template
// operator()<L>(i, dz, n) writes the C gate gradients dz of pixel i, channel block n (and any
// state gradients); they are computed image by image into a per-thread buffer.
template <typename Grad>
ffi::Error BackwardWithUpdate(F32Buffer a, F32Buffer b, F32Buffer w, F32Buffer k, bool concat,
                              Grad grad, F32Result da, F32Result db, F32Result dw, F32Result dk,
                              F32Result dbias) {
  const Shape s = ShapeOf(a, w.dimensions()[1], concat);
  const int64_t pixels = s.H * s.W;
  auto image_dy = [&](int64_t image, std::vector<float>& buf) {
    buf.resize(pixels * s.C);
    for (int64_t i = 0; i < pixels; ++i)
      ForChannelBlocks(s.N, [&]<int L>(int64_t n) {
        grad.template operator()<L>(image * pixels + i, buf.data() + i * s.C, n);
      });
    return static_cast<const float*>(buf.data());
  };
  return GateBackward(s, a, b, w, k, image_dy, da, db, dw, dk, dbias);
}

// The updates' forwards write the activations their backward reads only when given room for
// them (JAX passes an empty buffer when nothing will be differentiated: eval).

// ConvLSTM, G = 4, z = (i, f, o, g): c' = s(i) tanh(g) + s(f) c, h' = s(o) tanh(c'); keeps the
// activations act = (s(i), s(f), s(o), tanh(g)) [B, H, W, 4N] for the backward.
ffi::Error LstmFwdImpl(F32Buffer a, F32Buffer b, F32Buffer w, F32Buffer k, F32Buffer bias,
                       F32Buffer c, F32Result h_new, F32Result c_new, F32Result acts,
                       bool concat) {
  const int64_t N = a.dimensions()[3];
  const bool keep = acts->element_count() > 0;
  auto update = [&]<int L>(int64_t i, const float* z, int64_t n) {
    using V = Vec<L>;
    auto si = Sigmoid(V::Load(z + n)), sf = Sigmoid(V::Load(z + N + n));
    auto so = Sigmoid(V::Load(z + 2 * N + n)), tg = Tanh(V::Load(z + 3 * N + n));
    auto cn = sf * V::Load(c.typed_data() + i * N + n) + si * tg;
    V::Store(c_new->typed_data() + i * N + n, cn);
    V::Store(h_new->typed_data() + i * N + n, so * Tanh(cn));
    if (!keep) return;
    float* act = acts->typed_data() + i * 4 * N;
    V::Store(act + n, si);
    V::Store(act + N + n, sf);
    V::Store(act + 2 * N + n, so);
    V::Store(act + 3 * N + n, tg);
  };
  return ForwardWithUpdate(a, b, w, k, bias, concat, update);
}

// With ct = dc' + dh' s(o) (1 - tanh(c')^2): dz_i = ct tanh(g) s(i) (1 - s(i)),
// dz_f = ct c s(f) (1 - s(f)), dz_o = dh' tanh(c') s(o) (1 - s(o)),
// dz_g = ct s(i) (1 - tanh(g)^2), and dc = ct s(f).
ffi::Error LstmBwdImpl(F32Buffer a, F32Buffer b, F32Buffer w, F32Buffer k, F32Buffer c,
                       F32Buffer c_new, F32Buffer acts, F32Buffer dh, F32Buffer dc_new,
                       F32Result da, F32Result db, F32Result dw, F32Result dk, F32Result dbias,
                       F32Result dc, bool concat) {
  const int64_t N = a.dimensions()[3];
  auto grad = [&]<int L>(int64_t i, float* dz, int64_t n) {
    using V = Vec<L>;
    const float* act = acts.typed_data() + i * 4 * N;
    const int64_t at = i * N + n;
    auto si = V::Load(act + n), sf = V::Load(act + N + n), so = V::Load(act + 2 * N + n);
    auto tg = V::Load(act + 3 * N + n), dhn = V::Load(dh.typed_data() + at);
    auto th = Tanh(V::Load(c_new.typed_data() + at));
    auto ct = V::Load(dc_new.typed_data() + at) + dhn * so * (1.f - th * th);
    V::Store(dz + n, ct * tg * si * (1.f - si));
    V::Store(dz + N + n, ct * V::Load(c.typed_data() + at) * sf * (1.f - sf));
    V::Store(dz + 2 * N + n, dhn * th * so * (1.f - so));
    V::Store(dz + 3 * N + n, ct * si * (1.f - tg * tg));
    V::Store(dc->typed_data() + at, ct * sf);
  };
  return BackwardWithUpdate(a, b, w, k, concat, grad, da, db, dw, dk, dbias);
}

// ConvGRU's first convolution, G = 2, z = (z, r): outputs s(z) and s(r) h, and s(r).
ffi::Error GruGatesFwdImpl(F32Buffer a, F32Buffer b, F32Buffer w, F32Buffer k, F32Buffer bias,
                           F32Buffer h, F32Result z_out, F32Result rh, F32Result r_out,
                           bool concat) {
  const int64_t N = a.dimensions()[3];
  const bool keep = r_out->element_count() > 0;
  auto update = [&]<int L>(int64_t i, const float* z, int64_t n) {
    using V = Vec<L>;
    const int64_t at = i * N + n;
    auto sr = Sigmoid(V::Load(z + N + n));
    V::Store(z_out->typed_data() + at, Sigmoid(V::Load(z + n)));
    V::Store(rh->typed_data() + at, sr * V::Load(h.typed_data() + at));
    if (keep) V::Store(r_out->typed_data() + at, sr);
  };
  return ForwardWithUpdate(a, b, w, k, bias, concat, update);
}

// dz_z = d(s(z)) s(z) (1 - s(z)), dz_r = d(rh) h s(r) (1 - s(r)), and dh = d(rh) s(r).
ffi::Error GruGatesBwdImpl(F32Buffer a, F32Buffer b, F32Buffer w, F32Buffer k, F32Buffer h,
                           F32Buffer z, F32Buffer r, F32Buffer dz_out, F32Buffer drh,
                           F32Result da, F32Result db, F32Result dw, F32Result dk,
                           F32Result dbias, F32Result dh, bool concat) {
  const int64_t N = a.dimensions()[3];
  auto grad = [&]<int L>(int64_t i, float* dz, int64_t n) {
    using V = Vec<L>;
    const int64_t at = i * N + n;
    auto sz = V::Load(z.typed_data() + at), sr = V::Load(r.typed_data() + at);
    auto g = V::Load(drh.typed_data() + at);
    V::Store(dz + n, V::Load(dz_out.typed_data() + at) * sz * (1.f - sz));
    V::Store(dz + N + n, g * V::Load(h.typed_data() + at) * sr * (1.f - sr));
    V::Store(dh->typed_data() + at, g * sr);
  };
  return BackwardWithUpdate(a, b, w, k, concat, grad, da, db, dw, dk, dbias);
}

// ConvGRU's second convolution, G = 1: h' = (1 - z) h + z tanh(y); keeps tanh(y).
ffi::Error GruUpdateFwdImpl(F32Buffer a, F32Buffer b, F32Buffer w, F32Buffer k, F32Buffer bias,
                            F32Buffer z, F32Buffer h, F32Result h_new, F32Result t_out,
                            bool concat) {
  const int64_t N = a.dimensions()[3];
  const bool keep = t_out->element_count() > 0;
  auto update = [&]<int L>(int64_t i, const float* y, int64_t n) {
    using V = Vec<L>;
    const int64_t at = i * N + n;
    auto t = Tanh(V::Load(y + n)), zz = V::Load(z.typed_data() + at);
    auto hh = V::Load(h.typed_data() + at);
    V::Store(h_new->typed_data() + at, hh + zz * (t - hh));
    if (keep) V::Store(t_out->typed_data() + at, t);
  };
  return ForwardWithUpdate(a, b, w, k, bias, concat, update);
}

// dy = dh' z (1 - t^2), dz = dh' (t - h), dh = dh' (1 - z).
ffi::Error GruUpdateBwdImpl(F32Buffer a, F32Buffer b, F32Buffer w, F32Buffer k, F32Buffer z,
                            F32Buffer h, F32Buffer t_in, F32Buffer dh_new, F32Result da,
                            F32Result db, F32Result dw, F32Result dk, F32Result dbias,
                            F32Result dz, F32Result dh, bool concat) {
  const int64_t N = a.dimensions()[3];
  auto grad = [&]<int L>(int64_t i, float* dy, int64_t n) {
    using V = Vec<L>;
    const int64_t at = i * N + n;
    auto t = V::Load(t_in.typed_data() + at), zz = V::Load(z.typed_data() + at);
    auto g = V::Load(dh_new.typed_data() + at);
    V::Store(dy + n, g * zz * (1.f - t * t));
    V::Store(dz->typed_data() + at, g * (t - V::Load(h.typed_data() + at)));
    V::Store(dh->typed_data() + at, g * (1.f - zz));
  };
  return BackwardWithUpdate(a, b, w, k, concat, grad, da, db, dw, dk, dbias);
}

}  // namespace

// Every handler takes (a, b, w, k, then bias, dy or c), and the pairing as attribute "concat".
auto GateArgs() {
  return ffi::Ffi::Bind().Arg<F32Buffer>().Arg<F32Buffer>().Arg<F32Buffer>().Arg<F32Buffer>()
      .Arg<F32Buffer>();
}

#define CONCAT .Attr<bool>("concat")

XLA_FFI_DEFINE_HANDLER_SYMBOL(RegnetGateFwd, GateFwdImpl, GateArgs().Ret<F32Buffer>() CONCAT);

XLA_FFI_DEFINE_HANDLER_SYMBOL(RegnetGateBwd, GateBwdImpl,
                              GateArgs()  // da, db, dw, dk, dbias
                                  .Ret<F32Buffer>().Ret<F32Buffer>().Ret<F32Buffer>()
                                  .Ret<F32Buffer>().Ret<F32Buffer>() CONCAT);

// The updates' handlers: their state inputs follow bias (forward) or k (backward); the
// backward's outputs are the gate convolution's five gradients, then the states'.
#define F32_ARGS_1 .Arg<F32Buffer>()
#define F32_ARGS_2 F32_ARGS_1 F32_ARGS_1
#define F32_RETS_1 .Ret<F32Buffer>()
#define F32_RETS_2 F32_RETS_1 F32_RETS_1
#define F32_RETS_3 F32_RETS_2 F32_RETS_1
#define F32_RETS_6 F32_RETS_3 F32_RETS_3

XLA_FFI_DEFINE_HANDLER_SYMBOL(RegnetLstmFwd, LstmFwdImpl,  // c -> h', c', acts
                              GateArgs() F32_ARGS_1 F32_RETS_3 CONCAT);
XLA_FFI_DEFINE_HANDLER_SYMBOL(RegnetLstmBwd, LstmBwdImpl,  // c, c', acts, dh', dc'
                              GateArgs() F32_ARGS_2 F32_ARGS_2 F32_RETS_6 CONCAT);
XLA_FFI_DEFINE_HANDLER_SYMBOL(RegnetGruGatesFwd, GruGatesFwdImpl,  // h -> s(z), s(r) h, s(r)
                              GateArgs() F32_ARGS_1 F32_RETS_3 CONCAT);
XLA_FFI_DEFINE_HANDLER_SYMBOL(RegnetGruGatesBwd, GruGatesBwdImpl,  // h, s(z), s(r), ds(z), drh
                              GateArgs() F32_ARGS_2 F32_ARGS_2 F32_RETS_6 CONCAT);
XLA_FFI_DEFINE_HANDLER_SYMBOL(RegnetGruUpdateFwd, GruUpdateFwdImpl,  // z, h -> h', tanh(y)
                              GateArgs() F32_ARGS_2 F32_RETS_2 CONCAT);
XLA_FFI_DEFINE_HANDLER_SYMBOL(RegnetGruUpdateBwd, GruUpdateBwdImpl,  // z, h, tanh(y), dh'
                              GateArgs() F32_ARGS_2 F32_ARGS_1 F32_RETS_6 F32_RETS_1 CONCAT);
