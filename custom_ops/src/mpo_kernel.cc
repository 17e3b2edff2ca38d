// MPOLinear contraction kernels (see mpo.h); compiled once per instruction set (isa_begin.h).
#include <algorithm>
#include <cstring>
#include <vector>

#include "mpo.h"

#include "isa_begin.h"

namespace qwthn {
namespace QWTHN_KERNEL_NS {

#include "simd.h"  // inside this build's namespace: Vec, ld, st, lanes

namespace {

// Samples per chunk: a power of two up to 256 such that one intermediate of the chunk stays
// near L2-sized (at least 8 unless the batch is smaller, so a single token does not pay for
// padded lanes). Depends on the shape and batch only, never on the thread count.
template <typename T>
int64_t chunk_samples(const MPOShape& s, int64_t batch) {
  constexpr int64_t kTargetBytes = 256 * 1024;
  int64_t bc = 256;
  while (bc > 8 && bc * s.max_intermediate * static_cast<int64_t>(sizeof(T)) > kTargetBytes) {
    bc /= 2;
  }
  while (bc > 1 && bc / 2 >= batch) bc /= 2;
  return bc;
}

// Sizes of step k: input t_k = [J, D0, I, R] x lanes -> output [J, Jk, D1, R] x lanes, where
// J = prod(out_modes[<k]), R = prod(in_modes[>k]) and lanes = chunk samples.
struct Step {
  int64_t J, D0, I, Jk, D1, R;
  int64_t in_size() const { return J * D0 * I * R; }
  int64_t out_size() const { return J * Jk * D1 * R; }
};

std::vector<Step> steps_of(const MPOShape& s) {
  std::vector<Step> steps;
  int64_t J = 1, R = s.in_features;
  for (int64_t k = 0; k < s.num_cores(); ++k) {
    R /= s.in_modes[k];
    steps.push_back({J, s.bonds[k], s.in_modes[k], s.out_modes[k], s.bonds[k + 1], R});
    J *= s.out_modes[k];
  }
  return steps;
}

// Multiply-adds per sample of the core-by-core contraction.
double contraction_cost(const std::vector<Step>& steps) {
  double cost = 0;
  for (const Step& st : steps) {
    cost += static_cast<double>(st.J) * st.Jk * st.D1 * st.D0 * st.I * st.R;
  }
  return cost;
}

// Multiply-adds of forming the dense operator from the cores (dense_transposed).
double dense_build_cost(const MPOShape& s) {
  double cost = 0, I = static_cast<double>(s.in_modes[0]), J = static_cast<double>(s.out_modes[0]);
  for (int64_t k = 1; k < s.num_cores(); ++k) {
    cost += I * s.in_modes[k] * J * s.out_modes[k] * s.bonds[k] * s.bonds[k + 1];
    I *= s.in_modes[k];
    J *= s.out_modes[k];
  }
  return cost;
}

template <typename T>
inline void axpy(T* __restrict o, T c, const T* __restrict p, int64_t n) {
  for (int64_t l = 0; l < n; ++l) o[l] += c * p[l];
}

// Dot product with independent partial sums (vectorisable without reassociation flags).
template <typename T>
inline double dot(const T* __restrict a, const T* __restrict b, int64_t n) {
  constexpr int U = 16;
  T acc[U] = {};
  int64_t l = 0;
  for (; l + U <= n; l += U) {
    for (int u = 0; u < U; ++u) acc[u] += a[l + u] * b[l + u];
  }
  double sum = 0;
  for (int u = 0; u < U; ++u) sum += acc[u];
  for (; l < n; ++l) sum += static_cast<double>(a[l]) * b[l];
  return sum;
}

// out[J, j, d1] = sum_{d0, i} core[d0, i, j, d1] * in[J, d0, i]   (blocks of L = R * lanes)
template <typename T>
void step_forward(const Step& st, int64_t lanes, const T* core, const T* in, T* out) {
  const int64_t L = st.R * lanes;
  std::fill(out, out + st.out_size() * lanes, T(0));
  if (L < 8) {
    // Short blocks (a few samples, late steps): loop over the core's output columns instead,
    // so the inner loop stays long (contiguous when L == 1).
    const int64_t Q = st.Jk * st.D1;
    for (int64_t J = 0; J < st.J; ++J) {
      for (int64_t p = 0; p < st.D0 * st.I; ++p) {
        const T* crow = core + p * Q;
        for (int64_t l = 0; l < L; ++l) {
          const T v = in[(J * st.D0 * st.I + p) * L + l];
          T* o = out + J * Q * L + l;
          for (int64_t q = 0; q < Q; ++q) o[q * L] += v * crow[q];
        }
      }
    }
    return;
  }
  for (int64_t J = 0; J < st.J; ++J) {
    for (int64_t j = 0; j < st.Jk; ++j) {
      for (int64_t d1 = 0; d1 < st.D1; ++d1) {
        T* o = out + ((J * st.Jk + j) * st.D1 + d1) * L;
        for (int64_t d0 = 0; d0 < st.D0; ++d0) {
          for (int64_t i = 0; i < st.I; ++i) {
            const T c = core[((d0 * st.I + i) * st.Jk + j) * st.D1 + d1];
            axpy(o, c, in + ((J * st.D0 + d0) * st.I + i) * L, L);
          }
        }
      }
    }
  }
}

// Reverse of step_forward: g_in[J, d0, i] = sum_{j, d1} core[d0, i, j, d1] * g_out[J, j, d1]
// and g_core[d0, i, j, d1] += sum_J <in[J, d0, i], g_out[J, j, d1]>.
template <typename T>
void step_backward(const Step& st, int64_t lanes, const T* core, const T* in, const T* g_out,
                   T* g_in, double* g_core) {
  const int64_t L = st.R * lanes;
  std::fill(g_in, g_in + st.in_size() * lanes, T(0));
  for (int64_t J = 0; J < st.J; ++J) {
    for (int64_t d0 = 0; d0 < st.D0; ++d0) {
      for (int64_t i = 0; i < st.I; ++i) {
        T* gi = g_in + ((J * st.D0 + d0) * st.I + i) * L;
        const T* xi = in + ((J * st.D0 + d0) * st.I + i) * L;
        for (int64_t j = 0; j < st.Jk; ++j) {
          for (int64_t d1 = 0; d1 < st.D1; ++d1) {
            const int64_t c = ((d0 * st.I + i) * st.Jk + j) * st.D1 + d1;
            const T* go = g_out + ((J * st.Jk + j) * st.D1 + d1) * L;
            axpy(gi, core[c], go, L);
            g_core[c] += dot(xi, go, L);
          }
        }
      }
    }
  }
}

// rows [b0, b0 + valid) of a row-major [batch, width] matrix -> [width, lanes], zero padded.
template <typename T>
void load_transposed(const T* src, int64_t width, int64_t b0, int64_t valid, int64_t lanes,
                     T* dst) {
  std::fill(dst, dst + width * lanes, T(0));
  for (int64_t s = 0; s < valid; ++s) {
    const T* row = src + (b0 + s) * width;
    for (int64_t f = 0; f < width; ++f) dst[f * lanes + s] = row[f];
  }
}

template <typename T>
void store_transposed(const T* src, int64_t width, int64_t b0, int64_t valid, int64_t lanes,
                      T* dst) {
  for (int64_t s = 0; s < valid; ++s) {
    T* row = dst + (b0 + s) * width;
    for (int64_t f = 0; f < width; ++f) row[f] = src[f * lanes + s];
  }
}

// The dense operator as Wt [in_features, out_pad] (row = input feature, columns zero-padded to
// out_pad), built core by core: M [I, J, D] x core [D, i, j, D'] -> [I * i, J * j, D'].
template <typename T>
std::vector<T> dense_transposed(const MPOShape& s, const T* const* cores, int64_t out_pad) {
  std::vector<T> m(cores[0], cores[0] + s.core_size(0));  // [1 * i, 1 * j, D]
  int64_t I = s.in_modes[0], J = s.out_modes[0];
  for (int64_t k = 1; k < s.num_cores(); ++k) {
    const int64_t D = s.bonds[k], i_k = s.in_modes[k], j_k = s.out_modes[k], D2 = s.bonds[k + 1];
    std::vector<T> next(static_cast<size_t>(I * i_k * J * j_k * D2), T(0));
    for (int64_t a = 0; a < I; ++a) {
      for (int64_t i = 0; i < i_k; ++i) {
        for (int64_t b = 0; b < J; ++b) {
          for (int64_t j = 0; j < j_k; ++j) {
            T* out = next.data() + (((a * i_k + i) * J + b) * j_k + j) * D2;
            for (int64_t d = 0; d < D; ++d) {
              const T v = m[(a * J + b) * D + d];
              axpy(out, v, cores[k] + ((d * i_k + i) * j_k + j) * D2, D2);
            }
          }
        }
      }
    }
    m.swap(next);
    I *= i_k;
    J *= j_k;
  }
  std::vector<T> wt(static_cast<size_t>(s.in_features * out_pad), T(0));
  for (int64_t i = 0; i < s.in_features; ++i) {
    std::copy(m.data() + i * s.out_features, m.data() + (i + 1) * s.out_features,
              wt.data() + i * out_pad);
  }
  return wt;
}

// y[rows, out] = x[rows, in] @ Wt for R rows and NV lane vectors of output columns per pass:
// the R * NV accumulators stay in registers while each Wt row segment is loaded once.
template <typename T, int R, int NV>
void gemm_rows(const T* x, int64_t in, const T* wt, int64_t out_pad, int64_t out, T* y) {
  constexpr int W = lanes<T>();
  using V = Vec<T, W>;
  for (int64_t j0 = 0; j0 < out_pad; j0 += NV * W) {
    V acc[R][NV] = {};
    const T* w = wt + j0;
    for (int64_t i = 0; i < in; ++i, w += out_pad) {
      V wv[NV];
      for (int v = 0; v < NV; ++v) wv[v] = ld<T, W>(w + v * W);
      for (int r = 0; r < R; ++r) {
        const T xv = x[r * in + i];
        for (int v = 0; v < NV; ++v) acc[r][v] += xv * wv[v];
      }
    }
    const int64_t width = std::min<int64_t>(NV * W, out - j0);
    for (int r = 0; r < R; ++r) {
      T* dst = y + r * out + j0;
      if (width == NV * W) {
        for (int v = 0; v < NV; ++v) st<T, W>(dst + v * W, acc[r][v]);
      } else {
        T buf[NV * W];
        for (int v = 0; v < NV; ++v) st<T, W>(buf + v * W, acc[r][v]);
        std::copy(buf, buf + width, dst);
      }
    }
  }
}

// Rows [b, end) of y = x @ Wt: blocks of R rows, then single rows.
template <typename T, int R, int NV>
void gemm(const T* x, int64_t in, const T* wt, int64_t out_pad, int64_t out, T* y, int64_t b,
          int64_t end) {
  for (; b + R <= end; b += R) gemm_rows<T, R, NV>(x + b * in, in, wt, out_pad, out, y + b * out);
  for (; b < end; ++b) gemm_rows<T, 1, NV>(x + b * in, in, wt, out_pad, out, y + b * out);
}

}  // namespace

template <typename T>
void mpo_forward(const MPOShape& s, const T* x, int64_t batch, const T* const* cores, T* y,
                 const Parallel& par) {
  const std::vector<Step> steps = steps_of(s);
  const double batch_d = static_cast<double>(batch);
  const bool dense = s.in_features * s.out_features <= kMPODenseLimit &&
                     dense_build_cost(s) + batch_d * s.in_features * s.out_features <
                         batch_d * contraction_cost(steps);
  if (dense) {
    // Form W once when that pays off over the batch, then run one register-blocked GEMM.
    // Narrow outputs (up to one lane vector, e.g. an adapter's rank) take 8 rows per pass.
    constexpr int W = lanes<T>();
    const bool narrow = s.out_features <= W;
    const int64_t cols = narrow ? W : 2 * W;
    const int64_t out_pad = (s.out_features + cols - 1) / cols * cols;
    const std::vector<T> wt = dense_transposed(s, cores, out_pad);
    constexpr int64_t kRowsPerChunk = 64;
    const int64_t chunks = (batch + kRowsPerChunk - 1) / kRowsPerChunk;
    parallel_chunks(par, chunks, [&](int, int64_t chunk) {
      const int64_t b = chunk * kRowsPerChunk, end = std::min(batch, b + kRowsPerChunk);
      if (narrow) {
        gemm<T, 8, 1>(x, s.in_features, wt.data(), out_pad, s.out_features, y, b, end);
      } else {
        gemm<T, 4, 2>(x, s.in_features, wt.data(), out_pad, s.out_features, y, b, end);
      }
    });
    return;
  }
  const int64_t bc = chunk_samples<T>(s, batch);
  const int64_t chunks = (batch + bc - 1) / bc;
  const int64_t buf = s.max_intermediate * bc;
  PerWorker<std::vector<T>> buffers(par, chunks);
  parallel_chunks(par, chunks, [&](int worker, int64_t chunk) {
    T* a = buffers.get(worker, static_cast<size_t>(2 * buf)).data();
    T* b = a + buf;
    const int64_t b0 = chunk * bc, valid = std::min(bc, batch - b0);
    load_transposed(x, s.in_features, b0, valid, bc, a);
    for (size_t k = 0; k < steps.size(); ++k) {
      step_forward(steps[k], bc, cores[k], a, b);
      std::swap(a, b);
    }
    store_transposed(a, s.out_features, b0, valid, bc, y);
  });
}

template <typename T>
void mpo_backward(const MPOShape& s, const T* x, int64_t batch, const T* const* cores,
                  const T* grad_y, T* grad_x, T* const* grad_cores, const Parallel& par) {
  const std::vector<Step> steps = steps_of(s);
  const int64_t K = s.num_cores();
  const int64_t bc = chunk_samples<T>(s, batch);
  const int64_t chunks = (batch + bc - 1) / bc;
  // Core gradients are summed per group of chunks (fixed by the batch), then in group order.
  constexpr int64_t kMaxGroups = 64;
  const int64_t per_group = (chunks + kMaxGroups - 1) / kMaxGroups;
  const int64_t groups = (chunks + per_group - 1) / per_group;
  std::vector<int64_t> core_offset(K + 1, 0);
  for (int64_t k = 0; k < K; ++k) core_offset[k + 1] = core_offset[k] + s.core_size(k);
  const int64_t n_params = core_offset[K];
  std::vector<double> group_grads(static_cast<size_t>(groups * n_params), 0.0);
  // Per worker: the inputs of every step (t_0 .. t_{K-1}), the last output, two gradient blocks.
  std::vector<int64_t> t_offset(K + 1, 0);
  for (int64_t k = 0; k < K; ++k) t_offset[k + 1] = t_offset[k] + steps[k].in_size() * bc;
  const int64_t g_size = s.max_intermediate * bc;
  const int64_t total = t_offset[K] + s.out_features * bc + 2 * g_size;
  PerWorker<std::vector<T>> buffers(par, groups);
  parallel_chunks(par, groups, [&](int worker, int64_t group) {
    T* base = buffers.get(worker, static_cast<size_t>(total)).data();
    T* out = base + t_offset[K];
    T* g_a = out + s.out_features * bc;
    T* g_b = g_a + g_size;
    double* gc = group_grads.data() + group * n_params;
    const int64_t first = group * per_group, last = std::min(chunks, first + per_group);
    for (int64_t chunk = first; chunk < last; ++chunk) {
      const int64_t b0 = chunk * bc, valid = std::min(bc, batch - b0);
      load_transposed(x, s.in_features, b0, valid, bc, base);
      for (int64_t k = 0; k < K; ++k) {
        T* dst = k + 1 < K ? base + t_offset[k + 1] : out;
        step_forward(steps[k], bc, cores[k], base + t_offset[k], dst);
      }
      load_transposed(grad_y, s.out_features, b0, valid, bc, g_a);
      for (int64_t k = K; k-- > 0;) {
        step_backward(steps[k], bc, cores[k], base + t_offset[k], g_a, g_b,
                      gc + core_offset[k]);
        std::swap(g_a, g_b);
      }
      store_transposed(g_a, s.in_features, b0, valid, bc, grad_x);
    }
  });
  for (int64_t k = 0; k < K; ++k) {
    for (int64_t p = 0; p < s.core_size(k); ++p) {
      double sum = 0;
      for (int64_t g = 0; g < groups; ++g) sum += group_grads[g * n_params + core_offset[k] + p];
      grad_cores[k][p] = static_cast<T>(sum);
    }
  }
}

QWTHN_MPO_INSTANTIATIONS(float)
QWTHN_MPO_INSTANTIATIONS(double)

}  // namespace QWTHN_KERNEL_NS
}  // namespace qwthn

#include "isa_end.h"
