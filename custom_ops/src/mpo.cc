// MPOLinear: validation of modes, cores and arguments, and the choice of ISA build (mpo.h).
#include "mpo.h"

#include <cmath>
#include <string>

#include "kernel.h"
#include "messages.h"

namespace qwthn {

namespace {

template <typename... Args>
[[noreturn]] void fail(const Args&... args) {
  throw_message<MPOError>("MPOLinear: ", args...);
}

// Product of positive factors, failing once it passes `limit` (no overflow).
int64_t checked_product(int64_t a, int64_t b, int64_t limit, const char* what) {
  if (b > 0 && a > limit / b) fail(what, " exceeds ", limit);
  return a * b;
}

template <typename T>
void check_finite(const char* name, const T* p, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    if (!std::isfinite(p[i])) fail(name, " contains a non-finite value (", p[i], " at flat index ",
                                   i, ")");
  }
}

template <typename T>
void check_args(const MPOShape& s, const T* x, int64_t batch, const T* const* cores) {
  if (batch < 1) {
    fail("x is empty (batch size ", batch, "); pass at least one row");
  }
  check_finite("x", x, batch * s.in_features);
  for (int64_t k = 0; k < s.num_cores(); ++k) {
    const std::string name = "core " + std::to_string(k);
    check_finite(name.c_str(), cores[k], s.core_size(k));
  }
}

}  // namespace

int64_t MPOShape::core_size(int64_t k) const {
  return bonds[k] * in_modes[k] * out_modes[k] * bonds[k + 1];
}

MPOShape mpo_shape(const std::vector<int64_t>& in_modes, const std::vector<int64_t>& out_modes,
                   const std::vector<std::vector<int64_t>>& core_shapes) {
  const auto K = static_cast<int64_t>(in_modes.size());
  if (K < 1 || K > kMaxMPOCores) {
    fail("in_modes has ", K, " entries; an MPO has 1..", kMaxMPOCores, " cores");
  }
  if (static_cast<int64_t>(out_modes.size()) != K) {
    fail("in_modes has ", K, " entries but out_modes has ", out_modes.size(),
         "; give one (in, out) mode pair per core");
  }
  if (static_cast<int64_t>(core_shapes.size()) != K) {
    fail("got ", core_shapes.size(), " cores for ", K, " mode pairs; pass one core per mode");
  }
  MPOShape s;
  s.in_modes = in_modes;
  s.out_modes = out_modes;
  s.bonds.assign(K + 1, 1);
  for (int64_t k = 0; k < K; ++k) {  // modes first: they come from attributes
    if (in_modes[k] < 1 || out_modes[k] < 1) {
      fail("mode ", k, " is (in ", in_modes[k], ", out ", out_modes[k],
           "); modes must be positive");
    }
    s.in_features = checked_product(s.in_features, in_modes[k], kMaxMPOFeatures, "prod(in_modes)");
    s.out_features =
        checked_product(s.out_features, out_modes[k], kMaxMPOFeatures, "prod(out_modes)");
  }
  for (int64_t k = 0; k < K; ++k) {
    const std::vector<int64_t>& shape = core_shapes[k];
    if (shape.size() != 4) {
      fail("core ", k, " has shape ", dims_str(shape),
           "; cores are rank 4: [bond_in, in_mode, out_mode, bond_out]");
    }
    for (int64_t d : shape) {
      if (d < 1) fail("core ", k, " has shape ", dims_str(shape), "; sizes must be positive");
    }
    if (shape[1] != in_modes[k] || shape[2] != out_modes[k]) {
      fail("core ", k, " has shape ", dims_str(shape), "; in_modes[", k, "]=", in_modes[k],
           " and out_modes[", k, "]=", out_modes[k], " need [D, ", in_modes[k], ", ",
           out_modes[k], ", D']");
    }
    if (shape[0] != s.bonds[k]) {
      fail("core ", k, " has bond_in ", shape[0], " but ",
           k == 0 ? std::string("the first core's must be 1")
                  : "core " + std::to_string(k - 1) + " has bond_out " +
                        std::to_string(s.bonds[k]));
    }
    s.bonds[k + 1] = shape[3];
  }
  if (s.bonds[K] != 1) fail("the last core has bond_out ", s.bonds[K], "; it must be 1");
  // Per-sample intermediates: after core k, prod(out[<=k]) * D_{k+1} * prod(in[>k]).
  int64_t J = 1, R = s.in_features;
  s.max_intermediate = std::max(s.in_features, s.out_features);
  for (int64_t k = 0; k < K; ++k) {
    R /= in_modes[k];
    J *= out_modes[k];
    int64_t size = checked_product(J, s.bonds[k + 1], kMaxMPOIntermediate, "an intermediate");
    size = checked_product(size, R, kMaxMPOIntermediate, "an intermediate");
    // The input of step k as well: prod(out[<k]) * D_k * prod(in[>=k]).
    int64_t before = checked_product(J / out_modes[k], s.bonds[k], kMaxMPOIntermediate,
                                     "an intermediate");
    before = checked_product(before, R * in_modes[k], kMaxMPOIntermediate, "an intermediate");
    s.max_intermediate = std::max({s.max_intermediate, size, before});
  }
  return s;
}

template <typename T>
void mpo_forward(const MPOShape& s, const T* x, int64_t batch, const T* const* cores, T* y,
                 const Parallel& par) {
  check_args(s, x, batch, cores);
#if defined(QWTHN_HAVE_AVX2)
  if (avx2_active()) return avx2::mpo_forward<T>(s, x, batch, cores, y, par);
#endif
  baseline::mpo_forward<T>(s, x, batch, cores, y, par);
}

template <typename T>
void mpo_backward(const MPOShape& s, const T* x, int64_t batch, const T* const* cores,
                  const T* grad_y, T* grad_x, T* const* grad_cores, const Parallel& par) {
  check_args(s, x, batch, cores);
#if defined(QWTHN_HAVE_AVX2)
  if (avx2_active()) {
    return avx2::mpo_backward<T>(s, x, batch, cores, grad_y, grad_x, grad_cores, par);
  }
#endif
  baseline::mpo_backward<T>(s, x, batch, cores, grad_y, grad_x, grad_cores, par);
}

QWTHN_MPO_INSTANTIATIONS(float)
QWTHN_MPO_INSTANTIATIONS(double)

}  // namespace qwthn
