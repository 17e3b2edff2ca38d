import numpy as np
import onnx
import onnx.inliner
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from qwthn_onnx.mpo import MPOLinear
from qwthn_onnx.ops import DOMAIN, register_schemas
from qwthn_onnx.ops.fallback import mpo_linear_function
from qwthn_onnx.ops.models import mpo_linear_model

OPSET = 21


def _mpo_model(mpo: MPOLinear, elem: int) -> onnx.ModelProto:
    dtype = helper.tensor_dtype_to_np_dtype(elem)
    cores = [core.detach().numpy().astype(dtype) for core in mpo.cores]
    return mpo_linear_model(cores, leading_dims=("batch", "seq"), opset=OPSET)


@pytest.mark.parametrize(
    ("d_in", "d_out", "bond", "k"), [(64, 8, 4, 3), (8, 64, 4, 3), (12, 6, 2, 2), (7, 5, 3, 1)]
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_mpo_fallback_runs_in_plain_onnxruntime_and_matches_torch(d_in, d_out, bond, k, dtype):
    register_schemas()
    torch.manual_seed(0)
    mpo = MPOLinear(d_in, d_out, bond_dim=bond, num_cores=k, dtype=torch.float64)
    elem = TensorProto.FLOAT if dtype == torch.float32 else TensorProto.DOUBLE
    model = _mpo_model(mpo, elem)
    onnx.checker.check_model(model, full_check=True)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for shape in [(2, 5), (1, 1), (3, 7)]:  # symbolic batch and sequence
        x = torch.randn(*shape, d_in, dtype=torch.float64)
        (y,) = session.run(None, {"x": x.to(dtype).numpy()})
        expected = mpo(x).detach().numpy()
        atol = 1e-5 if dtype == torch.float32 else 1e-12
        assert y.shape == (*shape, d_out)
        np.testing.assert_allclose(y, expected, atol=atol, rtol=atol)


def test_inlined_fallback_keeps_symbolic_leading_dims():
    """What a runtime without our library sees: the function inlined, batch/seq still symbolic."""
    register_schemas()
    model = _mpo_model(MPOLinear(16, 4, bond_dim=2, num_cores=2), TensorProto.FLOAT)
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info("y", TensorProto.FLOAT, None))
    inlined = onnx.inliner.inline_local_functions(model)
    inferred = onnx.shape_inference.infer_shapes(inlined, strict_mode=True, data_prop=True)
    dims = inferred.graph.output[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims[:2]] == ["batch", "seq"] and len(dims) == 3


def test_core_count_is_bounded():
    with pytest.raises(ValueError, match=r"1\.\.12 cores"):
        mpo_linear_function(13, OPSET)


def _mixed_model() -> tuple[onnx.ModelProto, dict]:
    """Three QuantumLayer nodes (two share a circuit) and two MPOs with different core counts."""
    from qwthn_onnx.circuit import hardware_efficient_circuit, paper_circuit
    from qwthn_onnx.ops import quantum_layer_attributes

    torch.manual_seed(0)
    c1, c2 = paper_circuit(3, 1), hardware_efficient_circuit(3, 2)
    m1 = MPOLinear(3, 8, bond_dim=2, num_cores=2, dtype=torch.float64)
    m2 = MPOLinear(3, 8, bond_dim=2, in_modes=(3, 1, 1), out_modes=(2, 2, 2), dtype=torch.float64)
    weights = {"w1": torch.rand(12, dtype=torch.float64), "w2": torch.rand(12, dtype=torch.float64)}
    nodes = [
        helper.make_node(
            "QuantumLayer", ["x", "w1"], ["q1"], domain=DOMAIN, **quantum_layer_attributes(c1)
        ),
        helper.make_node(
            "QuantumLayer", ["x", "w2"], ["q2"], domain=DOMAIN, **quantum_layer_attributes(c2)
        ),
        helper.make_node(
            "QuantumLayer", ["q1", "w1"], ["q3"], domain=DOMAIN, **quantum_layer_attributes(c1)
        ),
    ]
    inits = []
    for tag, mpo, src in (("a", m1, "q3"), ("b", m2, "q2")):
        names = [f"{tag}{i}" for i in range(mpo.num_cores)]
        nodes.append(
            helper.make_node("MPOLinear", [src, *names], [f"y{tag}"], domain=DOMAIN,
                             in_modes=list(mpo.in_modes), out_modes=list(mpo.out_modes))
        )  # fmt: skip
        inits += [
            numpy_helper.from_array(c.detach().numpy(), n)
            for n, c in zip(names, mpo.cores, strict=True)
        ]
    inits += [numpy_helper.from_array(w.numpy(), n) for n, w in weights.items()]
    graph = helper.make_graph(
        nodes,
        "mixed",
        [helper.make_tensor_value_info("x", TensorProto.DOUBLE, ["batch", 3])],
        [helper.make_tensor_value_info(n, TensorProto.DOUBLE, ["batch", 8]) for n in ("ya", "yb")],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])

    def reference(x):
        from qwthn_onnx.circuit import expectation_values

        q1 = expectation_values(c1, x, weights["w1"])
        q3 = expectation_values(c1, q1, weights["w1"])
        return m1(q3).detach().numpy(), m2(
            expectation_values(c2, x, weights["w2"])
        ).detach().numpy()

    return model, reference


def test_attach_fallbacks_runs_mixed_circuits_in_plain_onnxruntime():
    from qwthn_onnx.ops.fallback import attach_fallbacks

    register_schemas()
    model, reference = _mixed_model()
    attach_fallbacks(model)
    # Two circuits, two core counts: four overloads; the repeated circuit is shared.
    assert sorted((f.name, f.overload.split("_")[0]) for f in model.functions) == [
        ("MPOLinear", "cores"), ("MPOLinear", "cores"),
        ("QuantumLayer", "circuit"), ("QuantumLayer", "circuit"),
    ]  # fmt: skip
    assert (
        model.graph.node[0].overload == model.graph.node[2].overload != model.graph.node[1].overload
    )
    attach_fallbacks(model)  # idempotent
    assert len(model.functions) == 4
    onnx.checker.check_model(model, full_check=True)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = torch.rand(5, 3, dtype=torch.float64)
    ya, yb = session.run(None, {"x": x.numpy()})
    ra, rb = reference(x)
    np.testing.assert_allclose(ya, ra, atol=1e-10)
    np.testing.assert_allclose(yb, rb, atol=1e-10)


def test_attach_fallbacks_refuses_bad_nodes():
    from qwthn_onnx.circuit import CircuitError
    from qwthn_onnx.ops.fallback import attach_fallbacks

    model, _ = _mixed_model()
    gates = next(a for a in model.graph.node[1].attribute if a.name == "gates")
    gates.ints[0] = 99
    with pytest.raises(CircuitError, match="opcode 99"):
        attach_fallbacks(model)
    model, _ = _mixed_model()
    model.graph.node[0].op_type = "Teleport"
    with pytest.raises(ValueError, match=r"unknown op ai\.qwthn::Teleport"):
        attach_fallbacks(model)
    model, _ = _mixed_model()
    del model.opset_import[:]
    with pytest.raises(ValueError, match="no default-domain opset"):
        attach_fallbacks(model)
