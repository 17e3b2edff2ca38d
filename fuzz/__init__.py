"""Coverage-guided fuzzing of every parser qwthn-onnx owns: ``python -m fuzz`` (see README).

Python entry points run under atheris (:mod:`fuzz.python_targets`), the C++ attribute and shape
decoding under libFuzzer (:mod:`fuzz.native`); both report a :class:`fuzz.common.FuzzResult`.
"""
