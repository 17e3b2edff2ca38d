// libFuzzer target: the op-level validation libqwthn_ops runs on a node's attributes when a
// session is created and on its tensors' shapes when it runs (src/op_checks.h), without
// onnxruntime: the same functions, fed the plain vectors the C API would hand over.
//
// Input format (little-endian; fuzz/native.py writes seeds from real nodes in it). A list is
// int64 length + that many int64 values (float64 for constants).
//   byte op: even = QuantumLayer, odd = MPOLinear
//   QuantumLayer: int64 encoding_version, n_qubits, n_inputs, n_weights;
//                 lists gates, params, observables, constants; list max_qubits text (bytes,
//                 one per int64); lists x dims, weights dims
//   MPOLinear:    lists in_modes, out_modes; int64 node input count; int64 n_cores, then per
//                 core a list of dims; list x dims
// Oracles: what is accepted is consistent (batch * trailing dim = element count, output dims
// keep x's leading dims), and nothing but the documented error types is ever thrown.
#include <cstdint>
#include <string>
#include <vector>

#include "fuzz_input.h"
#include "mpo.h"
#include "op_checks.h"

namespace {

using qwthn_fuzz::oracle_failed;

// x's batch and the output shape, checked against each other.
void check_rows(const std::vector<int64_t>& x_dims, const std::string& name, int64_t last_dim,
                int64_t out_last) {
  const int64_t batch = qwthn::batch_of(x_dims, name, last_dim);
  const int64_t count = qwthn::element_count(x_dims, "x");
  if (batch < 1 || (last_dim > 0 && count / last_dim != batch)) oracle_failed("wrong batch");
  const std::vector<int64_t> out = qwthn::output_dims(x_dims, out_last);
  if (out.size() != x_dims.size() || out.back() != out_last) oracle_failed("wrong output dims");
  try {
    if (qwthn::element_count(out, "y") / out_last != batch) oracle_failed("wrong output size");
  } catch (const qwthn::OpError&) {  // an output too large to count: onnxruntime refuses it
  }
}

void quantum_layer(qwthn_fuzz::Input& in) {
  qwthn::QuantumLayerAttributes a;
  a.encoding_version = in.i64();
  a.n_qubits = in.i64();
  a.n_inputs = in.i64();
  a.n_weights = in.i64();
  a.gates = in.list();
  a.params = in.list();
  a.observables = in.list();
  a.constants = in.f64s(in.clamp(in.i64()));
  std::string text;
  for (int64_t c : in.list()) text.push_back(static_cast<char>(c));
  const std::vector<int64_t> x_dims = in.list(), w_dims = in.list();

  qwthn::DecodedCircuit c;
  try {
    c = qwthn::decode_quantum_layer(a, qwthn::parse_max_qubits(text.c_str()));
  } catch (const qwthn::OpError&) {
    return;
  } catch (const qwthn::CircuitError&) {
    return;
  }
  if (c.n_inputs != a.n_inputs || c.n_weights != a.n_weights ||
      static_cast<int64_t>(c.observables.size() * c.n_qubits) !=
          static_cast<int64_t>(a.observables.size())) {
    oracle_failed("the decoded circuit does not match its attributes");
  }
  try {
    qwthn::check_weights_shape(w_dims, c.n_weights);
    check_rows(x_dims, "n_inputs", c.n_inputs, static_cast<int64_t>(c.observables.size()));
  } catch (const qwthn::OpError&) {
  }
}

void mpo_linear(qwthn_fuzz::Input& in) {
  const std::vector<int64_t> in_modes = in.list(), out_modes = in.list();
  const int64_t n_inputs = in.i64();
  const int64_t n_cores = in.clamp(in.i64());
  std::vector<std::vector<int64_t>> shapes;
  for (int64_t k = 0; k < n_cores && in.remaining() > 0; ++k) shapes.push_back(in.list());
  const std::vector<int64_t> x_dims = in.list();
  try {
    qwthn::check_mpo_modes(in_modes, out_modes);
    qwthn::check_mpo_input_count(static_cast<size_t>(n_inputs), in_modes.size());
    const qwthn::MPOShape s = qwthn::mpo_shape(in_modes, out_modes, shapes);
    check_rows(x_dims, "prod(in_modes)", s.in_features, s.out_features);
  } catch (const qwthn::OpError&) {
  } catch (const qwthn::MPOError&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  qwthn_fuzz::Input in(data, size);
  if (in.byte() % 2 == 0) {
    quantum_layer(in);
  } else {
    mpo_linear(in);
  }
  return 0;
}
