"""Inference: the ``Predictor`` (``predict``) over its backends and their files (``runtime``:
PyTorch, onnxruntime float32 and int8), ONNX export (``export``) and int8 quantization with its
parity guard (``quantize``), writing predictions (``outputs``, ``pipeline``, ``video``), and
``benchmark``.

May import: the package top, ``data`` and ``models``; ``quantize`` and ``benchmark`` also score
with ``evaluation``. Never imports ``training``.
"""
