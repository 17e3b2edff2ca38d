// MPOLinear: y = x @ W^T where W [out_features, in_features] is a matrix product operator given
// by its cores; core k has shape [D_{k-1}, in_modes[k], out_modes[k], D_k] with D_0 = D_K = 1,
// and feature indices are row-major over the modes (mode 0 most significant), as in
// qwthn_onnx.mpo.MPOLinear.
//
// Forward over a batch forms a small W once per call and runs a register-blocked GEMM; single
// rows, larger operators (and every backward) contract core by core without forming W, over chunks of samples
// laid out batch-innermost ([feature..., sample]), so every inner loop is a long contiguous
// multiply-add whatever the modes. Backward recomputes the chunk's intermediates and runs the
// contraction in reverse; core gradients are summed per fixed group of chunks and then in
// group order, so results do not depend on the number of threads.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <vector>

#include "parallel.h"

namespace qwthn {

// Invalid MPO modes, cores or arguments. The Python side maps it to qwthn_onnx.mpo.MPOError.
class MPOError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

constexpr int64_t kMaxMPOCores = 16;
constexpr int64_t kMaxMPOFeatures = int64_t{1} << 31;
// Largest per-sample intermediate (elements) the contraction may create.
constexpr int64_t kMaxMPOIntermediate = int64_t{1} << 26;
// Forward may form the dense W only when in_features * out_features is at most this (as the
// PyTorch layer does), and does when that costs fewer multiply-adds over the batch than the
// core-by-core contraction (not for a single token, say).
constexpr int64_t kMPODenseLimit = int64_t{1} << 22;

struct MPOShape {
  std::vector<int64_t> in_modes, out_modes;
  std::vector<int64_t> bonds;  // K + 1 entries; bonds[0] = bonds[K] = 1
  int64_t in_features = 1, out_features = 1;
  int64_t max_intermediate = 1;  // largest per-sample intermediate, elements

  int64_t num_cores() const { return static_cast<int64_t>(in_modes.size()); }
  int64_t core_size(int64_t k) const;
};

// Validates the modes and the core shapes (one rank-4 shape per core); throws MPOError naming
// the offending core or mode.
MPOShape mpo_shape(const std::vector<int64_t>& in_modes, const std::vector<int64_t>& out_modes,
                   const std::vector<std::vector<int64_t>>& core_shapes);

// x [batch, in_features] -> y [batch, out_features] (row-major). batch must be >= 1; non-finite
// values in x or the cores are rejected with MPOError.
template <typename T>
void mpo_forward(const MPOShape& s, const T* x, int64_t batch, const T* const* cores, T* y,
                 const Parallel& par);

// grad_y [batch, out_features] -> grad_x [batch, in_features] and grad_cores[k] (core k's
// shape, summed over the batch). Outputs are overwritten.
template <typename T>
void mpo_backward(const MPOShape& s, const T* x, int64_t batch, const T* const* cores,
                  const T* grad_y, T* grad_x, T* const* grad_cores, const Parallel& par);

#define QWTHN_MPO_KERNEL_DECLARATIONS                                                     \
  template <typename T>                                                                   \
  void mpo_forward(const MPOShape& s, const T* x, int64_t batch, const T* const* cores,   \
                   T* y, const Parallel& par);                                            \
  template <typename T>                                                                   \
  void mpo_backward(const MPOShape& s, const T* x, int64_t batch, const T* const* cores,  \
                    const T* grad_y, T* grad_x, T* const* grad_cores, const Parallel& par);

// Explicit instantiations for float and double, in whichever namespace the macro is used.
#define QWTHN_MPO_INSTANTIATIONS(T)                                                           \
  template void mpo_forward<T>(const MPOShape&, const T*, int64_t, const T* const*, T*,     \
                               const Parallel&);                                            \
  template void mpo_backward<T>(const MPOShape&, const T*, int64_t, const T* const*,        \
                                const T*, T*, T* const*, const Parallel&);

// One build per instruction set (mpo_kernel.cc compiled twice), arguments already validated.
namespace baseline {
QWTHN_MPO_KERNEL_DECLARATIONS
}
namespace avx2 {
QWTHN_MPO_KERNEL_DECLARATIONS
}

}  // namespace qwthn
