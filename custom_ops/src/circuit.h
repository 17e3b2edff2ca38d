// Decoding and validation of the flat circuit encoding (qwthn_onnx/circuit/encoding.py, v1).
//
// Every count, opcode, wire, parameter kind/index, constant and Pauli code is checked before it
// is used; problems are reported by throwing qwthn::CircuitError with a message naming the
// offending entry. Nothing here reads outside the arrays it is given (their sizes are explicit).
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace qwthn {

// Any invalid circuit or argument. The Python side maps it to qwthn_onnx.circuit.CircuitError.
class CircuitError : public std::invalid_argument {
 public:
  using std::invalid_argument::invalid_argument;
};

// Opcodes: index in qwthn_onnx.circuit.encoding.GATE_CODES (append-only).
enum Opcode : int {
  kRX = 0, kRY, kRZ, kH, kX, kY, kZ, kS, kSdg, kT, kTdg, kP,
  kCX, kCY, kCZ, kSwap, kCRX, kCRY, kCRZ, kCP, kRZZ, kRXX, kRYY,
  kNumOpcodes
};

struct GateInfo {
  const char* name;
  int n_qubits;
  int n_params;  // 0 or 1
};

const GateInfo& gate_info(int opcode);

constexpr int kDefaultMaxQubits = 20;
constexpr int kHardMaxQubits = 30;  // basis indices and buffer sizes stay far from overflow

enum ParamKind : int { kInput = 0, kWeight = 1, kConst = 2 };

struct DecodedGate {
  int opcode;
  int w0;
  int w1;          // -1 for one-qubit gates
  int kind;        // parameter kind, -1 when the gate takes no parameter
  int64_t index;   // input/weight index, or constant index (kind == kConst)
  double value;    // constant angle when kind == kConst
};

struct Observable {
  uint64_t flip;  // qubits acted on by X or Y
  uint64_t yz;    // qubits acted on by Y or Z (sign (-1)^bit)
  int n_y;        // number of Y factors (phase i^n_y)
};

struct DecodedCircuit {
  int n_qubits = 0;
  int64_t n_inputs = 0;
  int64_t n_weights = 0;
  std::vector<DecodedGate> gates;
  std::vector<Observable> observables;
};

// Arrays as in EncodedCircuit: gates [n_gates, 3], params [n_params, 2], constants [n_consts],
// observables [n_obs, n_qubits] (row-major int64). max_qubits <= 0 means the default (20).
DecodedCircuit decode_circuit(int64_t n_qubits, int64_t n_inputs, int64_t n_weights,
                              const int64_t* gates, int64_t n_gates, const int64_t* params,
                              int64_t n_params, const double* constants, int64_t n_consts,
                              const int64_t* observables, int64_t n_obs, int64_t obs_width,
                              int64_t max_qubits = 0);

}  // namespace qwthn
