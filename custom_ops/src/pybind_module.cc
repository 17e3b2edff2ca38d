// qwthn_onnx._native: numpy door to the C++ circuit kernel (see qwthn_onnx/native.py).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>

#include "circuit.h"
#include "kernel.h"

namespace py = pybind11;

namespace {

using qwthn::CircuitError;

std::string shape_str(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
  if (a.ndim() == 1) s += ",";
  return s + ")";
}

// Checks dtype, rank and C-contiguity; never converts silently.
template <typename T>
void require(const py::array& a, const char* name, py::ssize_t ndim, const char* layout) {
  if (!a.dtype().is(py::dtype::of<T>())) {
    throw CircuitError(std::string(name) + " must have dtype " +
                       std::string(py::str(py::dtype::of<T>())) + ", got " +
                       std::string(py::str(a.dtype())));
  }
  if (a.ndim() != ndim) {
    throw CircuitError(std::string(name) + " must have shape " + layout + ", got " +
                       shape_str(a));
  }
  if (!(a.flags() & py::array::c_style)) {
    throw CircuitError(std::string(name) + " must be C-contiguous (use np.ascontiguousarray)");
  }
}

struct Encoded {
  qwthn::DecodedCircuit circuit;
};

qwthn::DecodedCircuit decode(int64_t n_qubits, int64_t n_inputs, int64_t n_weights,
                             const py::array& gates, const py::array& params,
                             const py::array& constants, const py::array& observables,
                             int64_t max_qubits) {
  require<int64_t>(gates, "gates", 2, "[n_gates, 3]");
  require<int64_t>(params, "params", 2, "[n_params, 2]");
  require<double>(constants, "constants", 1, "[n_constants]");
  require<int64_t>(observables, "observables", 2, "[n_observables, n_qubits]");
  if (gates.shape(1) != 3) throw CircuitError("gates must have shape [n_gates, 3], got " +
                                              shape_str(gates));
  if (params.shape(1) != 2) throw CircuitError("params must have shape [n_params, 2], got " +
                                               shape_str(params));
  return qwthn::decode_circuit(
      n_qubits, n_inputs, n_weights, static_cast<const int64_t*>(gates.data()), gates.shape(0),
      static_cast<const int64_t*>(params.data()), params.shape(0),
      static_cast<const double*>(constants.data()), constants.shape(0),
      static_cast<const int64_t*>(observables.data()), observables.shape(0),
      observables.shape(1), max_qubits);
}

template <typename T>
py::array forward_t(const Encoded& e, const py::array& inputs, const py::array& weights,
                    int threads) {
  require<T>(inputs, "inputs", 2, "[batch, n_inputs]");
  require<T>(weights, "weights", 1, "[n_weights]");
  const int64_t batch = inputs.shape(0);
  py::array_t<T> out({static_cast<py::ssize_t>(batch),
                      static_cast<py::ssize_t>(e.circuit.observables.size())});
  const T* x = static_cast<const T*>(inputs.data());
  const T* w = static_cast<const T*>(weights.data());
  T* y = out.mutable_data();
  {
    py::gil_scoped_release release;
    qwthn::forward<T>(e.circuit, x, batch, inputs.shape(1), w, weights.shape(0), y, threads);
  }
  return std::move(out);
}

template <typename T>
py::tuple backward_t(const Encoded& e, const py::array& inputs, const py::array& weights,
                     const py::array& grad_out, int threads) {
  require<T>(inputs, "inputs", 2, "[batch, n_inputs]");
  require<T>(weights, "weights", 1, "[n_weights]");
  require<T>(grad_out, "grad_out", 2, "[batch, n_observables]");
  const int64_t batch = inputs.shape(0);
  const auto n_obs = static_cast<py::ssize_t>(e.circuit.observables.size());
  if (grad_out.shape(0) != batch || grad_out.shape(1) != n_obs) {
    throw CircuitError("grad_out must have shape [batch=" + std::to_string(batch) +
                       ", n_observables=" + std::to_string(n_obs) + "], got " +
                       shape_str(grad_out));
  }
  py::array_t<T> gin({static_cast<py::ssize_t>(batch), static_cast<py::ssize_t>(inputs.shape(1))});
  py::array_t<T> gw({static_cast<py::ssize_t>(weights.shape(0))});
  const T* x = static_cast<const T*>(inputs.data());
  const T* w = static_cast<const T*>(weights.data());
  const T* g = static_cast<const T*>(grad_out.data());
  T* gi = gin.mutable_data();
  T* gwp = gw.mutable_data();
  {
    py::gil_scoped_release release;
    qwthn::backward<T>(e.circuit, x, batch, inputs.shape(1), w, weights.shape(0), g, gi, gwp,
                       threads);
  }
  return py::make_tuple(gin, gw);
}

bool is_float32(const py::array& a) { return a.dtype().is(py::dtype::of<float>()); }

}  // namespace

PYBIND11_MODULE(_native, m) {
  m.doc() = "C++ statevector kernel for qwthn_onnx circuits (forward + adjoint gradients).";
  py::register_exception<CircuitError>(m, "NativeCircuitError", PyExc_ValueError);
  m.def("active_isa", &qwthn::active_isa, "Instruction set in use: 'avx2' or 'baseline'.");
  m.def("set_isa", &qwthn::set_isa, py::arg("name"),
        "Select 'auto', 'baseline' or 'avx2' for all later calls (process-wide).");
  m.def("avx2_available", &qwthn::avx2_available);

  py::class_<Encoded>(m, "Circuit",
                      "A decoded, validated circuit (arrays of qwthn_onnx EncodedCircuit).")
      .def(py::init([](int64_t n_qubits, int64_t n_inputs, int64_t n_weights,
                       const py::array& gates, const py::array& params,
                       const py::array& constants, const py::array& observables,
                       int64_t max_qubits) {
             return Encoded{decode(n_qubits, n_inputs, n_weights, gates, params, constants,
                                   observables, max_qubits)};
           }),
           py::arg("n_qubits"), py::arg("n_inputs"), py::arg("n_weights"), py::arg("gates"),
           py::arg("params"), py::arg("constants"), py::arg("observables"),
           py::arg("max_qubits") = 0)
      .def_property_readonly("n_qubits", [](const Encoded& e) { return e.circuit.n_qubits; })
      .def_property_readonly("n_inputs", [](const Encoded& e) { return e.circuit.n_inputs; })
      .def_property_readonly("n_weights", [](const Encoded& e) { return e.circuit.n_weights; })
      .def_property_readonly("n_gates",
                             [](const Encoded& e) { return e.circuit.gates.size(); })
      .def_property_readonly("n_observables",
                             [](const Encoded& e) { return e.circuit.observables.size(); })
      .def(
          "forward",
          [](const Encoded& e, const py::array& inputs, const py::array& weights, int threads) {
            return is_float32(inputs) ? forward_t<float>(e, inputs, weights, threads)
                                      : forward_t<double>(e, inputs, weights, threads);
          },
          py::arg("inputs"), py::arg("weights"), py::arg("threads") = 0,
          "inputs [B, n_inputs], weights [n_weights] (both float32 or both float64) -> "
          "expectations [B, n_observables].")
      .def(
          "backward",
          [](const Encoded& e, const py::array& inputs, const py::array& weights,
             const py::array& grad_out, int threads) {
            return is_float32(inputs) ? backward_t<float>(e, inputs, weights, grad_out, threads)
                                      : backward_t<double>(e, inputs, weights, grad_out, threads);
          },
          py::arg("inputs"), py::arg("weights"), py::arg("grad_out"), py::arg("threads") = 0,
          "Adjoint-method gradients: -> (grad_inputs [B, n_inputs], grad_weights [n_weights]).");
}
