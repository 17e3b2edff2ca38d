"""Tensors from request JSON: row-major, flat or nested, strict about datatypes."""

import json

import numpy as np
import pytest

from serving.errors import BadRequestError, ServingError
from serving.protocol import RequestInput, decode_tensor, encode_response


def _input(data, shape, datatype="INT64", **extra):
    return RequestInput(name="t", shape=shape, datatype=datatype, data=data, **extra)


@pytest.mark.parametrize(
    "data", [[1, 2, 3, 4, 5, 6], [[1, 2, 3], [4, 5, 6]], [[1, 2], [3, 4], [5, 6]]]
)
def test_flat_or_nested_data_is_row_major(data):
    array = decode_tensor(_input(data, [2, 3]), "INT64")
    assert array.dtype == np.int64
    np.testing.assert_array_equal(array, [[1, 2, 3], [4, 5, 6]])


def test_numbers_convert_to_the_model_datatype():
    assert decode_tensor(_input([1, 2.5], [2], "FP32"), "FP32").dtype == np.float32
    assert decode_tensor(_input([1, 2], [2], "FP16"), "FP16").dtype == np.float16
    assert decode_tensor(_input([True, False], [2], "BOOL"), "BOOL").dtype == np.bool_
    empty = decode_tensor(_input([], [1, 2, 0, 4], "FP32"), "FP32")
    assert empty.shape == (1, 2, 0, 4)


@pytest.mark.parametrize(
    ("tensor", "datatype", "fragment"),
    [
        (_input([1, 2], [2], "INT32"), "INT64", "the model takes datatype INT64"),
        (_input([1, 2], [2], "INT"), "INT64", "unknown datatype 'INT'"),
        (_input([1, 2], [3]), "INT64", "holds 3 elements but data has 2"),
        (_input([1.5, 2], [2]), "INT64", "takes integers; data holds non-integer numbers"),
        (_input([True, False], [2]), "INT64", "takes integers; data holds booleans"),
        (_input(["a", "b"], [2]), "INT64", "data holds strings"),
        (_input([[1, 2], [3]], [3]), "INT64", "not a regular"),
        (_input([1, 2], [2], "BOOL"), "BOOL", "takes booleans"),
        (_input(["1.5"], [1], "FP32"), "FP32", "takes numbers"),
        (_input([300], [1], "UINT8"), "UINT8", "out of the range of UINT8"),
        (_input([2**63], [1]), "INT64", "out of the range of INT64"),
        (_input(["x"], [1], "BYTES"), "BYTES", "BYTES is not supported"),
        (_input([1], [1], parameters={"binary_data_size": 8}), "INT64", "binary tensor data"),
    ],
)
def test_bad_tensors_name_the_problem(tensor, datatype, fragment):
    with pytest.raises(BadRequestError, match=fragment):
        decode_tensor(tensor, datatype)


def test_response_is_flat_row_major_and_exact():
    values = np.array([[0.1, 1e-8], [3.0, -2.5]], np.float32)
    body = json.loads(encode_response("m", "1", "id-1", {"y": ("FP32", values.T)}))
    data = body["outputs"][0].pop("data")
    assert body == {
        "model_name": "m",
        "model_version": "1",
        "id": "id-1",
        "outputs": [{"name": "y", "datatype": "FP32", "shape": [2, 2]}],
    }
    # Row-major order of the (non-contiguous) array given, each value read back exactly.
    assert np.array_equal(np.asarray(data, np.float32), values.T.ravel())


@pytest.mark.parametrize(
    ("datatype", "array"),
    [
        ("FP16", np.array([0.1, -65504, 6e-8], np.float16)),
        ("FP64", np.array([0.1, 1e-300, -2.5])),
        ("INT64", np.array([-(2**63), 2**63 - 1], np.int64)),
        ("UINT8", np.array([0, 255], np.uint8)),
        ("BOOL", np.array([True, False])),
    ],
)
def test_response_data_reads_back_exactly_in_every_datatype(datatype, array):
    body = json.loads(encode_response("m", "1", "i", {"y": (datatype, array)}))
    data = body["outputs"][0]["data"]
    assert np.array_equal(np.asarray(data, array.dtype), array)
    assert all(isinstance(v, bool) for v in data) == (datatype == "BOOL")


def test_non_finite_outputs_are_a_server_error_naming_them():
    with pytest.raises(ServingError, match="output y holds NaN or infinity"):
        encode_response("m", "1", "i", {"y": ("FP32", np.array([np.nan], np.float32))})
