// libFuzzer target: MPOLinear's mode and core-shape validation (qwthn::mpo_shape), and the MPO
// kernel, forward and backward, on the shapes it accepts.
//
// Input format (little-endian; fuzz/native.py writes seeds from real MPO shapes in it):
//   int64 n_modes, int64 in_modes[n_modes], int64 out_modes[n_modes]
//   int64 n_cores, then per core: int64 rank, int64 dims[rank]
//   bytes: batch selector, then values for x, the cores and grad_y (signed byte / 32)
// Accepted shapes must be consistent (bond chain, products, core sizes); small ones run in both
// dtypes and instruction sets against a dense reference W built here, and the gradients
// against exact identities: <grad_x, x> = sum(g * y) (linear in x) and
// sum_k <grad_core_k, core_k> = K * sum(g * y) (linear in each core).
#include <cmath>
#include <cstdint>
#include <vector>

#include "fuzz_input.h"
#include "kernel.h"
#include "mpo.h"

namespace {

using qwthn_fuzz::oracle_failed;

void check_shape(const qwthn::MPOShape& s) {
  const int64_t K = s.num_cores();
  if (K < 1 || s.bonds.front() != 1 || s.bonds.back() != 1) oracle_failed("bad bond ends");
  int64_t in = 1, out = 1;
  for (int64_t k = 0; k < K; ++k) {
    if (s.in_modes[k] < 1 || s.out_modes[k] < 1 || s.bonds[k] < 1) oracle_failed("bad mode");
    in *= s.in_modes[k];
    out *= s.out_modes[k];
  }
  if (in != s.in_features || out != s.out_features) oracle_failed("wrong feature counts");
}

// W [out_features, in_features] from the cores, by the definition (row-major modes).
std::vector<double> dense(const qwthn::MPOShape& s, const std::vector<std::vector<double>>& c) {
  const int64_t K = s.num_cores();
  std::vector<double> W(static_cast<size_t>(s.out_features * s.in_features));
  std::vector<int64_t> im(K), om(K);
  for (int64_t o = 0; o < s.out_features; ++o) {
    for (int64_t i = 0; i < s.in_features; ++i) {
      for (int64_t k = K - 1, oo = o, ii = i; k >= 0; --k) {
        om[k] = oo % s.out_modes[k], oo /= s.out_modes[k];
        im[k] = ii % s.in_modes[k], ii /= s.in_modes[k];
      }
      std::vector<double> v(1, 1.0);
      for (int64_t k = 0; k < K; ++k) {
        const int64_t D0 = s.bonds[k], D1 = s.bonds[k + 1];
        std::vector<double> next(static_cast<size_t>(D1), 0.0);
        for (int64_t a = 0; a < D0; ++a) {
          for (int64_t b = 0; b < D1; ++b) {
            next[b] += v[a] * c[k][((a * s.in_modes[k] + im[k]) * s.out_modes[k] + om[k]) * D1 + b];
          }
        }
        v.swap(next);
      }
      W[o * s.in_features + i] = v[0];
    }
  }
  return W;
}

// y = x W^T over the batch.
std::vector<double> apply(const qwthn::MPOShape& s, int64_t batch, const std::vector<double>& W,
                          const std::vector<double>& x) {
  std::vector<double> y(static_cast<size_t>(batch * s.out_features), 0.0);
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t o = 0; o < s.out_features; ++o) {
      double sum = 0;
      for (int64_t i = 0; i < s.in_features; ++i) {
        sum += W[o * s.in_features + i] * x[b * s.in_features + i];
      }
      y[b * s.out_features + o] = sum;
    }
  }
  return y;
}

std::vector<double> absolute(std::vector<double> v) {
  for (double& x : v) x = std::fabs(x);
  return v;
}

// `reference` is y; `bound` is y with every core and x entry replaced by its magnitude, the
// scale of the rounding errors (cancellation can make y far smaller than its terms).
template <typename T>
void check_kernel(const qwthn::MPOShape& s, int64_t batch, const std::vector<double>& x,
                  const std::vector<std::vector<double>>& cores, const std::vector<double>& g,
                  const std::vector<double>& reference, const std::vector<double>& bound,
                  double tol) {
  const int64_t K = s.num_cores();
  const std::vector<T> xt(x.begin(), x.end()), gt(g.begin(), g.end());
  std::vector<std::vector<T>> ct;
  std::vector<const T*> cp;
  for (const auto& c : cores) ct.emplace_back(c.begin(), c.end());
  for (const auto& c : ct) cp.push_back(c.data());
  std::vector<T> y(reference.size());
  qwthn::mpo_forward<T>(s, xt.data(), batch, cp.data(), y.data(), qwthn::Parallel::threads(1));
  double gy = 0, scale = 0;
  for (size_t i = 0; i < y.size(); ++i) {
    if (!(std::fabs(y[i] - reference[i]) <= tol * (1 + bound[i]))) {
      oracle_failed("forward disagrees with the dense reference");
    }
    gy += g[i] * reference[i];
    scale += std::fabs(g[i]) * bound[i];
  }
  std::vector<T> gx(x.size());
  std::vector<std::vector<T>> gc;
  std::vector<T*> gp;
  for (const auto& c : cores) gc.emplace_back(c.size());
  for (auto& c : gc) gp.push_back(c.data());
  qwthn::mpo_backward<T>(s, xt.data(), batch, cp.data(), gt.data(), gx.data(), gp.data(),
                         qwthn::Parallel::threads(1));
  double dx = 0, dc = 0, sx = 0, sc = 0;
  for (size_t i = 0; i < x.size(); ++i) dx += gx[i] * x[i], sx += std::fabs(gx[i] * x[i]);
  for (int64_t k = 0; k < K; ++k) {
    for (size_t i = 0; i < cores[k].size(); ++i) {
      dc += gc[k][i] * cores[k][i], sc += std::fabs(gc[k][i] * cores[k][i]);
    }
  }
  if (!(std::fabs(dx - gy) <= tol * (1 + scale + sx))) oracle_failed("grad_x is wrong");
  if (!(std::fabs(dc - K * gy) <= tol * (1 + K * scale + sc))) oracle_failed("grad_cores wrong");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  qwthn_fuzz::Input in(data, size);
  const int64_t n_modes = in.clamp(in.i64(), 2);
  const std::vector<int64_t> in_modes = in.i64s(n_modes), out_modes = in.i64s(n_modes);
  const int64_t n_cores = in.clamp(in.i64());
  std::vector<std::vector<int64_t>> shapes;
  for (int64_t k = 0; k < n_cores && in.remaining() > 0; ++k) {
    shapes.push_back(in.i64s(in.clamp(in.i64())));
  }

  qwthn::MPOShape s;
  try {
    s = qwthn::mpo_shape(in_modes, out_modes, shapes);
  } catch (const qwthn::MPOError&) {
    return 0;  // rejected with a message: fine
  }
  check_shape(s);
  int64_t total = 0;
  for (int64_t k = 0; k < s.num_cores(); ++k) total += s.core_size(k);
  if (s.in_features > 256 || s.out_features > 256 || total > 4096 ||
      s.max_intermediate > 4096) {
    return 0;
  }
  const int64_t batch = 1 + in.byte() % 33;  // both sides of the dense-W choice
  const std::vector<double> x = in.values<double>(static_cast<size_t>(batch * s.in_features), 32);
  std::vector<std::vector<double>> cores;
  for (int64_t k = 0; k < s.num_cores(); ++k) {
    cores.push_back(in.values<double>(static_cast<size_t>(s.core_size(k)), 32));
  }
  const std::vector<double> g = in.values<double>(static_cast<size_t>(batch * s.out_features), 32);
  std::vector<std::vector<double>> abs_cores;
  for (const auto& c : cores) abs_cores.push_back(absolute(c));
  const std::vector<double> reference = apply(s, batch, dense(s, cores), x);
  const std::vector<double> bound = apply(s, batch, dense(s, abs_cores), absolute(x));
  for (const char* isa : {"baseline", "avx2"}) {
    if (isa[0] == 'a' && !qwthn::avx2_available()) continue;
    qwthn::set_isa(isa);
    check_kernel<double>(s, batch, x, cores, g, reference, bound, 1e-9);
    check_kernel<float>(s, batch, x, cores, g, reference, bound, 1e-3);
  }
  qwthn::set_isa("auto");
  return 0;
}
