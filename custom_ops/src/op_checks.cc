#include "op_checks.h"

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <limits>

#include "messages.h"
#include "mpo.h"

namespace qwthn {

int64_t parse_max_qubits(const char* text) {
  if (!text || !*text) return 0;
  char* end = nullptr;
  errno = 0;
  const long long value = std::strtoll(text, &end, 10);
  if (errno != 0 || *end != '\0' || value < 1) {
    throw_message<OpError>("QWTHN_MAX_QUBITS='", text,
                           "' is not a positive integer; set it to the largest qubit count you "
                           "want to allow, e.g. 24");
  }
  return value;
}

DecodedCircuit decode_quantum_layer(const QuantumLayerAttributes& a, int64_t max_qubits) {
  if (a.encoding_version != 1) {
    throw_message<OpError>("attribute 'encoding_version' is ", a.encoding_version,
                           "; this library reads version 1 (upgrade qwthn-onnx to read newer "
                           "models)");
  }
  if (a.gates.size() % 3 != 0) {
    throw_message<OpError>("attribute 'gates' has ", a.gates.size(),
                           " values; it holds (opcode, wire0, wire1) triples");
  }
  if (a.params.size() % 2 != 0) {
    throw_message<OpError>("attribute 'params' has ", a.params.size(),
                           " values; it holds (kind, index) pairs");
  }
  // An out-of-range n_qubits is reported by decode_circuit, which checks it first.
  const int64_t limit = max_qubits > 0 ? max_qubits : kDefaultMaxQubits;
  const bool sane = a.n_qubits >= 1 && a.n_qubits <= std::min<int64_t>(limit, kHardMaxQubits);
  if (sane && a.observables.size() % static_cast<uint64_t>(a.n_qubits) != 0) {
    throw_message<OpError>("attribute 'observables' has ", a.observables.size(),
                           " values, not a multiple of n_qubits=", a.n_qubits);
  }
  const int64_t n_obs = sane ? static_cast<int64_t>(a.observables.size()) / a.n_qubits : 0;
  return decode_circuit(a.n_qubits, a.n_inputs, a.n_weights, a.gates.data(),
                        static_cast<int64_t>(a.gates.size() / 3), a.params.data(),
                        static_cast<int64_t>(a.params.size() / 2), a.constants.data(),
                        static_cast<int64_t>(a.constants.size()), a.observables.data(), n_obs,
                        a.n_qubits, max_qubits);
}

void check_mpo_modes(const std::vector<int64_t>& in_modes, const std::vector<int64_t>& out_modes) {
  // Placeholder bond-1 cores: mpo_shape checks the counts, signs and products of the modes.
  std::vector<std::vector<int64_t>> shapes;
  for (size_t k = 0; k < in_modes.size() && k < out_modes.size(); ++k) {
    shapes.push_back({1, in_modes[k], out_modes[k], 1});
  }
  mpo_shape(in_modes, out_modes, shapes);
}

void check_mpo_input_count(size_t n_inputs, size_t n_modes) {
  if (n_inputs != n_modes + 1) {
    throw_message<OpError>("got ", n_inputs > 0 ? n_inputs - 1 : 0, " cores; in_modes has ",
                           n_modes, " entries, one per core");
  }
}

int64_t element_count(const std::vector<int64_t>& dims, const std::string& name) {
  for (int64_t d : dims) {
    if (d < 0) throw_message<OpError>("input '", name, "' has a negative dimension");
  }
  int64_t count = 1;
  for (int64_t d : dims) {
    if (d == 0) return 0;
    if (count > std::numeric_limits<int64_t>::max() / d) {
      throw_message<OpError>("input '", name, "' has shape ", dims_str(dims),
                             "; its element count overflows int64");
    }
    count *= d;
  }
  return count;
}

int64_t batch_of(const std::vector<int64_t>& x_dims, const std::string& last_dim_name,
                 int64_t last_dim) {
  if (x_dims.empty() || x_dims.back() != last_dim) {
    throw_message<OpError>("input 'x' must have shape [..., ", last_dim_name, "=", last_dim,
                           "], got ", dims_str(x_dims));
  }
  // Counted over the leading dims, so a circuit without inputs (x [..., 0]) still has rows.
  const int64_t batch =
      element_count(std::vector<int64_t>(x_dims.begin(), x_dims.end() - 1), "x");
  if (batch == 0) {
    throw_message<OpError>("input 'x' is empty (shape ", dims_str(x_dims),
                           "); pass at least one row");
  }
  return batch;
}

std::vector<int64_t> output_dims(const std::vector<int64_t>& x_dims, int64_t last) {
  std::vector<int64_t> dims(x_dims.begin(), x_dims.end() - (x_dims.empty() ? 0 : 1));
  dims.push_back(last);
  return dims;
}

void check_weights_shape(const std::vector<int64_t>& dims, int64_t n_weights) {
  if (dims.size() != 1 || dims[0] != n_weights) {
    throw_message<OpError>("input 'weights' must have shape [n_weights=", n_weights, "], got ",
                           dims_str(dims));
  }
}

}  // namespace qwthn
