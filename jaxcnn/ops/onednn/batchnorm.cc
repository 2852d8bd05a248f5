// Training-mode BatchNorm (+ ReLU, + 2x2 max pool) over NHWC float32, as XLA FFI handlers.
//
// The functions of jaxcnn/ops/batchnorm.py (see its docstring for the math), with fewer passes
// over memory than XLA:CPU makes of them: per channel c over the M = N*H*W positions,
//
//   forward:  one pass for sum(x) and sum(x^2), one pass writing y = act(x*a + b)
//             (or, pooled, each 2x2 window's max and an int8 map of which entry won);
//   backward: one pass for sum(gm) and sum(gm*x), one pass writing dx = a*gm + c0 + c1*x
//             (gm: the incoming gradient where the ReLU / the pool routed it).
//
// Sums are accumulated in double over fixed chunks of rows that depend only on the shape, and
// the chunks' partial sums are added in chunk order, so results are bitwise identical from run
// to run whatever thread ran which chunk. The chunks run on XLA's intra-op thread pool and the
// calling thread. Built with -ffp-contract=off: x*a + b is rounded the same way in the forward
// pass (where ReLU/pool decisions are made) and the backward pass (where the ReLU mask is
// recomputed from x).

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// Runs body(chunk) for chunk in [0, chunks) on the calling thread and up to num_threads pool
// workers; returns when every chunk is done. A worker that starts late finds no chunk left and
// returns without touching the caller's state (kept alive by the shared_ptr).
void parallel_chunks(ffi::ThreadPool& pool, int64_t chunks,
                     const std::function<void(int64_t)>& body) {
  struct State {
    std::atomic<int64_t> next{0}, done{0};
    int64_t chunks = 0;
    const std::function<void(int64_t)>* body = nullptr;
  };
  auto state = std::make_shared<State>();
  state->chunks = chunks;
  state->body = &body;
  auto work = [](State& s) {
    for (int64_t c; (c = s.next.fetch_add(1)) < s.chunks;) {
      (*s.body)(c);
      s.done.fetch_add(1, std::memory_order_release);
    }
  };
  int64_t helpers = std::min<int64_t>(pool.num_threads(), chunks - 1);
  for (int64_t i = 0; i < helpers; ++i) pool.Schedule([state, work] { work(*state); });
  work(*state);
  while (state->done.load(std::memory_order_acquire) < chunks) std::this_thread::yield();
}

// Chunks of about kRowsPerChunk rows (at least one, at most kMaxChunks).
constexpr int64_t kRowsPerChunk = 2048;
constexpr int64_t kMaxChunks = 64;

int64_t chunk_count(int64_t rows) {
  return std::clamp<int64_t>((rows + kRowsPerChunk - 1) / kRowsPerChunk, 1, kMaxChunks);
}

// [begin, end) of chunk k of `rows` rows split into `chunks` near-equal parts.
std::pair<int64_t, int64_t> chunk_range(int64_t rows, int64_t chunks, int64_t k) {
  return {rows * k / chunks, rows * (k + 1) / chunks};
}

// ---------------------------------------------------------------- vectorised inner loops
// Each processes rows [r0, r1) of an (rows, C) float array; GCC vectorises them over C and
// builds an AVX-512, an AVX2 and a baseline copy, chosen when the library loads.

#define JAXCNN_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))

JAXCNN_CLONES
void sums_x(const float* __restrict__ x, int64_t r0, int64_t r1, int64_t c,
            double* __restrict__ s1, double* __restrict__ s2) {
  for (int64_t r = r0; r < r1; ++r) {
    const float* row = x + r * c;
    for (int64_t j = 0; j < c; ++j) {
      double v = row[j];
      s1[j] += v;
      s2[j] += v * v;
    }
  }
}

JAXCNN_CLONES
void affine(const float* __restrict__ x, float* __restrict__ y, int64_t r0, int64_t r1,
            int64_t c, const float* __restrict__ a, const float* __restrict__ b, bool relu) {
  if (relu) {
    for (int64_t r = r0; r < r1; ++r) {
      for (int64_t j = 0; j < c; ++j) y[r * c + j] = std::max(x[r * c + j] * a[j] + b[j], 0.0f);
    }
  } else {
    for (int64_t r = r0; r < r1; ++r) {
      for (int64_t j = 0; j < c; ++j) y[r * c + j] = x[r * c + j] * a[j] + b[j];
    }
  }
}

// The backward loops take the ReLU as a template argument: a loop with no branch vectorises.
template <bool kRelu>
inline float relu_masked(float g, float x, float a, float b) {
  if constexpr (kRelu) return x * a + b > 0.0f ? g : 0.0f;
  return g;
}

template <bool kRelu>
inline void sums_grad_rows(const float* __restrict__ g, const float* __restrict__ x, int64_t r0,
                           int64_t r1, int64_t c, const float* __restrict__ a,
                           const float* __restrict__ b, double* __restrict__ s1,
                           double* __restrict__ s2) {
  for (int64_t r = r0; r < r1; ++r) {
    const float* gr = g + r * c;
    const float* xr = x + r * c;
    for (int64_t j = 0; j < c; ++j) {
      float gm = relu_masked<kRelu>(gr[j], xr[j], a[j], b[j]);
      s1[j] += gm;
      s2[j] += static_cast<double>(gm) * xr[j];
    }
  }
}

JAXCNN_CLONES
void sums_grad(const float* g, const float* x, int64_t r0, int64_t r1, int64_t c,
               const float* a, const float* b, bool relu, double* s1, double* s2) {
  if (relu) {
    sums_grad_rows<true>(g, x, r0, r1, c, a, b, s1, s2);
  } else {
    sums_grad_rows<false>(g, x, r0, r1, c, a, b, s1, s2);
  }
}

template <bool kRelu>
inline void input_grad_rows(const float* __restrict__ g, const float* __restrict__ x,
                            float* __restrict__ dx, int64_t r0, int64_t r1, int64_t c,
                            const float* __restrict__ a, const float* __restrict__ b,
                            const float* __restrict__ c0, const float* __restrict__ c1) {
  for (int64_t r = r0; r < r1; ++r) {
    const float* gr = g + r * c;
    const float* xr = x + r * c;
    float* dr = dx + r * c;
    for (int64_t j = 0; j < c; ++j) {
      float gm = relu_masked<kRelu>(gr[j], xr[j], a[j], b[j]);
      dr[j] = a[j] * gm + c0[j] + c1[j] * xr[j];
    }
  }
}

JAXCNN_CLONES
void input_grad(const float* g, const float* x, float* dx, int64_t r0, int64_t r1, int64_t c,
                const float* a, const float* b, bool relu, const float* c0, const float* c1) {
  if (relu) {
    input_grad_rows<true>(g, x, dx, r0, r1, c, a, b, c0, c1);
  } else {
    input_grad_rows<false>(g, x, dx, r0, r1, c, a, b, c0, c1);
  }
}

// One pooled output row: out_row (Wo, C) and route_row from input rows top and below
// (each (2*Wo, C)). route: window entry (0-3, row-major) of the first maximum, 4 where the
// ReLU is off.
JAXCNN_CLONES
void pool_row(const float* __restrict__ top, const float* __restrict__ below,
              float* __restrict__ out_row, int8_t* __restrict__ route_row, int64_t wo, int64_t c,
              const float* __restrict__ a, const float* __restrict__ b) {
  for (int64_t q = 0; q < wo; ++q) {
    const float *v0 = top + 2 * q * c, *v1 = v0 + c, *v2 = below + 2 * q * c, *v3 = v2 + c;
    float* o = out_row + q * c;
    int8_t* rt = route_row + q * c;
    for (int64_t j = 0; j < c; ++j) {
      float z0 = v0[j] * a[j] + b[j], z1 = v1[j] * a[j] + b[j];
      float z2 = v2[j] * a[j] + b[j], z3 = v3[j] * a[j] + b[j];
      // strictly greater: ties keep the first maximum
      int arg = z1 > z0 ? 1 : 0;
      float best = z1 > z0 ? z1 : z0;
      arg = z2 > best ? 2 : arg;
      best = z2 > best ? z2 : best;
      arg = z3 > best ? 3 : arg;
      best = z3 > best ? z3 : best;
      o[j] = best > 0.0f ? best : 0.0f;
      rt[j] = static_cast<int8_t>(best > 0.0f ? arg : 4);
    }
  }
}

// Sums over one pooled output row for the pooled backward pass: s1 += g, s2 += g * x at the
// routed entry.
JAXCNN_CLONES
void pool_sums_row(const float* __restrict__ g_row, const int8_t* __restrict__ route_row,
                   const float* __restrict__ top, const float* __restrict__ below, int64_t wo,
                   int64_t c, double* __restrict__ s1, double* __restrict__ s2) {
  for (int64_t q = 0; q < wo; ++q) {
    const float *v0 = top + 2 * q * c, *v1 = v0 + c, *v2 = below + 2 * q * c, *v3 = v2 + c;
    const float* g = g_row + q * c;
    const int8_t* rt = route_row + q * c;
    for (int64_t j = 0; j < c; ++j) {
      // The route as a float and one product per window entry (three of them zero): this
      // vectorises, where selecting the routed x does not.
      float k = rt[j], gv = g[j];
      float g0 = k == 0.0f ? gv : 0.0f, g1 = k == 1.0f ? gv : 0.0f;
      float g2 = k == 2.0f ? gv : 0.0f, g3 = k == 3.0f ? gv : 0.0f;
      s1[j] += (g0 + g1) + (g2 + g3);
      s2[j] += (static_cast<double>(g0) * v0[j] + static_cast<double>(g1) * v1[j]) +
               (static_cast<double>(g2) * v2[j] + static_cast<double>(g3) * v3[j]);
    }
  }
}

// dx of one pair of input rows (top, below) from one pooled gradient row.
JAXCNN_CLONES
void pool_grad_row(const float* __restrict__ g_row, const int8_t* __restrict__ route_row,
                   const float* __restrict__ top, const float* __restrict__ below,
                   float* __restrict__ dtop, float* __restrict__ dbelow, int64_t wo, int64_t c,
                   const float* __restrict__ a, const float* __restrict__ c0,
                   const float* __restrict__ c1) {
  for (int64_t q = 0; q < wo; ++q) {
    const float *v0 = top + 2 * q * c, *v1 = v0 + c, *v2 = below + 2 * q * c, *v3 = v2 + c;
    float *d0 = dtop + 2 * q * c, *d1 = d0 + c, *d2 = dbelow + 2 * q * c, *d3 = d2 + c;
    const float* g = g_row + q * c;
    const int8_t* rt = route_row + q * c;
    for (int64_t j = 0; j < c; ++j) {
      float k = rt[j], gv = g[j];  // the route as a float: the selects vectorise
      float g0 = k == 0.0f ? gv : 0.0f, g1 = k == 1.0f ? gv : 0.0f;
      float g2 = k == 2.0f ? gv : 0.0f, g3 = k == 3.0f ? gv : 0.0f;
      d0[j] = a[j] * g0 + c0[j] + c1[j] * v0[j];
      d1[j] = a[j] * g1 + c0[j] + c1[j] * v1[j];
      d2[j] = a[j] * g2 + c0[j] + c1[j] * v2[j];
      d3[j] = a[j] * g3 + c0[j] + c1[j] * v3[j];
    }
  }
}

// ---------------------------------------------------------------- shared per-channel math

// Per-channel sums (s1, s2) in double over `chunks` chunks: add(k, p1, p2) adds chunk k's
// terms into its own zeroed partial sums p1, p2 (C each); the partials are then added in chunk
// order, so the result does not depend on which thread ran which chunk.
void chunked_sums(ffi::ThreadPool& pool, int64_t chunks, int64_t c,
                  const std::function<void(int64_t, double*, double*)>& add,
                  std::vector<double>* s1, std::vector<double>* s2) {
  std::vector<double> p1(chunks * c, 0.0), p2(chunks * c, 0.0);
  parallel_chunks(pool, chunks, [&](int64_t k) { add(k, &p1[k * c], &p2[k * c]); });
  s1->assign(c, 0.0);
  s2->assign(c, 0.0);
  for (int64_t k = 0; k < chunks; ++k) {
    for (int64_t j = 0; j < c; ++j) {
      (*s1)[j] += p1[k * c + j];
      (*s2)[j] += p2[k * c + j];
    }
  }
}

// mean, biased var (float32, E[x^2] - mean^2 clamped at 0) from the sums over m positions.
void moments(const std::vector<double>& s1, const std::vector<double>& s2, int64_t m,
             float* mean, float* var) {
  for (size_t j = 0; j < s1.size(); ++j) {
    double mu = s1[j] / m;
    mean[j] = static_cast<float>(mu);
    var[j] = static_cast<float>(std::max(s2[j] / m - mu * mu, 0.0));
  }
}

// Per-channel mean and var of x (rows, C), written to mean and var.
void batch_moments(ffi::ThreadPool& pool, const float* x, int64_t rows, int64_t c, float* mean,
                   float* var) {
  int64_t chunks = chunk_count(rows);
  std::vector<double> s1, s2;
  chunked_sums(pool, chunks, c, [&](int64_t k, double* p1, double* p2) {
    auto [r0, r1] = chunk_range(rows, chunks, k);
    sums_x(x, r0, r1, c, p1, p2);
  }, &s1, &s2);
  moments(s1, s2, rows, mean, var);
}

// a = scale / sqrt(var + eps), b = bias - mean * a, inv = 1 / sqrt(var + eps) (float32).
struct Affine {
  std::vector<float> a, b, inv;
  Affine(const float* scale, const float* bias, const float* mean, const float* var, float eps,
         int64_t c)
      : a(c), b(c), inv(c) {
    for (int64_t j = 0; j < c; ++j) {
      inv[j] = 1.0f / std::sqrt(var[j] + eps);
      a[j] = scale[j] * inv[j];
      b[j] = bias[j] - mean[j] * a[j];
    }
  }
};

// dscale, dbias and the dx coefficients (dx = a*gm + c0 + c1*x) from the gradient sums.
struct GradCoefficients {
  std::vector<float> c0, c1;
  GradCoefficients(const Affine& af, const float* mean, const std::vector<double>& s1,
                   const std::vector<double>& s2, int64_t m, float* dscale, float* dbias)
      : c0(s1.size()), c1(s1.size()) {
    for (size_t j = 0; j < s1.size(); ++j) {
      float db = static_cast<float>(s1[j]);
      float ds = static_cast<float>(af.inv[j] * (s2[j] - mean[j] * s1[j]));
      dbias[j] = db;
      dscale[j] = ds;
      c1[j] = -af.a[j] * af.inv[j] * ds / m;
      c0[j] = -af.a[j] * db / m - c1[j] * mean[j];
    }
  }
};

ffi::Error check_channels(ffi::Span<const int64_t> dims, size_t params, const char* what) {
  if (dims.size() != 4) return ffi::Error::InvalidArgument(std::string(what) + ": x must be NHWC");
  if (static_cast<size_t>(dims[3]) != params) {
    return ffi::Error::InvalidArgument(std::string(what) + ": parameters must have C elements");
  }
  return ffi::Error::Success();
}

// The 2x2 windows of x (N, H, W, C) with even H and W, as rows: pooled row r (of N*H/2) reads
// input rows 2r and 2r+1 (r = n*H/2 + p: rows 2p and 2p+1 of image n).
struct PoolRows {
  int64_t positions = 0;  // N*H*W, what the statistics are over
  int64_t rows = 0;       // pooled rows, N*H/2
  int64_t wo = 0, c = 0;
  int64_t in_row = 0;     // floats per input row (W*C); a pooled row has in_row / 2
  int64_t chunks = 0;

  const float* top(const float* x, int64_t r) const { return x + 2 * r * in_row; }
  int64_t pooled(int64_t r) const { return r * wo * c; }  // offset of pooled row r
  std::pair<int64_t, int64_t> range(int64_t k) const { return chunk_range(rows, chunks, k); }
};

ffi::Error pool_rows(ffi::Span<const int64_t> dims, size_t params, const char* what,
                     PoolRows* pr) {
  auto err = check_channels(dims, params, what);
  if (err.failure()) return err;
  int64_t n = dims[0], h = dims[1], w = dims[2], c = dims[3];
  if (h % 2 || w % 2) return ffi::Error::InvalidArgument(std::string(what) + ": odd H or W");
  pr->positions = n * h * w;
  pr->rows = n * (h / 2);
  pr->wo = w / 2;
  pr->c = c;
  pr->in_row = w * c;
  pr->chunks = std::min(chunk_count(pr->positions), pr->rows);
  return ffi::Error::Success();
}

// ---------------------------------------------------------------- handlers

ffi::Error bn_forward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> scale,
                      ffi::Buffer<ffi::F32> bias, ffi::ResultBuffer<ffi::F32> y,
                      ffi::ResultBuffer<ffi::F32> mean, ffi::ResultBuffer<ffi::F32> var,
                      float eps, int64_t relu) {
  auto err = check_channels(x.dimensions(), scale.element_count(), "batchnorm forward");
  if (err.failure()) return err;
  int64_t c = x.dimensions()[3], rows = x.element_count() / c, chunks = chunk_count(rows);
  batch_moments(pool, x.typed_data(), rows, c, mean->typed_data(), var->typed_data());
  Affine af(scale.typed_data(), bias.typed_data(), mean->typed_data(), var->typed_data(), eps, c);
  parallel_chunks(pool, chunks, [&](int64_t k) {
    auto [r0, r1] = chunk_range(rows, chunks, k);
    affine(x.typed_data(), y->typed_data(), r0, r1, c, af.a.data(), af.b.data(), relu != 0);
  });
  return ffi::Error::Success();
}

ffi::Error bn_backward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> g, ffi::Buffer<ffi::F32> x,
                       ffi::Buffer<ffi::F32> scale, ffi::Buffer<ffi::F32> bias,
                       ffi::Buffer<ffi::F32> mean, ffi::Buffer<ffi::F32> var,
                       ffi::ResultBuffer<ffi::F32> dx, ffi::ResultBuffer<ffi::F32> dscale,
                       ffi::ResultBuffer<ffi::F32> dbias, float eps, int64_t relu) {
  auto err = check_channels(x.dimensions(), scale.element_count(), "batchnorm backward");
  if (err.failure()) return err;
  int64_t c = x.dimensions()[3], rows = x.element_count() / c, chunks = chunk_count(rows);
  Affine af(scale.typed_data(), bias.typed_data(), mean.typed_data(), var.typed_data(), eps, c);
  std::vector<double> s1, s2;
  chunked_sums(pool, chunks, c, [&](int64_t k, double* p1, double* p2) {
    auto [r0, r1] = chunk_range(rows, chunks, k);
    sums_grad(g.typed_data(), x.typed_data(), r0, r1, c, af.a.data(), af.b.data(), relu != 0,
              p1, p2);
  }, &s1, &s2);
  GradCoefficients gc(af, mean.typed_data(), s1, s2, rows, dscale->typed_data(),
                      dbias->typed_data());
  parallel_chunks(pool, chunks, [&](int64_t k) {
    auto [r0, r1] = chunk_range(rows, chunks, k);
    input_grad(g.typed_data(), x.typed_data(), dx->typed_data(), r0, r1, c, af.a.data(),
               af.b.data(), relu != 0, gc.c0.data(), gc.c1.data());
  });
  return ffi::Error::Success();
}

ffi::Error bn_pool_forward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                           ffi::Buffer<ffi::F32> scale, ffi::Buffer<ffi::F32> bias,
                           ffi::ResultBuffer<ffi::F32> y, ffi::ResultBuffer<ffi::S8> route,
                           ffi::ResultBuffer<ffi::F32> mean, ffi::ResultBuffer<ffi::F32> var,
                           float eps) {
  PoolRows pr;
  auto err = pool_rows(x.dimensions(), scale.element_count(), "batchnorm+pool forward", &pr);
  if (err.failure()) return err;
  const float* xd = x.typed_data();
  batch_moments(pool, xd, pr.positions, pr.c, mean->typed_data(), var->typed_data());
  Affine af(scale.typed_data(), bias.typed_data(), mean->typed_data(), var->typed_data(), eps,
            pr.c);
  parallel_chunks(pool, pr.chunks, [&](int64_t k) {
    auto [r0, r1] = pr.range(k);
    for (int64_t r = r0; r < r1; ++r) {
      pool_row(pr.top(xd, r), pr.top(xd, r) + pr.in_row, y->typed_data() + pr.pooled(r),
               route->typed_data() + pr.pooled(r), pr.wo, pr.c, af.a.data(), af.b.data());
    }
  });
  return ffi::Error::Success();
}

ffi::Error bn_pool_backward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> g,
                            ffi::Buffer<ffi::S8> route, ffi::Buffer<ffi::F32> x,
                            ffi::Buffer<ffi::F32> scale, ffi::Buffer<ffi::F32> bias,
                            ffi::Buffer<ffi::F32> mean, ffi::Buffer<ffi::F32> var,
                            ffi::ResultBuffer<ffi::F32> dx, ffi::ResultBuffer<ffi::F32> dscale,
                            ffi::ResultBuffer<ffi::F32> dbias, float eps) {
  PoolRows pr;
  auto err = pool_rows(x.dimensions(), scale.element_count(), "batchnorm+pool backward", &pr);
  if (err.failure()) return err;
  Affine af(scale.typed_data(), bias.typed_data(), mean.typed_data(), var.typed_data(), eps,
            pr.c);
  const float* xd = x.typed_data();
  const float* gd = g.typed_data();
  const int8_t* rd = route.typed_data();
  std::vector<double> s1, s2;
  chunked_sums(pool, pr.chunks, pr.c, [&](int64_t k, double* p1, double* p2) {
    auto [r0, r1] = pr.range(k);
    for (int64_t r = r0; r < r1; ++r) {
      pool_sums_row(gd + pr.pooled(r), rd + pr.pooled(r), pr.top(xd, r),
                    pr.top(xd, r) + pr.in_row, pr.wo, pr.c, p1, p2);
    }
  }, &s1, &s2);
  GradCoefficients gc(af, mean.typed_data(), s1, s2, pr.positions, dscale->typed_data(),
                      dbias->typed_data());
  float* dd = dx->typed_data();
  parallel_chunks(pool, pr.chunks, [&](int64_t k) {
    auto [r0, r1] = pr.range(k);
    for (int64_t r = r0; r < r1; ++r) {
      float* dtop = dd + 2 * r * pr.in_row;
      pool_grad_row(gd + pr.pooled(r), rd + pr.pooled(r), pr.top(xd, r),
                    pr.top(xd, r) + pr.in_row, dtop, dtop + pr.in_row, pr.wo, pr.c,
                    af.a.data(), gc.c0.data(), gc.c1.data());
    }
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxcnnBatchNormForward, bn_forward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("eps")
                                  .Attr<int64_t>("relu"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxcnnBatchNormBackward, bn_backward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("eps")
                                  .Attr<int64_t>("relu"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxcnnBatchNormPoolForward, bn_pool_forward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::S8>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("eps"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxcnnBatchNormPoolBackward, bn_pool_backward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S8>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("eps"));
