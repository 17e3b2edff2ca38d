// Run-time choice between the kernel builds (see kernel.cc).
#include <atomic>

#include "kernel.h"

namespace qwthn {

namespace {

// 0: baseline, 1: avx2
int detect() { return avx2_available() ? 1 : 0; }

std::atomic<int>& selected() {
  static std::atomic<int> isa{detect()};
  return isa;
}

}  // namespace

bool avx2_available() {
#if defined(QWTHN_HAVE_AVX2) && (defined(__x86_64__) || defined(__i386__)) && \
    (defined(__GNUC__) || defined(__clang__))
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

bool avx2_active() { return selected().load() == 1; }

std::string active_isa() { return avx2_active() ? "avx2" : "baseline"; }

void set_isa(const std::string& name) {
  if (name == "auto") {
    selected() = detect();
  } else if (name == "baseline") {
    selected() = 0;
  } else if (name == "avx2") {
    if (!avx2_available()) {
      throw CircuitError("set_isa: AVX2+FMA is not available (CPU or build); use 'baseline'");
    }
    selected() = 1;
  } else {
    throw CircuitError("set_isa: unknown instruction set '" + name +
                       "'; use 'auto', 'baseline' or 'avx2'");
  }
}

template <typename T>
void forward(const DecodedCircuit& c, const T* inputs, int64_t batch, int64_t n_in_cols,
             const T* weights, int64_t n_weights_given, T* out, const Parallel& par) {
#if defined(QWTHN_HAVE_AVX2)
  if (selected().load() == 1) {
    return avx2::forward<T>(c, inputs, batch, n_in_cols, weights, n_weights_given, out, par);
  }
#endif
  baseline::forward<T>(c, inputs, batch, n_in_cols, weights, n_weights_given, out, par);
}

template <typename T>
void backward(const DecodedCircuit& c, const T* inputs, int64_t batch, int64_t n_in_cols,
              const T* weights, int64_t n_weights_given, const T* grad_out, T* grad_inputs,
              T* grad_weights, const Parallel& par) {
#if defined(QWTHN_HAVE_AVX2)
  if (selected().load() == 1) {
    return avx2::backward<T>(c, inputs, batch, n_in_cols, weights, n_weights_given, grad_out,
                             grad_inputs, grad_weights, par);
  }
#endif
  baseline::backward<T>(c, inputs, batch, n_in_cols, weights, n_weights_given, grad_out,
                        grad_inputs, grad_weights, par);
}

template <typename T>
std::shared_ptr<const PreparedCircuit> prepare(const DecodedCircuit& c, const T* weights,
                                               int64_t n_weights_given) {
#if defined(QWTHN_HAVE_AVX2)
  if (selected().load() == 1) return avx2::prepare<T>(c, weights, n_weights_given);
#endif
  return baseline::prepare<T>(c, weights, n_weights_given);
}

QWTHN_KERNEL_INSTANTIATIONS(float)
QWTHN_KERNEL_INSTANTIATIONS(double)

}  // namespace qwthn
