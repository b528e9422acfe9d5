"""Which backend and file a model file runs with: the rules of ``backend="auto"`` and the
errors that say which export is missing, in one place for :class:`~desertseg.inference.predict.Predictor`
and ``desertseg info``."""

from __future__ import annotations

from pathlib import Path

import torch

from ..models.checkpoint import CheckpointError
from .runtime import check_backend, find_export, require_onnxruntime


def resolve_backend(path: Path, backend: str, device: torch.device, pt2e_ok: bool = True) -> tuple[str, Path]:
    """``(backend, file to load)`` for a model file and a requested backend, as
    :meth:`Predictor.from_checkpoint` documents it; ``auto`` resolves to what runs (pt2e only
    when ``pt2e_ok`` and this machine measured it faster than the int8 file)."""
    check_backend(backend)
    if path.suffix.lower() == ".onnx":
        if backend in ("torch", "pt2e"):
            raise ValueError(f"{path}: an ONNX model runs only with backend 'onnx'; pass the .safetensors model file for the torch and pt2e backends")
        return backend if backend != "auto" else "onnx", path
    if backend == "torch" or (backend == "auto" and device.type != "cpu"):
        return "torch", path
    if backend == "pt2e":
        from .pt2e import find, torchao_version

        torchao_version()
        if device.type != "cpu":
            raise ValueError("backend 'pt2e' runs on the CPU; use backend 'torch' on GPUs")
        found = find(path)
        if found is None:
            raise CheckpointError(
                path,
                f"no PT2E calibration of this file beside it; write one with `desertseg export --precision int8 --engine pt2e --checkpoint {path} --calibration-images TRAIN_IMAGES --check-data LABELLED_SPLIT`",
            )
        return "pt2e", found
    if backend == "auto":
        from .pt2e import compiled, faster_here

        found = compiled(path) if pt2e_ok else None
        if found is not None and faster_here(found):  # compiled here, and measured the faster int8 path here (`desertseg compile`)
            return "pt2e", found
    else:
        require_onnxruntime()
    found = find_export(path, "float32" if backend == "onnx" else "int8")
    if found is not None:
        return "onnx" if backend == "onnx" else "int8", found
    if backend == "auto":
        return "torch", path
    how = "desertseg export --precision int8 --checkpoint {} --calibration-images TRAIN_IMAGES --check-data LABELLED_SPLIT" if backend == "int8" else "desertseg export --checkpoint {}"
    raise CheckpointError(path, f"no {backend} export of this file beside it; write one with `{how.format(path)}`")
