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

OPSET = 21


def _mpo_model(mpo: MPOLinear, elem: int) -> onnx.ModelProto:
    k = mpo.num_cores
    cores = [f"core_{i}" for i in range(k)]
    node = helper.make_node(
        "MPOLinear",
        ["x", *cores],
        ["y"],
        domain=DOMAIN,
        in_modes=list(mpo.in_modes),
        out_modes=list(mpo.out_modes),
    )
    np_dtype = helper.tensor_dtype_to_np_dtype(elem)
    inits = [
        numpy_helper.from_array(core.detach().numpy().astype(np_dtype), name)
        for name, core in zip(cores, mpo.cores, strict=True)
    ]
    graph = helper.make_graph(
        [node],
        "mpo",
        [helper.make_tensor_value_info("x", elem, ["batch", "seq", mpo.in_features])],
        [helper.make_tensor_value_info("y", elem, ["batch", "seq", mpo.out_features])],
        initializer=inits,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(DOMAIN, 1)],
        functions=[mpo_linear_function(k, OPSET)],
    )
    return model


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
