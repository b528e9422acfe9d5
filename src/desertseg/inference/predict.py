"""Inference: a :class:`Predictor` loaded once from a model file, used by the CLI, the
evaluation and the dashboard alike, so preprocessing lives in one place.

Two backends run the network (:mod:`desertseg.inference.runtime`): eager PyTorch (conv+BN folded,
channels_last, optional bf16 autocast and ``torch.compile``) and onnxruntime (a float32 or
int8 ``.onnx`` file from ``desertseg export``). Pre- and post-processing are the same for both: one uint8 antialiased bilinear resize
(pixel-identical to the PIL resize training uses at 960x540 -> 480x270), and logits
upsampled bilinearly to the image's size then argmaxed, computed exactly but only at class
boundaries (:func:`upsample_argmax`).

Shape:
    in ``(H, W, 3)`` uint8 RGB at any size; out ``(H, W)`` uint8 class indices at the same
    size, and optionally ``(C, H, W)`` float32 probabilities.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..models.checkpoint import default_model_path, input_normalisation, load_model
from .backends import resolve_backend
from .runtime import (
    OnnxRunner,
    TorchRunner,
    _is_session,
    _resize,
    check_backend,
    describe_device,
    onnx_session,
    pick_device,
    session_metadata,
    upsample_argmax,
)


@dataclass
class Prediction:
    mask: np.ndarray  # (H, W) uint8 class indices
    probs: np.ndarray | None = None  # (C, H, W) float32, when asked for

    @property
    def confidence(self) -> np.ndarray:
        """``(H, W)`` float32 probability of the predicted class."""
        if self.probs is None:
            raise ValueError("confidence needs probabilities: call predict(..., return_probs=True)")
        return self.probs.max(0)


@dataclass
class Timing:
    """Seconds spent, accumulated over calls; ``images`` counts images."""

    preprocess: float = 0.0
    model: float = 0.0
    postprocess: float = 0.0
    images: int = 0


class Predictor:
    """Segment images with a trained model.

    Args:
        model: a module mapping ``(N, 3, h, w)`` normalised images to ``(N, C, h, w)`` logits,
            or an onnxruntime session of a graph exported by :mod:`desertseg.inference.export`.
        metadata: the model file's metadata (input size, classes, ``mean``/``std``: the input
            normalisation the model was trained with, required).
        device: ``"cpu"``, ``"cuda"`` or ``None`` for CUDA when present.
        flip: test-time augmentation with a horizontal flip (probabilities averaged).
        scales: test-time multi-scale factors of the input size, e.g. ``(0.75, 1.0, 1.25)``.
        sliding_window: run at the image's own resolution in overlapping windows of the
            model's input size (for images larger than the training size).
        backend: ``"torch"``, ``"onnx"``, ``"int8"``, ``"pt2e"`` or ``"auto"``: onnx for an
            onnxruntime session (int8 when its metadata says so), pt2e for a compiled
            :class:`~desertseg.inference.pt2e.Pt2eRunner`, torch for a module (see
            :meth:`from_checkpoint` for how files pick one).
        bf16: bfloat16 autocast for the torch backend, where it agrees and is faster.
        compile: ``torch.compile`` the network (torch backend).
    """

    def __init__(
        self,
        model,
        metadata: dict,
        device: str | None = None,
        flip: bool = False,
        scales: Sequence[float] = (1.0,),
        sliding_window: bool = False,
        backend: str = "auto",
        bf16: bool = False,
        compile: bool = False,
    ):
        check_backend(backend)
        self.device = pick_device(device)
        mean, std = input_normalisation(metadata, metadata.get("path", "model metadata"))
        if backend == "pt2e":  # a compiled PT2E int8 graph (inference.pt2e.Pt2eRunner)
            if any(s != 1.0 for s in scales):
                raise ValueError("the pt2e graph is compiled for the model's one input size; test-time scales need backend 'int8' or 'torch'")
            self.model, self.runner = model, model
        elif _is_session(model):
            if backend == "torch":
                raise ValueError("an ONNX model runs only with backend 'onnx'; load the .safetensors model file for the torch backend")
            self.model, self.runner = model, OnnxRunner(model)
        elif backend in ("onnx", "int8"):
            # Never an export behind the caller's back: `desertseg export` writes (and checks) one.
            raise ValueError(f"backend '{backend}' runs an onnxruntime session of an exported model; export it with `desertseg export` and pass the session, or use Predictor.from_checkpoint")
        else:
            self.model = model.eval().to(self.device)
            self.runner = TorchRunner(self.model, self.device, mean, std, bf16=bf16, compile=compile)
        self.precision = str(metadata.get("precision", "float32"))
        self.backend = self.runner.name if self.runner.name == "pt2e" else "int8" if self.precision == "int8" else self.runner.name
        self.metadata = metadata
        self.input_size: tuple[int, int] = tuple(metadata["input_size"])  # (H, W)
        self.num_classes = int(metadata["num_classes"])
        self.flip = flip
        self.scales = tuple(scales)
        self.sliding_window = sliding_window
        self.timing = Timing()

    @classmethod
    def from_checkpoint(cls, path: Path | str | None = None, **kwargs) -> "Predictor":
        """Load a release model file, ``.safetensors`` or ``.onnx``; ``None`` means the bundled
        default model.

        Backends for a ``.safetensors`` file: ``"torch"`` runs it in PyTorch (conv+BN folded,
        channels_last); ``"onnx"`` and ``"int8"`` run the float32 (``<stem>.onnx``) or int8
        (``<stem>.int8.onnx``) export lying beside it, used only when it was exported from
        exactly this file (sha256 recorded at export) and, for int8, passed the parity guard
        (:mod:`desertseg.inference.quantize`); without one they fail with the command that writes it.
        ``"pt2e"`` runs the model int8 through PyTorch's PT2E flow from the ``<stem>.pt2e``
        calibration beside it (:mod:`desertseg.inference.pt2e`), compiled for this machine the
        first time (half a minute or so) and cached. ``"auto"`` (the default) takes the fastest path
        that passes the guard: on a CPU pt2e once this machine has compiled it and timed it
        faster than the int8 export (``desertseg compile``), else the int8 export when there is
        one, else PyTorch; on a GPU, PyTorch. ``auto`` skips pt2e with test-time scales and
        with ``pipelined=True`` (the caller decodes and writes in threads beside the model, as
        :func:`~desertseg.inference.outputs.predict_paths` does: the compiled graph holds the
        GIL while it runs, so they would wait). An ``.onnx`` file runs in onnxruntime.
        """
        path = Path(path) if path is not None else default_model_path()
        device = pick_device(kwargs.get("device"))
        # pt2e runs one input size, and holds the GIL while it runs: a folder pipeline's
        # decoding and writing threads would wait on it (`pipelined`), so auto skips it there.
        pt2e_ok = all(s == 1.0 for s in kwargs.get("scales", (1.0,))) and not kwargs.pop("pipelined", False)
        backend, found = resolve_backend(path, kwargs.pop("backend", "auto"), device, pt2e_ok)
        path, pt2e_file = (path, found) if backend == "pt2e" else (found, None)
        if backend == "torch":
            model, meta = load_model(path)
            return cls(model, {**meta, "path": str(path)}, backend="torch", **kwargs)
        if backend == "pt2e":
            from .pt2e import load

            runner, meta = load(path, pt2e_file)
            return cls(runner, meta, backend="pt2e", **kwargs)
        session = onnx_session(path, device.type)
        meta = {**session_metadata(session, path), "path": str(path)}
        if backend == "int8" and meta.get("precision") != "int8":
            raise ValueError(f"{path}: backend 'int8' needs an int8 export (`desertseg export --precision int8`); this file is {meta.get('precision', 'float32')}")
        return cls(session, meta, backend="onnx", **kwargs)

    @property
    def name(self) -> str:
        return f"{self.metadata['model']} ({Path(self.metadata.get('path', '?')).name})"

    def describe_device(self) -> str:
        """Where and how the model runs, e.g. ``cpu (x86_64, 2 threads), onnxruntime``."""
        engine = {"onnx": "onnxruntime", "int8": "onnxruntime int8", "pt2e": "PyTorch PT2E int8 (inductor)"}.get(self.backend, "pytorch")
        return f"{describe_device(self.device)}, {engine}"

    def _batch(self, images: Sequence[np.ndarray], size: tuple[int, int]) -> torch.Tensor:
        """``(N, 3, h, w)`` float in [0, 1] at ``size``: torch's uint8 antialiased bilinear
        resize, the same filter as PIL's (``data.resize_image``, used in training)."""
        x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2)  # channels_last view, no copy
        if tuple(x.shape[-2:]) != tuple(size):
            x = F.interpolate(x, size=size, mode="bilinear", antialias=True, align_corners=False)
        return x.float().div_(255)

    def _logits_at(self, images: list[np.ndarray], size: tuple[int, int]) -> torch.Tensor:
        """Logits ``(N, C, h, w)`` at ``size`` (on the runner's device)."""
        t0 = time.perf_counter()
        x = self._batch(images, size)
        t1 = time.perf_counter()
        logits = self.runner(x)
        self.timing.preprocess += t1 - t0
        self.timing.model += time.perf_counter() - t1
        return logits

    def _probs_at(self, images: list[np.ndarray], size: tuple[int, int]) -> torch.Tensor:
        """Softmax probabilities ``(N, C, h, w)`` at ``size``, with flip TTA when enabled."""
        t0 = time.perf_counter()
        x = self._batch(images, size)
        t1 = time.perf_counter()
        probs = self.runner(x).softmax(1)
        if self.flip:
            probs += self.runner(x.flip(-1)).softmax(1).flip(-1)
            probs /= 2
        self.timing.preprocess += t1 - t0
        self.timing.model += time.perf_counter() - t1
        return probs.float()

    def _sliding(self, image: np.ndarray) -> torch.Tensor:
        """Probabilities at the image's own size from overlapping windows (1/3 overlap)."""
        H, W = image.shape[:2]
        h, w = min(self.input_size[0], H), min(self.input_size[1], W)
        probs = torch.zeros(1, self.num_classes, H, W)
        count = torch.zeros(1, 1, H, W)
        for y in _starts(H, h):
            for x in _starts(W, w):
                crop = np.ascontiguousarray(image[y : y + h, x : x + w])
                probs[..., y : y + h, x : x + w] += self._probs_at([crop], (h, w)).cpu()
                count[..., y : y + h, x : x + w] += 1
        return probs / count

    def predict_batch(self, images: Sequence[np.ndarray], return_probs: bool = False) -> list[Prediction]:
        """Segment images of one size or many; each result is at its image's own size."""
        for i, im in enumerate(images):
            if not (isinstance(im, np.ndarray) and im.ndim == 3 and im.shape[2] == 3 and im.dtype == np.uint8):
                raise ValueError(f"image {i}: expected (H, W, 3) uint8 RGB, got {getattr(im, 'shape', type(im))} {getattr(im, 'dtype', '')}")
        results: list[Prediction | None] = [None] * len(images)
        # Group by size so one forward pass serves each group.
        groups: dict[tuple[int, int], list[int]] = {}
        for i, im in enumerate(images):
            groups.setdefault(im.shape[:2], []).append(i)
        plain = not self.sliding_window and not self.flip and self.scales == (1.0,)
        for (H, W), idx in groups.items():
            group = [images[i] for i in idx]
            if plain:
                logits = self._logits_at(group, self.input_size).float()
                t0 = time.perf_counter()
                if logits.is_cuda:  # the GPU resizes every pixel faster than boundaries cost on the CPU
                    probs = _resize(logits, (H, W))
                    masks = probs.max(1).indices.to(torch.uint8).cpu().numpy()
                    probs = probs.softmax(1).cpu().numpy() if return_probs else None
                    for j, i in enumerate(idx):
                        results[i] = Prediction(masks[j], probs[j] if probs is not None else None)
                else:
                    for j, i in enumerate(idx):
                        if return_probs:
                            probs = _resize(logits[j : j + 1], (H, W)).softmax(1)[0]
                            results[i] = Prediction(probs.max(0).indices.to(torch.uint8).numpy(), probs.numpy())
                        else:
                            results[i] = Prediction(upsample_argmax(logits[j], (H, W)))
                self.timing.postprocess += time.perf_counter() - t0
                continue
            if self.sliding_window:
                probs = torch.cat([self._sliding(im) for im in group])
            else:
                probs = 0
                for s in self.scales:
                    size = (max(8, round(self.input_size[0] * s)), max(8, round(self.input_size[1] * s)))
                    probs = probs + _resize(self._probs_at(group, size), (H, W))
                probs = (probs / len(self.scales)).cpu()
            t0 = time.perf_counter()
            masks = probs.max(1).indices.to(torch.uint8).numpy()
            for j, i in enumerate(idx):
                results[i] = Prediction(masks[j], probs[j].numpy().astype(np.float32) if return_probs else None)
            self.timing.postprocess += time.perf_counter() - t0
        self.timing.images += len(images)
        return results  # type: ignore[return-value]

    def predict(self, image: np.ndarray, return_probs: bool = False) -> Prediction:
        """Segment one ``(H, W, 3)`` uint8 RGB image."""
        return self.predict_batch([image], return_probs)[0]


def _starts(total: int, window: int) -> list[int]:
    if total <= window:
        return [0]
    stride = max(1, window * 2 // 3)
    starts = list(range(0, total - window, stride))
    return starts + [total - window]
