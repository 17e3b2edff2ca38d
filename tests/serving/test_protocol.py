"""Tensors from request JSON: row-major, flat or nested, strict about datatypes."""

import json

import numpy as np
import pytest

from serving.errors import BadRequestError, ServingError
from serving.protocol import (
    InferenceRequest,
    RequestInput,
    RequestOutput,
    attach_binary_data,
    decode_tensor,
    encode_response,
    wants_binary,
)


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
        (_input(None, [1]), "INT64", "has no data: give 'data', or 'binary_data_size'"),
        # found by fuzzing: numpy refuses it even with a zero dim (a ValueError, a 500)
        (_input([], [2**40, 2**40, 0], "FP32"), "FP32", "too large for an array"),
        (_input([], [2**63 - 1, 1, 0]), "INT64", "too large for an array"),
        # found by fuzzing: it became inf in FP32, and the model's outputs NaN (a 500)
        (_input([1, 8.9e44], [2], "FP32"), "FP32", r"finite numbers within ±3\.403e\+38"),
        (_input([70000.0], [1], "FP16"), "FP16", r"finite numbers within ±6\.55e\+04"),
    ],
)
def test_bad_tensors_name_the_problem(tensor, datatype, fragment):
    with pytest.raises(BadRequestError, match=fragment):
        decode_tensor(tensor, datatype)


def test_response_is_flat_row_major_and_exact():
    values = np.array([[0.1, 1e-8], [3.0, -2.5]], np.float32)
    body = json.loads(encode_response("m", "1", "id-1", {"y": ("FP32", values.T)})[0])
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
    body = json.loads(encode_response("m", "1", "i", {"y": (datatype, array)})[0])
    data = body["outputs"][0]["data"]
    assert np.array_equal(np.asarray(data, array.dtype), array)
    assert all(isinstance(v, bool) for v in data) == (datatype == "BOOL")


def test_non_finite_outputs_are_a_server_error_naming_them():
    with pytest.raises(ServingError, match="output y holds NaN or infinity"):
        encode_response("m", "1", "i", {"y": ("FP32", np.array([np.nan], np.float32))})


# The binary tensor data extension: raw little-endian bytes after the JSON.


def _binary_request(inputs, outputs=None, **parameters):
    return InferenceRequest(inputs=inputs, outputs=outputs, parameters=parameters or None)


def test_binary_inputs_take_their_bytes_in_order():
    a, b = np.arange(6, dtype=np.int64).reshape(2, 3), np.array([1.5, -2], np.float32)
    request = _binary_request(
        [
            _input(None, [2, 3], parameters={"binary_data_size": a.nbytes}),
            _input([7], [1], "INT32"),  # JSON data may sit between binary inputs
            RequestInput(
                name="b", shape=[2], datatype="FP32", parameters={"binary_data_size": b.nbytes}
            ),
        ]
    )
    attach_binary_data(request, a.tobytes() + b.tobytes())
    first, middle, last = request.inputs
    np.testing.assert_array_equal(decode_tensor(first, "INT64"), a)
    np.testing.assert_array_equal(decode_tensor(middle, "INT32"), [7])
    np.testing.assert_array_equal(decode_tensor(last, "FP32"), b)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_binary_floats_must_be_finite(value):
    data = np.array([1.0, value], np.float32)
    request = _binary_request([_input(None, [2], "FP32", parameters={"binary_data_size": 8})])
    attach_binary_data(request, data.tobytes())
    with pytest.raises(BadRequestError, match="holds NaN, infinity or a number too large"):
        decode_tensor(request.inputs[0], "FP32")


@pytest.mark.parametrize(
    ("size", "payload", "fragment"),
    [
        (16, b"\0" * 8, "goes past the end of the 8 bytes"),
        (8, b"\0" * 12, "4 bytes after the JSON belong to no input"),
        (-1, b"", "binary_data_size must be an int >= 0"),
        ("8", b"\0" * 8, "binary_data_size must be an int >= 0"),
    ],
)
def test_binary_sizes_that_disagree_with_the_payload_are_refused(size, payload, fragment):
    request = _binary_request([_input(None, [1], parameters={"binary_data_size": size})])
    with pytest.raises(BadRequestError, match=fragment):
        attach_binary_data(request, payload)


def test_binary_input_of_the_wrong_size_or_with_data_too_is_refused():
    request = _binary_request([_input(None, [2], parameters={"binary_data_size": 8})])
    attach_binary_data(request, b"\0" * 8)
    with pytest.raises(BadRequestError, match="takes 16 bytes, binary_data_size is 8"):
        decode_tensor(request.inputs[0], "INT64")
    both = _binary_request([_input([1], [1], parameters={"binary_data_size": 8})])
    with pytest.raises(BadRequestError, match="has both 'data' and binary_data_size"):
        attach_binary_data(both, b"\0" * 8)
    flags = _binary_request([_input(None, [2], "BOOL", parameters={"binary_data_size": 2})])
    attach_binary_data(flags, b"\x01\x07")
    with pytest.raises(BadRequestError, match="bytes other than 0/1"):
        decode_tensor(flags.inputs[0], "BOOL")


def test_binary_outputs_follow_the_json_which_describes_them():
    y, z = np.array([[0.25, -1]], np.float32), np.array([3, 4], np.int64)
    body, json_length = encode_response("m", "1", "i", {"y": ("FP32", y), "z": ("INT64", z)}, ["y"])
    header = json.loads(body[:json_length])
    assert header["outputs"][0] == {
        "name": "y",
        "datatype": "FP32",
        "shape": [1, 2],
        "parameters": {"binary_data_size": 8},
    }
    assert header["outputs"][1]["data"] == [3, 4]
    np.testing.assert_array_equal(np.frombuffer(body[json_length:], "<f4").reshape(1, 2), y)
    # NaN has no JSON form, but travels as bytes.
    nan = np.array([np.nan], np.float32)
    body, json_length = encode_response("m", "1", "i", {"y": ("FP32", nan)}, ["y"])
    assert np.isnan(np.frombuffer(body[json_length:], "<f4")).all()


def test_which_outputs_are_binary():
    request = _binary_request(
        [_input([1], [1])],
        outputs=[
            RequestOutput(name="a", parameters={"binary_data": True}),
            RequestOutput(name="b", parameters={"binary_data": False}),
            RequestOutput(name="c"),
        ],
        binary_data_output=True,
    )
    assert [wants_binary(request, n) for n in "abcd"] == [True, False, True, True]
    plain = _binary_request([_input([1], [1])], outputs=[RequestOutput(name="c")])
    assert not wants_binary(plain, "c")
