"""Serving exported QWTHN models: an Open Inference Protocol v2 (KServe v2) REST server that
also speaks OpenAI's API and Triton's generate, configuration and statistics extensions.

- ``repository``: one export directory or a Triton-like ``<repo>/<model>/<version>/`` layout.
- ``model``: a loaded version, its tensors in protocol terms, request checks and the inputs the
  server fills in (a client may send only ``input_ids``).
- ``protocol``: the protocol's JSON objects, and tensors to and from JSON.
- ``batching``: dynamic batching of concurrent requests, onnxruntime off the event loop.
- ``generation``: one text-generation request, checked, then generated a token at a time, its
  text streamed in pieces that add up to the final text.
- ``scheduler``: fair scheduling of generation: a worker thread per model version steps the
  active requests round-robin, a token each.
- ``app``: ``create_app(repository, settings)``, the FastAPI app (health, metadata, inference,
  text generation with server-sent events, OpenQASM programs, Triton's model configuration and
  statistics, Prometheus ``/metrics``, OpenAPI ``/docs``); ``middleware``, ``metrics``,
  ``errors``, ``streaming`` (server-sent events, disconnects) and ``schema`` (OpenAPI bodies)
  serve it.
- ``openai``: the OpenAI-compatible ``/v1`` API (models, completions, chat completions) on the
  same generation path.
- ``pbtxt``: reads a Triton ``config.pbtxt`` (protobuf text format) without protobuf.
- ``cli``: ``qwthn-serve`` / ``python -m serving``.
- ``testing``: a real server process for tests and benchmarks (start, wait ready, read its
  resources from ``/proc``, stop with SIGTERM).
"""

from qwthn_onnx._lazy import lazy_exports

# Imported on first use (PEP 562): the CLI reads the repository and starts loading models
# before the web stack (FastAPI, pydantic) is imported.
_LAZY = {
    "Settings": "serving.app",
    "create_app": "serving.app",
    "ModelRepository": "serving.repository",
    "RepositoryError": "serving.repository",
    "discover": "serving.repository",
}

__all__ = ["ModelRepository", "RepositoryError", "Settings", "create_app", "discover"]


__getattr__, __dir__ = lazy_exports(__name__, _LAZY)
