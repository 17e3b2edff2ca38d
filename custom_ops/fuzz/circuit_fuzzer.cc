// libFuzzer target: the flat circuit encoding (qwthn::decode_circuit), and the kernels on what
// it accepts.
//
// Input format (little-endian; fuzz/native.py writes seeds from real encodings in it):
//   int64 n_qubits, n_inputs, n_weights, max_qubits,
//         n_gates, n_params, n_consts, n_obs, obs_width
//   int64 gates[n_gates * 3], int64 params[n_params * 2], float64 constants[n_consts],
//   int64 observables[n_obs * obs_width]
//   bytes: batch selector, then values for inputs, weights and grad_out (signed byte / 16)
// Counts are passed to decode_circuit as given (negative ones too) but never beyond the bytes
// present. A circuit it accepts must satisfy what it promises (wires, parameter indices in
// range); when it is small, forward and adjoint backward run on a batch in both dtypes and
// both instruction sets, against oracles: expectations lie in [-1, 1], the builds and the
// prepared path agree, and the gradient matches a central difference.
#include <cmath>
#include <cstdint>
#include <vector>

#include "circuit.h"
#include "fuzz_input.h"
#include "kernel.h"

namespace {

using qwthn_fuzz::oracle_failed;

void check_decoded(const qwthn::DecodedCircuit& c, int64_t n_consts) {
  for (const qwthn::DecodedGate& g : c.gates) {
    const qwthn::GateInfo& info = qwthn::gate_info(g.opcode);
    if (g.w0 < 0 || g.w0 >= c.n_qubits) oracle_failed("accepted a gate wire out of range");
    if (info.n_qubits == 2 && (g.w1 < 0 || g.w1 >= c.n_qubits || g.w1 == g.w0)) {
      oracle_failed("accepted a bad second wire");
    }
    if (info.n_params == 1) {
      const int64_t size = g.kind == qwthn::kInput    ? c.n_inputs
                           : g.kind == qwthn::kWeight ? c.n_weights
                                                      : n_consts;
      if (g.index < 0 || g.index >= size) oracle_failed("accepted a parameter index out of range");
      if (g.kind == qwthn::kConst && !std::isfinite(g.value)) oracle_failed("non-finite constant");
    }
  }
  if (c.observables.empty()) oracle_failed("accepted a circuit without observables");
}

bool close(double a, double b, double tol) { return std::fabs(a - b) <= tol * (1 + std::fabs(b)); }

template <typename T>
std::vector<T> forward(const qwthn::DecodedCircuit& c, const std::vector<T>& x, int64_t batch,
                       const std::vector<T>& w) {
  std::vector<T> y(static_cast<size_t>(batch) * c.observables.size());
  qwthn::forward<T>(c, x.data(), batch, c.n_inputs, w.data(), c.n_weights, y.data(),
                    qwthn::Parallel::threads(1));
  return y;
}

double weighted(const std::vector<double>& y, const std::vector<double>& g) {
  double s = 0;
  for (size_t i = 0; i < y.size(); ++i) s += y[i] * g[i];
  return s;
}

void run_kernels(const qwthn::DecodedCircuit& c, qwthn_fuzz::Input& in) {
  const int64_t batch = 1 + in.byte() % 9;  // crosses the kernels' lane tiles
  const auto n_x = static_cast<size_t>(batch * c.n_inputs);
  const auto n_y = static_cast<size_t>(batch) * c.observables.size();
  const std::vector<double> x = in.values<double>(n_x, 16);
  const std::vector<double> w = in.values<double>(static_cast<size_t>(c.n_weights), 8);
  const std::vector<double> g = in.values<double>(n_y, 16);
  const std::vector<float> xf(x.begin(), x.end()), wf(w.begin(), w.end());

  std::vector<double> reference;
  for (const char* isa : {"baseline", "avx2"}) {
    if (isa[0] == 'a' && !qwthn::avx2_available()) continue;
    qwthn::set_isa(isa);
    const std::vector<double> y = forward(c, x, batch, w);
    for (double v : y) {
      if (!(std::fabs(v) <= 1 + 1e-9)) oracle_failed("an expectation value outside [-1, 1]");
    }
    if (reference.empty()) reference = y;
    for (size_t i = 0; i < y.size(); ++i) {
      if (!close(y[i], reference[i], 1e-9)) oracle_failed("the ISA builds disagree");
    }
    std::vector<double> yp(n_y);
    qwthn::prepare<double>(c, w.data(), c.n_weights)
        ->forward(x.data(), batch, c.n_inputs, yp.data(), qwthn::Parallel::threads(1));
    for (size_t i = 0; i < y.size(); ++i) {
      if (!close(yp[i], y[i], 1e-12)) oracle_failed("prepared and direct forward disagree");
    }
    const std::vector<float> yf = forward(c, xf, batch, wf);
    for (size_t i = 0; i < y.size(); ++i) {
      if (!close(yf[i], y[i], 1e-3)) oracle_failed("float32 and float64 disagree");
    }

    std::vector<double> gx(n_x), gw(static_cast<size_t>(c.n_weights));
    qwthn::backward<double>(c, x.data(), batch, c.n_inputs, w.data(), c.n_weights, g.data(),
                            gx.data(), gw.data(), qwthn::Parallel::threads(1));
    // d/dt sum(g * y(x + t, w + t)) = sum(grad_x) + sum(grad_w): checked by a central
    // difference where the circuit is shallow enough for its error bound to be tight.
    int64_t uses = 0;
    for (const qwthn::DecodedGate& gate : c.gates) uses += gate.kind == qwthn::kInput ||
                                                            gate.kind == qwthn::kWeight;
    double directional = 0, scale = 0;
    for (double v : gx) directional += v;
    for (double v : gw) directional += v;
    for (double v : g) scale += std::fabs(v);
    if (!std::isfinite(directional)) oracle_failed("a non-finite gradient");
    if (uses <= 32) {
      const double h = 1e-5;
      std::vector<double> xp(x), xm(x), wp(w), wm(w);
      for (double& v : xp) v += h;
      for (double& v : xm) v -= h;
      for (double& v : wp) v += h;
      for (double& v : wm) v -= h;
      const double numeric =
          (weighted(forward(c, xp, batch, wp), g) - weighted(forward(c, xm, batch, wm), g)) /
          (2 * h);
      if (std::fabs(numeric - directional) > 1e-5 * (1 + scale)) {
        oracle_failed("the adjoint gradient disagrees with a central difference");
      }
    }
  }
  qwthn::set_isa("auto");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  qwthn_fuzz::Input in(data, size);
  const int64_t n_qubits = in.i64(), n_inputs = in.i64(), n_weights = in.i64();
  const int64_t max_qubits = in.i64();
  int64_t n_gates = in.i64(), n_params = in.i64(), n_consts = in.i64(), n_obs = in.i64();
  const int64_t obs_width = in.i64();
  n_gates = in.clamp(n_gates, 3);
  const std::vector<int64_t> gates = in.i64s(n_gates > 0 ? 3 * n_gates : 0);
  n_params = in.clamp(n_params, 2);
  const std::vector<int64_t> params = in.i64s(n_params > 0 ? 2 * n_params : 0);
  n_consts = in.clamp(n_consts);
  const std::vector<double> constants = in.f64s(n_consts);
  n_obs = in.clamp(n_obs, obs_width);
  const std::vector<int64_t> observables =
      in.i64s(obs_width > 0 && n_obs > 0 ? n_obs * obs_width : 0);

  qwthn::DecodedCircuit c;
  try {
    c = qwthn::decode_circuit(n_qubits, n_inputs, n_weights, gates.data(), n_gates,
                              params.data(), n_params, constants.data(), n_consts,
                              observables.data(), n_obs, obs_width, max_qubits);
  } catch (const qwthn::CircuitError&) {
    return 0;  // rejected with a message: fine
  }
  check_decoded(c, n_consts);
  if (c.n_qubits <= 8 && c.gates.size() <= 256 && c.n_inputs <= 64 && c.n_weights <= 256 &&
      c.observables.size() <= 16) {
    run_kernels(c, in);  // any exception escaping here is a finding
  }
  return 0;
}
