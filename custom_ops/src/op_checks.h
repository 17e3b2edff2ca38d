// The ai.qwthn ops' attribute and shape validation, apart from onnxruntime (ort_ops.cc reads the
// attributes and tensors through its C API and calls these), so fuzz/op_attributes_fuzzer.cc can
// drive exactly the checks a session runs, on plain vectors.
//
// Problems throw OpError (or CircuitError / MPOError from the decoders) with a message naming
// the attribute or input and what it must be; onnxruntime reports it prefixed with the node.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "circuit.h"

namespace qwthn {

// An invalid attribute or input of an ai.qwthn node.
class OpError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

// QuantumLayer's attributes as read from the node (absent INTS attributes are empty).
struct QuantumLayerAttributes {
  int64_t encoding_version = 0;
  int64_t n_qubits = 0;
  int64_t n_inputs = 0;
  int64_t n_weights = 0;
  std::vector<int64_t> gates;        // (opcode, wire0, wire1) triples
  std::vector<int64_t> params;       // (kind, index) pairs
  std::vector<int64_t> observables;  // n_obs rows of n_qubits Pauli codes
  std::vector<double> constants;
};

// $QWTHN_MAX_QUBITS as given (nullptr or empty: 0, the default limit); anything but a positive
// integer throws OpError.
int64_t parse_max_qubits(const char* text);

// Checks the attributes' layout and decodes the circuit (decode_circuit checks the rest).
DecodedCircuit decode_quantum_layer(const QuantumLayerAttributes& a, int64_t max_qubits);

// MPOLinear's modes, checked when the kernel is created (the cores are checked at run time).
void check_mpo_modes(const std::vector<int64_t>& in_modes, const std::vector<int64_t>& out_modes);

// The node must get x and one core per mode pair.
void check_mpo_input_count(size_t n_inputs, size_t n_modes);

// Number of elements of a tensor of these dims; negative dims throw OpError.
int64_t element_count(const std::vector<int64_t>& dims, const std::string& name);

// Leading dims of x collapsed into one batch: x must be [..., last_dim] with at least one row.
int64_t batch_of(const std::vector<int64_t>& x_dims, const std::string& last_dim_name,
                 int64_t last_dim);

// x's leading dims followed by `last`.
std::vector<int64_t> output_dims(const std::vector<int64_t>& x_dims, int64_t last);

// QuantumLayer's 'weights' input must be [n_weights].
void check_weights_shape(const std::vector<int64_t>& dims, int64_t n_weights);

}  // namespace qwthn
