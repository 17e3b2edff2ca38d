"""``python -m qwthn_onnx.ops``: print the generated op reference (the README section)."""

from qwthn_onnx.ops.schemas import render_reference

print(render_reference(), end="")
