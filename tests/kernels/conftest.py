import pytest

from qwthn_onnx import native
from qwthn_onnx.circuit import CircuitError

ISAS = ["baseline", "avx2"]


@pytest.fixture(params=ISAS)
def isa(request):
    """Run a test once per kernel build (the AVX2 one only where the CPU has it)."""
    if native.available() and request.param == "avx2":
        try:
            native.set_isa("avx2")
        except CircuitError:
            pytest.skip("AVX2+FMA not available here")
    elif native.available():
        native.set_isa("baseline")
    yield request.param
    if native.available():
        native.set_isa("auto")
