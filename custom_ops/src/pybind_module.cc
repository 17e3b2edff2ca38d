// qwthn_onnx._native: numpy door to the C++ circuit kernel (see qwthn_onnx/native.py).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <vector>

#include "circuit.h"
#include "kernel.h"
#include "mpo.h"

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
template <typename T, typename Error = CircuitError>
void require(const py::array& a, const char* name, py::ssize_t ndim, const char* layout) {
  if (!a.dtype().is(py::dtype::of<T>())) {
    throw Error(std::string(name) + " must have dtype " +
                       std::string(py::str(py::dtype::of<T>())) + ", got " +
                       std::string(py::str(a.dtype())));
  }
  if (a.ndim() != ndim) {
    throw Error(std::string(name) + " must have shape " + layout + ", got " + shape_str(a));
  }
  if (!(a.flags() & py::array::c_style)) {
    throw Error(std::string(name) + " must be C-contiguous (use np.ascontiguousarray)");
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
    qwthn::forward<T>(e.circuit, x, batch, inputs.shape(1), w, weights.shape(0), y,
                      qwthn::Parallel::threads(threads));
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
                       qwthn::Parallel::threads(threads));
  }
  return py::make_tuple(gin, gw);
}

bool is_float32(const py::array& a) { return a.dtype().is(py::dtype::of<float>()); }

// Checks the cores' dtype and layout and returns the validated MPO shape.
template <typename T>
qwthn::MPOShape mpo_shape_of(const std::vector<int64_t>& in_modes,
                             const std::vector<int64_t>& out_modes,
                             const std::vector<py::array>& cores, const py::array& x) {
  require<T, qwthn::MPOError>(x, "x", 2, "[batch, in_features]");
  std::vector<std::vector<int64_t>> shapes;
  for (size_t k = 0; k < cores.size(); ++k) {
    const std::string name = "core " + std::to_string(k);
    require<T, qwthn::MPOError>(cores[k], name.c_str(), 4,
                                 "[bond_in, in_mode, out_mode, bond_out]");
    shapes.emplace_back(cores[k].shape(), cores[k].shape() + 4);
  }
  qwthn::MPOShape s = qwthn::mpo_shape(in_modes, out_modes, shapes);
  if (x.shape(1) != s.in_features) {
    throw qwthn::MPOError("MPOLinear: x must have shape [batch, prod(in_modes)=" +
                          std::to_string(s.in_features) + "], got " + shape_str(x));
  }
  return s;
}

template <typename T>
std::vector<const T*> core_pointers(const std::vector<py::array>& cores) {
  std::vector<const T*> p;
  for (const py::array& c : cores) p.push_back(static_cast<const T*>(c.data()));
  return p;
}

template <typename T>
py::array mpo_forward_t(const std::vector<int64_t>& in_modes,
                        const std::vector<int64_t>& out_modes, const py::array& x,
                        const std::vector<py::array>& cores, int threads) {
  const qwthn::MPOShape s = mpo_shape_of<T>(in_modes, out_modes, cores, x);
  const int64_t batch = x.shape(0);
  py::array_t<T> y({static_cast<py::ssize_t>(batch), static_cast<py::ssize_t>(s.out_features)});
  const std::vector<const T*> c = core_pointers<T>(cores);
  const T* xp = static_cast<const T*>(x.data());
  T* yp = y.mutable_data();
  {
    py::gil_scoped_release release;
    qwthn::mpo_forward<T>(s, xp, batch, c.data(), yp, qwthn::Parallel::threads(threads));
  }
  return std::move(y);
}

template <typename T>
py::tuple mpo_backward_t(const std::vector<int64_t>& in_modes,
                         const std::vector<int64_t>& out_modes, const py::array& x,
                         const std::vector<py::array>& cores, const py::array& grad_y,
                         int threads) {
  const qwthn::MPOShape s = mpo_shape_of<T>(in_modes, out_modes, cores, x);
  const int64_t batch = x.shape(0);
  require<T, qwthn::MPOError>(grad_y, "grad_y", 2, "[batch, out_features]");
  if (grad_y.shape(0) != batch || grad_y.shape(1) != s.out_features) {
    throw qwthn::MPOError("MPOLinear: grad_y must have shape [batch=" + std::to_string(batch) +
                          ", prod(out_modes)=" + std::to_string(s.out_features) + "], got " +
                          shape_str(grad_y));
  }
  py::array_t<T> grad_x({static_cast<py::ssize_t>(batch), static_cast<py::ssize_t>(s.in_features)});
  py::list grad_cores;
  std::vector<T*> gc;
  for (const py::array& core : cores) {
    py::array_t<T> g(std::vector<py::ssize_t>(core.shape(), core.shape() + 4));
    gc.push_back(g.mutable_data());
    grad_cores.append(g);
  }
  const std::vector<const T*> c = core_pointers<T>(cores);
  const T* xp = static_cast<const T*>(x.data());
  const T* gy = static_cast<const T*>(grad_y.data());
  T* gx = grad_x.mutable_data();
  {
    py::gil_scoped_release release;
    qwthn::mpo_backward<T>(s, xp, batch, c.data(), gy, gx, gc.data(),
                           qwthn::Parallel::threads(threads));
  }
  return py::make_tuple(grad_x, grad_cores);
}

}  // namespace

PYBIND11_MODULE(_native, m) {
  m.doc() = "C++ kernels for qwthn_onnx: circuit statevector (forward + adjoint gradients), MPO.";
  py::register_exception<CircuitError>(m, "NativeCircuitError", PyExc_ValueError);
  py::register_exception<qwthn::MPOError>(m, "NativeMPOError", PyExc_ValueError);
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

  m.def(
      "mpo_forward",
      [](const std::vector<int64_t>& in_modes, const std::vector<int64_t>& out_modes,
         const py::array& x, const std::vector<py::array>& cores, int threads) {
        return is_float32(x) ? mpo_forward_t<float>(in_modes, out_modes, x, cores, threads)
                             : mpo_forward_t<double>(in_modes, out_modes, x, cores, threads);
      },
      py::arg("in_modes"), py::arg("out_modes"), py::arg("x"), py::arg("cores"),
      py::arg("threads") = 0,
      "x [B, prod(in_modes)], cores (float32 or float64, like x) -> y [B, prod(out_modes)].");
  m.def(
      "mpo_backward",
      [](const std::vector<int64_t>& in_modes, const std::vector<int64_t>& out_modes,
         const py::array& x, const std::vector<py::array>& cores, const py::array& grad_y,
         int threads) {
        return is_float32(x)
                   ? mpo_backward_t<float>(in_modes, out_modes, x, cores, grad_y, threads)
                   : mpo_backward_t<double>(in_modes, out_modes, x, cores, grad_y, threads);
      },
      py::arg("in_modes"), py::arg("out_modes"), py::arg("x"), py::arg("cores"),
      py::arg("grad_y"), py::arg("threads") = 0,
      "-> (grad_x [B, prod(in_modes)], [grad_core_k]) with the core gradients summed over B.");
}
