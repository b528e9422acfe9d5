"""Inference: the ``Predictor`` (``predict``) over its backends and their files (``runtime``:
PyTorch, onnxruntime float32 and int8; ``pt2e``: PyTorch PT2E int8), ONNX export (``export``),
int8 quantization (``quantize``, ``pt2e_export``) with its parity guard (``parity``), the input collector (``inputs``), writing
predictions (``outputs``, ``pipeline``, ``video``), and ``benchmark``.

May import: the package top, ``data`` and ``models``; ``parity`` and ``benchmark`` also read
labelled splits with ``evaluation``. Never imports ``training``.
"""
