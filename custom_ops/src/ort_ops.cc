// libqwthn_ops: the ai.qwthn ops (QuantumLayer, MPOLinear) as an onnxruntime custom-op library.
//
// Written against the onnxruntime C API only: no C++ wrapper (its exceptions and the
// process-wide Ort::Global must not cross into the runtime) and no link to libonnxruntime (the
// API table comes from RegisterCustomOps). Every kernel entry point catches everything and turns
// it into an OrtStatus; kernels validate attributes when created and shapes, types and values
// when run (the checks themselves are in op_checks.h, apart from the API, so they can be
// fuzzed). Kernels hold only immutable state, so concurrent Run calls are safe.
#include <onnxruntime_c_api.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <exception>
#include <memory>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "circuit.h"
#include "kernel.h"
#include "messages.h"
#include "mpo.h"
#include "op_checks.h"

#if defined(_WIN32)
#define QWTHN_ORT_EXPORT __declspec(dllexport)
#else
#define QWTHN_ORT_EXPORT __attribute__((visibility("default")))
#endif

namespace {

// ComputeV2/CreateKernelV2 arrived in API 16; shape inference, ParallelFor and ReadOpAttr in 17.
constexpr uint32_t kOrtApiVersion = 17;
constexpr const char* kDomain = "ai.qwthn";

// Set by RegisterCustomOps; shape inference callbacks get no API pointer of their own.
std::atomic<const OrtApi*> g_api{nullptr};

// An error to report as an OrtStatus with this code.
class OrtError : public std::runtime_error {
 public:
  OrtError(OrtErrorCode code, const std::string& message)
      : std::runtime_error(message), code_(code) {}
  OrtErrorCode code() const { return code_; }

 private:
  OrtErrorCode code_;
};

[[noreturn]] void invalid(const std::string& message) {
  throw OrtError(ORT_INVALID_ARGUMENT, message);
}

// Throws the status' message (and frees it) when `status` is an error.
void check(const OrtApi* api, OrtStatus* status) {
  if (!status) return;
  const OrtErrorCode code = api->GetErrorCode(status);
  const std::string message = api->GetErrorMessage(status);
  api->ReleaseStatus(status);
  throw OrtError(code, message);
}

// Runs f and converts any exception into an OrtStatus prefixed with `where`.
template <typename F>
OrtStatus* guarded(const OrtApi* api, const std::string& where, F&& f) noexcept {
  try {
    f();
    return nullptr;
  } catch (const qwthn::CircuitError& e) {
    return api->CreateStatus(ORT_INVALID_ARGUMENT, (where + ": " + e.what()).c_str());
  } catch (const qwthn::MPOError& e) {
    return api->CreateStatus(ORT_INVALID_ARGUMENT, (where + ": " + e.what()).c_str());
  } catch (const qwthn::OpError& e) {
    return api->CreateStatus(ORT_INVALID_ARGUMENT, (where + ": " + e.what()).c_str());
  } catch (const OrtError& e) {
    return api->CreateStatus(e.code(), (where + ": " + e.what()).c_str());
  } catch (const std::bad_alloc&) {
    return api->CreateStatus(ORT_FAIL, (where + ": out of memory").c_str());
  } catch (const std::exception& e) {
    return api->CreateStatus(ORT_FAIL, (where + ": " + e.what()).c_str());
  } catch (...) {
    return api->CreateStatus(ORT_FAIL, (where + ": unknown error").c_str());
  }
}

const char* type_name(ONNXTensorElementDataType t) {
  switch (t) {
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT: return "float32";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE: return "float64";
    default: return "a type other than float32/float64";
  }
}

// ---------------------------------------------------------------------------------------------
// Kernel info: node name and attributes.

std::string node_label(const OrtApi* api, const OrtKernelInfo* info, const char* op) {
  size_t size = 0;
  std::string name;
  if (OrtStatus* st = api->KernelInfo_GetNodeName(info, nullptr, &size)) {
    api->ReleaseStatus(st);
  } else if (size > 1) {
    std::vector<char> buf(size);
    if (OrtStatus* st2 = api->KernelInfo_GetNodeName(info, buf.data(), &size)) {
      api->ReleaseStatus(st2);
    } else {
      name.assign(buf.data());
    }
  }
  return std::string(kDomain) + "::" + op + " node '" + name + "'";
}

int64_t int_attr(const OrtApi* api, const OrtKernelInfo* info, const char* name) {
  int64_t value = 0;
  if (OrtStatus* st = api->KernelInfoGetAttribute_int64(info, name, &value)) {
    api->ReleaseStatus(st);
    invalid(std::string("attribute '") + name + "' is missing or is not an int");
  }
  return value;
}

// An INTS attribute; `required` false gives an empty list when the attribute is absent.
std::vector<int64_t> ints_attr(const OrtApi* api, const OrtKernelInfo* info, const char* name,
                               bool required = true) {
  size_t size = 0;
  if (OrtStatus* st = api->KernelInfoGetAttributeArray_int64(info, name, nullptr, &size)) {
    api->ReleaseStatus(st);
    if (!required) return {};
    invalid(std::string("attribute '") + name + "' is missing or is not a list of ints");
  }
  std::vector<int64_t> values(size);
  if (size > 0) {
    check(api, api->KernelInfoGetAttributeArray_int64(info, name, values.data(), &size));
  }
  return values;
}

// The optional float64 tensor attribute `constants` (rank 1); empty when absent.
std::vector<double> constants_attr(const OrtApi* api, const OrtKernelInfo* info) {
  OrtAllocator* allocator = nullptr;
  check(api, api->GetAllocatorWithDefaultOptions(&allocator));
  OrtValue* value = nullptr;
  if (OrtStatus* st = api->KernelInfoGetAttribute_tensor(info, "constants", allocator, &value)) {
    api->ReleaseStatus(st);
    return {};
  }
  const std::unique_ptr<OrtValue, void (*)(OrtValue*)> owned(value, api->ReleaseValue);
  OrtTensorTypeAndShapeInfo* shape_info = nullptr;
  check(api, api->GetTensorTypeAndShape(value, &shape_info));
  const std::unique_ptr<OrtTensorTypeAndShapeInfo, void (*)(OrtTensorTypeAndShapeInfo*)>
      shape_owned(shape_info, api->ReleaseTensorTypeAndShapeInfo);
  ONNXTensorElementDataType type;
  size_t rank = 0, count = 0;
  check(api, api->GetTensorElementType(shape_info, &type));
  check(api, api->GetDimensionsCount(shape_info, &rank));
  check(api, api->GetTensorShapeElementCount(shape_info, &count));
  if (type != ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE || rank != 1) {
    invalid("attribute 'constants' must be a rank-1 float64 tensor");
  }
  void* data = nullptr;
  check(api, api->GetTensorMutableData(value, &data));
  const auto* p = static_cast<const double*>(data);
  return std::vector<double>(p, p + count);
}

// ---------------------------------------------------------------------------------------------
// Kernel context: tensors in and out, and the intra-op thread pool.

struct Tensor {
  ONNXTensorElementDataType type = ONNX_TENSOR_ELEMENT_DATA_TYPE_UNDEFINED;
  std::vector<int64_t> dims;
  const void* data = nullptr;
};

Tensor input(const OrtApi* api, OrtKernelContext* ctx, size_t index, const char* name) {
  const OrtValue* value = nullptr;
  check(api, api->KernelContext_GetInput(ctx, index, &value));
  if (!value) invalid(std::string("input '") + name + "' is missing");
  int is_tensor = 0;
  check(api, api->IsTensor(value, &is_tensor));
  if (!is_tensor) invalid(std::string("input '") + name + "' is not a tensor");
  OrtTensorTypeAndShapeInfo* info = nullptr;
  check(api, api->GetTensorTypeAndShape(value, &info));
  const std::unique_ptr<OrtTensorTypeAndShapeInfo, void (*)(OrtTensorTypeAndShapeInfo*)> owned(
      info, api->ReleaseTensorTypeAndShapeInfo);
  Tensor t;
  size_t rank = 0;
  check(api, api->GetTensorElementType(info, &t.type));
  check(api, api->GetDimensionsCount(info, &rank));
  t.dims.resize(rank);
  if (rank > 0) check(api, api->GetDimensions(info, t.dims.data(), rank));
  qwthn::element_count(t.dims, name);  // no negative dims, no count overflowing int64
  void* data = nullptr;
  check(api, api->GetTensorMutableData(const_cast<OrtValue*>(value), &data));
  t.data = data;
  return t;
}

void* output(const OrtApi* api, OrtKernelContext* ctx, const std::vector<int64_t>& dims) {
  OrtValue* value = nullptr;
  check(api, api->KernelContext_GetOutput(ctx, 0, dims.data(), dims.size(), &value));
  if (!value) throw OrtError(ORT_FAIL, "onnxruntime returned no output tensor");
  void* data = nullptr;
  check(api, api->GetTensorMutableData(value, &data));
  return data;
}

// Workers run on onnxruntime's intra-op thread pool (the session's intra_op_num_threads).
qwthn::Parallel ort_parallel(const OrtApi* api, OrtKernelContext* ctx) {
  qwthn::Parallel par;
  par.max_workers = std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  par.run = [api, ctx](int n, const std::function<void(int)>& worker) {
    auto call = [](void* user, size_t i) {
      (*static_cast<const std::function<void(int)>*>(user))(static_cast<int>(i));
    };
    check(api, api->KernelContext_ParallelFor(ctx, call, static_cast<size_t>(n),
                                              static_cast<size_t>(n),
                                              const_cast<std::function<void(int)>*>(&worker)));
  };
  return par;
}

// ---------------------------------------------------------------------------------------------
// Kernels.

struct QuantumLayerKernel {
  std::string label;
  qwthn::DecodedCircuit circuit;

  // The circuit prepared for the last weights seen. Weights are usually an initializer, so
  // every run after the first skips building the weight tables (0.4 ms at n = 10, L = 10, more
  // than simulating a decode step's token). Shared by concurrent runs; the key is the weights'
  // bytes, their type and the instruction set, so a change of any of them rebuilds it.
  struct Prepared {
    std::mutex mutex;
    std::vector<char> key;
    std::shared_ptr<const qwthn::PreparedCircuit> circuit;
  } prepared;

  template <typename T>
  std::shared_ptr<const qwthn::PreparedCircuit> prepared_for(const T* weights) {
    const char* bytes = reinterpret_cast<const char*>(weights);
    std::vector<char> key(bytes, bytes + circuit.n_weights * sizeof(T));
    key.push_back(static_cast<char>(sizeof(T)));
    key.push_back(static_cast<char>(qwthn::avx2_active()));
    {
      std::lock_guard<std::mutex> lock(prepared.mutex);
      if (prepared.circuit && prepared.key == key) return prepared.circuit;
    }
    auto fresh = qwthn::prepare<T>(circuit, weights, circuit.n_weights);
    std::lock_guard<std::mutex> lock(prepared.mutex);
    prepared.key = std::move(key);
    prepared.circuit = fresh;
    return fresh;
  }

  QuantumLayerKernel(const OrtApi* api, const OrtKernelInfo* info)
      : label(node_label(api, info, "QuantumLayer")) {}

  void init(const OrtApi* api, const OrtKernelInfo* info) {
    qwthn::QuantumLayerAttributes a;
    a.encoding_version = int_attr(api, info, "encoding_version");
    if (a.encoding_version == 1) {  // another version's attributes may mean something else
      a.n_qubits = int_attr(api, info, "n_qubits");
      a.n_inputs = int_attr(api, info, "n_inputs");
      a.n_weights = int_attr(api, info, "n_weights");
      a.gates = ints_attr(api, info, "gates", false);
      a.params = ints_attr(api, info, "params", false);
      a.observables = ints_attr(api, info, "observables");
      a.constants = constants_attr(api, info);
    }
    const int64_t max_qubits = qwthn::parse_max_qubits(std::getenv("QWTHN_MAX_QUBITS"));
    circuit = qwthn::decode_quantum_layer(a, max_qubits);
  }

  template <typename T>
  void run(const OrtApi* api, OrtKernelContext* ctx, const Tensor& x, const Tensor& w) {
    const int64_t batch = qwthn::batch_of(x.dims, "n_inputs", circuit.n_inputs);
    qwthn::check_weights_shape(w.dims, circuit.n_weights);
    T* y = static_cast<T*>(output(
        api, ctx, qwthn::output_dims(x.dims, static_cast<int64_t>(circuit.observables.size()))));
    prepared_for(static_cast<const T*>(w.data))
        ->forward(static_cast<const T*>(x.data), batch, circuit.n_inputs, y,
                  ort_parallel(api, ctx));
  }

  void compute(const OrtApi* api, OrtKernelContext* ctx) {
    const Tensor x = input(api, ctx, 0, "x");
    const Tensor w = input(api, ctx, 1, "weights");
    if (x.type != w.type) {
      invalid(std::string("inputs 'x' (") + type_name(x.type) + ") and 'weights' (" +
              type_name(w.type) + ") must have the same type");
    }
    if (x.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) return run<float>(api, ctx, x, w);
    if (x.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE) return run<double>(api, ctx, x, w);
    invalid(std::string("input 'x' has ") + type_name(x.type) + "; use float32 or float64");
  }
};

struct MPOLinearKernel {
  std::string label;
  std::vector<int64_t> in_modes, out_modes;

  MPOLinearKernel(const OrtApi* api, const OrtKernelInfo* info)
      : label(node_label(api, info, "MPOLinear")) {}

  void init(const OrtApi* api, const OrtKernelInfo* info) {
    in_modes = ints_attr(api, info, "in_modes");
    out_modes = ints_attr(api, info, "out_modes");
    qwthn::check_mpo_modes(in_modes, out_modes);  // the real cores are checked when run
  }

  template <typename T>
  void run(const OrtApi* api, OrtKernelContext* ctx, const Tensor& x,
           const std::vector<Tensor>& cores) {
    std::vector<std::vector<int64_t>> shapes;
    std::vector<const T*> pointers;
    for (const Tensor& core : cores) {
      shapes.push_back(core.dims);
      pointers.push_back(static_cast<const T*>(core.data));
    }
    const qwthn::MPOShape s = qwthn::mpo_shape(in_modes, out_modes, shapes);
    const int64_t batch = qwthn::batch_of(x.dims, "prod(in_modes)", s.in_features);
    T* y = static_cast<T*>(output(api, ctx, qwthn::output_dims(x.dims, s.out_features)));
    qwthn::mpo_forward<T>(s, static_cast<const T*>(x.data), batch, pointers.data(), y,
                          ort_parallel(api, ctx));
  }

  void compute(const OrtApi* api, OrtKernelContext* ctx) {
    size_t n_inputs = 0;
    check(api, api->KernelContext_GetInputCount(ctx, &n_inputs));
    qwthn::check_mpo_input_count(n_inputs, in_modes.size());
    const Tensor x = input(api, ctx, 0, "x");
    std::vector<Tensor> cores;
    for (size_t k = 1; k < n_inputs; ++k) {
      const std::string name = "core " + std::to_string(k - 1);
      cores.push_back(input(api, ctx, k, name.c_str()));
      if (cores.back().type != x.type) {
        invalid(name + " has " + type_name(cores.back().type) + " but x has " +
                type_name(x.type) + "; they must match");
      }
    }
    if (x.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) return run<float>(api, ctx, x, cores);
    if (x.type == ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE) return run<double>(api, ctx, x, cores);
    invalid(std::string("input 'x' has ") + type_name(x.type) + "; use float32 or float64");
  }
};

// ---------------------------------------------------------------------------------------------
// Shape inference: y keeps x's leading dims (symbolic ones by name) and gets a known last dim.
// onnxruntime ignores (and leaks) a status returned from here, so problems are left to kernel
// creation, which reports them; inference just sets nothing.

bool read_ints(const OrtApi* api, OrtShapeInferContext* ctx, const char* name,
               std::vector<int64_t>& out) {
  const OrtOpAttr* attr = nullptr;
  if (OrtStatus* st = api->ShapeInferContext_GetAttribute(ctx, name, &attr)) {
    api->ReleaseStatus(st);
    return false;
  }
  size_t bytes = 0;
  if (OrtStatus* st = api->ReadOpAttr(attr, ORT_OP_ATTR_INTS, nullptr, 0, &bytes)) {
    api->ReleaseStatus(st);
  }
  out.assign(bytes / sizeof(int64_t), 0);
  if (out.empty()) return true;
  if (OrtStatus* st = api->ReadOpAttr(attr, ORT_OP_ATTR_INTS, out.data(), bytes, &bytes)) {
    api->ReleaseStatus(st);
    return false;
  }
  return true;
}

bool read_int(const OrtApi* api, OrtShapeInferContext* ctx, const char* name, int64_t& out) {
  const OrtOpAttr* attr = nullptr;
  if (OrtStatus* st = api->ShapeInferContext_GetAttribute(ctx, name, &attr)) {
    api->ReleaseStatus(st);
    return false;
  }
  size_t bytes = 0;
  if (OrtStatus* st = api->ReadOpAttr(attr, ORT_OP_ATTR_INT, &out, sizeof(out), &bytes)) {
    api->ReleaseStatus(st);
    return false;
  }
  return true;
}

void infer_last_dim(OrtShapeInferContext* ctx, int64_t last) {
  const OrtApi* api = g_api.load();
  if (!api || last < 0) return;
  OrtTensorTypeAndShapeInfo* in = nullptr;  // owned by the context
  if (OrtStatus* st = api->ShapeInferContext_GetInputTypeShape(ctx, 0, &in)) {
    api->ReleaseStatus(st);
    return;
  }
  ONNXTensorElementDataType type;
  size_t rank = 0;
  if (OrtStatus* st = api->GetTensorElementType(in, &type)) return api->ReleaseStatus(st);
  if (OrtStatus* st = api->GetDimensionsCount(in, &rank)) return api->ReleaseStatus(st);
  if (rank == 0) return;  // unknown rank (x needs rank >= 1)
  std::vector<int64_t> dims(rank);
  std::vector<const char*> symbols(rank, nullptr);
  if (OrtStatus* st = api->GetDimensions(in, dims.data(), rank)) return api->ReleaseStatus(st);
  if (OrtStatus* st = api->GetSymbolicDimensions(in, symbols.data(), rank)) {
    return api->ReleaseStatus(st);
  }
  for (size_t i = 0; i + 1 < rank; ++i) {
    // An unnamed unknown dim cannot be expressed through this API; leave the shape unknown.
    if (dims[i] < 0 && (!symbols[i] || !*symbols[i])) return;
  }
  dims[rank - 1] = last;
  symbols[rank - 1] = "";
  OrtTensorTypeAndShapeInfo* out = nullptr;
  if (OrtStatus* st = api->CreateTensorTypeAndShapeInfo(&out)) return api->ReleaseStatus(st);
  const std::unique_ptr<OrtTensorTypeAndShapeInfo, void (*)(OrtTensorTypeAndShapeInfo*)> owned(
      out, api->ReleaseTensorTypeAndShapeInfo);
  for (OrtStatus* st : {api->SetTensorElementType(out, type),
                        api->SetDimensions(out, dims.data(), rank),
                        api->SetSymbolicDimensions(out, symbols.data(), rank),
                        api->ShapeInferContext_SetOutputTypeShape(ctx, 0, out)}) {
    if (st) api->ReleaseStatus(st);
  }
}

OrtStatus* ORT_API_CALL quantum_layer_infer(const OrtCustomOp*, OrtShapeInferContext* ctx) {
  const OrtApi* api = g_api.load();
  if (!api) return nullptr;
  try {
    int64_t n_qubits = 0;
    std::vector<int64_t> observables;
    if (read_int(api, ctx, "n_qubits", n_qubits) && n_qubits >= 1 &&
        read_ints(api, ctx, "observables", observables) &&
        observables.size() % static_cast<uint64_t>(n_qubits) == 0) {
      infer_last_dim(ctx, static_cast<int64_t>(observables.size()) / n_qubits);
    }
  } catch (...) {  // e.g. bad_alloc: inference is best effort
  }
  return nullptr;
}

OrtStatus* ORT_API_CALL mpo_linear_infer(const OrtCustomOp*, OrtShapeInferContext* ctx) {
  const OrtApi* api = g_api.load();
  if (!api) return nullptr;
  try {
    std::vector<int64_t> out_modes;
    if (!read_ints(api, ctx, "out_modes", out_modes) || out_modes.empty()) return nullptr;
    int64_t size = 1;
    for (int64_t m : out_modes) {
      if (m < 1 || size > qwthn::kMaxMPOFeatures / m) return nullptr;
      size *= m;
    }
    infer_last_dim(ctx, size);
  } catch (...) {
  }
  return nullptr;
}

// ---------------------------------------------------------------------------------------------
// OrtCustomOp tables: each op is registered once per element type (float32, float64), with the
// same name, so onnxruntime merges them into one schema whose T is either type.

template <typename Kernel>
struct OpTraits;

template <>
struct OpTraits<QuantumLayerKernel> {
  static constexpr const char* kName = "QuantumLayer";
  static constexpr size_t kInputs = 2;
  static OrtCustomOpInputOutputCharacteristic input_kind(size_t) {
    return INPUT_OUTPUT_REQUIRED;
  }
  static constexpr auto infer = quantum_layer_infer;
};

template <>
struct OpTraits<MPOLinearKernel> {
  static constexpr const char* kName = "MPOLinear";
  static constexpr size_t kInputs = 2;  // x, then the variadic cores
  static OrtCustomOpInputOutputCharacteristic input_kind(size_t i) {
    return i == 0 ? INPUT_OUTPUT_REQUIRED : INPUT_OUTPUT_VARIADIC;
  }
  static constexpr auto infer = mpo_linear_infer;
};

struct TypedOp : OrtCustomOp {
  ONNXTensorElementDataType type;
};

template <typename Kernel>
TypedOp make_op(ONNXTensorElementDataType type) {
  using Traits = OpTraits<Kernel>;
  TypedOp op{};
  op.version = kOrtApiVersion;
  op.type = type;
  op.GetName = [](const OrtCustomOp*) { return Traits::kName; };
  op.GetExecutionProviderType = [](const OrtCustomOp*) -> const char* {
    return "CPUExecutionProvider";
  };
  op.GetInputTypeCount = [](const OrtCustomOp*) { return Traits::kInputs; };
  op.GetOutputTypeCount = [](const OrtCustomOp*) -> size_t { return 1; };
  op.GetInputType = [](const OrtCustomOp* self, size_t) {
    return static_cast<const TypedOp*>(self)->type;
  };
  op.GetOutputType = [](const OrtCustomOp* self, size_t) {
    return static_cast<const TypedOp*>(self)->type;
  };
  op.GetInputCharacteristic = [](const OrtCustomOp*, size_t i) { return Traits::input_kind(i); };
  op.GetOutputCharacteristic = [](const OrtCustomOp*, size_t) { return INPUT_OUTPUT_REQUIRED; };
  op.GetInputMemoryType = [](const OrtCustomOp*, size_t) { return OrtMemTypeDefault; };
  op.GetVariadicInputMinArity = [](const OrtCustomOp*) { return 1; };
  op.GetVariadicInputHomogeneity = [](const OrtCustomOp*) { return 1; };
  op.GetVariadicOutputMinArity = [](const OrtCustomOp*) { return 1; };
  op.GetVariadicOutputHomogeneity = [](const OrtCustomOp*) { return 1; };
  op.CreateKernel = [](const OrtCustomOp*, const OrtApi*, const OrtKernelInfo*) -> void* {
    return nullptr;  // onnxruntime calls CreateKernelV2 (API >= 16)
  };
  op.KernelCompute = [](void*, OrtKernelContext*) {};  // superseded by KernelComputeV2
  op.CreateKernelV2 = [](const OrtCustomOp*, const OrtApi* api, const OrtKernelInfo* info,
                         void** kernel) -> OrtStatus* {
    *kernel = nullptr;
    std::unique_ptr<Kernel> k;
    std::string where = std::string(kDomain) + "::" + Traits::kName;
    OrtStatus* st = guarded(api, where, [&] { k = std::make_unique<Kernel>(api, info); });
    if (st) return st;
    st = guarded(api, k->label, [&] { k->init(api, info); });
    if (!st) *kernel = k.release();
    return st;
  };
  op.KernelComputeV2 = [](void* kernel, OrtKernelContext* ctx) -> OrtStatus* {
    auto* k = static_cast<Kernel*>(kernel);
    const OrtApi* api = g_api.load();
    return guarded(api, k->label, [&] { k->compute(api, ctx); });
  };
  op.KernelDestroy = [](void* kernel) { delete static_cast<Kernel*>(kernel); };
  op.InferOutputShapeFn = Traits::infer;
  op.GetStartVersion = [](const OrtCustomOp*) { return 1; };
  op.GetEndVersion = [](const OrtCustomOp*) { return 1; };
  return op;
}

const TypedOp kOps[] = {
    make_op<QuantumLayerKernel>(ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT),
    make_op<QuantumLayerKernel>(ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE),
    make_op<MPOLinearKernel>(ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT),
    make_op<MPOLinearKernel>(ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE),
};

// One domain for the process, shared by every SessionOptions that registers the library: it
// must outlive all sessions created from them, and it holds only the static op tables above.
OrtStatus* shared_domain(const OrtApi* api, OrtCustomOpDomain** out) {
  static std::mutex mutex;
  static OrtCustomOpDomain* domain = nullptr;
  const std::lock_guard<std::mutex> lock(mutex);
  if (!domain) {
    OrtCustomOpDomain* created = nullptr;
    if (OrtStatus* st = api->CreateCustomOpDomain(kDomain, &created)) return st;
    for (const TypedOp& op : kOps) {
      if (OrtStatus* st = api->CustomOpDomain_Add(created, &op)) {
        api->ReleaseCustomOpDomain(created);
        return st;
      }
    }
    domain = created;
  }
  *out = domain;
  return nullptr;
}

}  // namespace

extern "C" QWTHN_ORT_EXPORT OrtStatus* ORT_API_CALL
RegisterCustomOps(OrtSessionOptions* options, const OrtApiBase* api_base) {
  if (!api_base) return nullptr;
  const OrtApi* api = api_base->GetApi(kOrtApiVersion);
  if (!api) {
    const OrtApi* oldest = api_base->GetApi(1);
    const std::string message = std::string("libqwthn_ops needs onnxruntime >= 1.17 (C API ") +
                                std::to_string(kOrtApiVersion) + "); this runtime is " +
                                api_base->GetVersionString();
    return oldest ? oldest->CreateStatus(ORT_FAIL, message.c_str()) : nullptr;
  }
  g_api.store(api);
  OrtCustomOpDomain* domain = nullptr;
  if (OrtStatus* st = shared_domain(api, &domain)) return st;
  return api->AddCustomOpDomain(options, domain);
}
