#include "circuit.h"

#include <cmath>

#include "messages.h"

namespace qwthn {

namespace {

const GateInfo kGateTable[kNumOpcodes] = {
    {"rx", 1, 1},   {"ry", 1, 1},  {"rz", 1, 1},   {"h", 1, 0},     {"x", 1, 0},
    {"y", 1, 0},    {"z", 1, 0},   {"s", 1, 0},    {"sdg", 1, 0},   {"t", 1, 0},
    {"tdg", 1, 0},  {"p", 1, 1},   {"cx", 2, 0},   {"cy", 2, 0},    {"cz", 2, 0},
    {"swap", 2, 0}, {"crx", 2, 1}, {"cry", 2, 1},  {"crz", 2, 1},   {"cp", 2, 1},
    {"rzz", 2, 1},  {"rxx", 2, 1}, {"ryy", 2, 1},
};

template <typename... Args>
[[noreturn]] void fail(const Args&... args) {
  throw_message<CircuitError>("encoded circuit: ", args...);
}

}  // namespace

const GateInfo& gate_info(int opcode) {
  if (opcode < 0 || opcode >= kNumOpcodes) fail("opcode ", opcode, " is not known");
  return kGateTable[opcode];
}

DecodedCircuit decode_circuit(int64_t n_qubits, int64_t n_inputs, int64_t n_weights,
                              const int64_t* gates, int64_t n_gates, const int64_t* params,
                              int64_t n_params, const double* constants, int64_t n_consts,
                              const int64_t* observables, int64_t n_obs, int64_t obs_width,
                              int64_t max_qubits) {
  const int64_t limit = max_qubits > 0 ? max_qubits : kDefaultMaxQubits;
  if (n_qubits > kHardMaxQubits && n_qubits <= limit) {
    fail("n_qubits is ", n_qubits, "; this kernel supports at most ", kHardMaxQubits);
  }
  if (n_qubits < 1 || n_qubits > limit) {
    fail("n_qubits is ", n_qubits, "; it must be in 1..", limit,
         " (one state vector has 2^n_qubits amplitudes per sample; raise the limit with "
         "max_qubits / $QWTHN_MAX_QUBITS if you have the memory)");
  }
  if (n_inputs < 0) fail("n_inputs must be >= 0, got ", n_inputs);
  if (n_weights < 0) fail("n_weights must be >= 0, got ", n_weights);
  if (n_gates < 0 || n_params < 0 || n_consts < 0 || n_obs < 0) {
    fail("negative array length (gates ", n_gates, ", params ", n_params, ", constants ",
         n_consts, ", observables ", n_obs, ")");
  }
  if ((n_gates > 0 && !gates) || (n_params > 0 && !params) || (n_consts > 0 && !constants) ||
      (n_obs > 0 && !observables)) {
    fail("null array pointer");
  }
  if (obs_width != n_qubits) {
    fail("'observables' rows have ", obs_width, " entries; they need n_qubits=", n_qubits);
  }
  if (n_obs < 1) fail("no observables; at least one Pauli string is needed");

  DecodedCircuit c;
  c.n_qubits = static_cast<int>(n_qubits);
  c.n_inputs = n_inputs;
  c.n_weights = n_weights;
  c.gates.reserve(static_cast<size_t>(n_gates));
  int64_t cursor = 0;
  for (int64_t g = 0; g < n_gates; ++g) {
    const int64_t code = gates[3 * g], w0 = gates[3 * g + 1], w1 = gates[3 * g + 2];
    if (code < 0 || code >= kNumOpcodes) {
      fail("gate ", g, " has opcode ", code, "; known opcodes are 0..", kNumOpcodes - 1);
    }
    const GateInfo& info = kGateTable[code];
    if (w0 < 0 || w0 >= n_qubits) {
      fail("gate ", g, " (", info.name, ") wire0 ", w0, " is out of range for a ", n_qubits,
           "-qubit circuit (valid wires are 0..", n_qubits - 1, ")");
    }
    if (info.n_qubits == 1) {
      if (w1 != -1) fail("one-qubit gate ", g, " (", info.name, ") has wire1 ", w1, "; use -1");
    } else {
      if (w1 < 0 || w1 >= n_qubits) {
        fail("gate ", g, " (", info.name, ") wire1 ", w1, " is out of range for a ", n_qubits,
             "-qubit circuit (valid wires are 0..", n_qubits - 1, ")");
      }
      if (w1 == w0) fail("gate ", g, " (", info.name, ") repeats wire ", w0);
    }
    DecodedGate d{static_cast<int>(code), static_cast<int>(w0), static_cast<int>(w1), -1, 0, 0.0};
    if (info.n_params == 1) {
      if (cursor >= n_params) {
        fail("'params' has ", n_params, " entries, but gate ", g, " (", info.name,
             ") needs parameter ", cursor);
      }
      const int64_t kind = params[2 * cursor], index = params[2 * cursor + 1];
      ++cursor;
      if (kind == kConst) {
        if (index < 0 || index >= n_consts) {
          fail("gate ", g, " (", info.name, ") uses constant ", index, ", but 'constants' has ",
               n_consts, " values");
        }
        d.value = constants[index];
        if (!std::isfinite(d.value)) {
          fail("gate ", g, " (", info.name, ") constant angle ", d.value, " is not finite");
        }
      } else if (kind == kInput || kind == kWeight) {
        const int64_t size = kind == kInput ? n_inputs : n_weights;
        if (index < 0 || index >= size) {
          fail("gate ", g, " (", info.name, ") ", kind == kInput ? "input" : "weight",
               " index ", index, " is out of range; the circuit declares n_",
               kind == kInput ? "inputs" : "weights", "=", size);
        }
      } else {
        fail("gate ", g, " (", info.name, ") has parameter kind ", kind,
             "; kinds are 0 (input), 1 (weight), 2 (constant)");
      }
      d.kind = static_cast<int>(kind);
      d.index = index;
    }
    c.gates.push_back(d);
  }
  if (cursor != n_params) fail("'params' has ", n_params, " entries, the gates use ", cursor);

  c.observables.reserve(static_cast<size_t>(n_obs));
  for (int64_t k = 0; k < n_obs; ++k) {
    Observable o{0, 0, 0};
    for (int64_t q = 0; q < n_qubits; ++q) {
      const int64_t code = observables[k * n_qubits + q];
      const uint64_t bit = uint64_t{1} << q;
      switch (code) {
        case 0: break;
        case 1: o.flip |= bit; break;
        case 2: o.flip |= bit; o.yz |= bit; ++o.n_y; break;
        case 3: o.yz |= bit; break;
        default:
          fail("Pauli code ", code, " in 'observables' (row ", k, ", qubit ", q,
               "); codes are 0 (I), 1 (X), 2 (Y), 3 (Z)");
      }
    }
    c.observables.push_back(o);
  }
  return c;
}

}  // namespace qwthn
