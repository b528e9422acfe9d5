"""ONNX export of a model file, its parity check against PyTorch, and loading it in onnxruntime.

The exported graph is self-contained: it takes RGB images as float in [0, 1] and folds the
model file's input normalisation (its metadata's ``mean``/``std``) and the pad-to-/32-then-crop
step inside, with dynamic batch, height and width; the model file's JSON metadata travels in
the ONNX ``metadata_props`` under the same key as in the ``.safetensors`` header, so an
``.onnx`` file describes itself too.

Shape:
    graph input ``image`` ``(N, 3, H, W)`` float32 in [0, 1]; output ``logits`` ``(N, C, H, W)``.
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..io import atomic_write, file_sha256
from ..models.checkpoint import META_KEY, input_normalisation, load_model
from ..models.registry import PadToMultiple
from .runtime import onnx_session, session_metadata

OPSET = 18
INPUT_NAME, OUTPUT_NAME = "image", "logits"
# Argmax agreement below this share of pixels fails an export.
MIN_AGREEMENT = 0.999


class ExportError(RuntimeError):
    """The model could not be exported, or its export does not agree with PyTorch; nothing was written."""


class ExportGraph(nn.Module):
    """``(N, 3, H, W)`` float in [0, 1] -> ``(N, C, H, W)`` logits, normalisation inside.

    :class:`~desertseg.models.registry.PadToMultiple` skips padding with a Python ``if`` on the
    input size, which an exporter would freeze for one size; here padding is always applied
    (by zero rows when the size is already a multiple), which computes the same logits for
    every size and keeps H and W dynamic.
    """

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.multiple = 1
        if isinstance(model, PadToMultiple):
            model, self.multiple = model.model, model.multiple
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = (image - self.mean) / self.std
        if self.multiple == 1:
            return self.model(x)
        h, w = x.shape[-2], x.shape[-1]
        ph = (self.multiple - h % self.multiple) % self.multiple
        pw = (self.multiple - w % self.multiple) % self.multiple
        return self.model(F.pad(x, (0, pw, 0, ph), mode="replicate"))[..., :h, :w]


def to_onnx_bytes(model: nn.Module, metadata: dict, opset: int = OPSET, example_size: tuple[int, int] | None = None) -> tuple[bytes, str]:
    """Export ``model`` (as loaded by :func:`~desertseg.models.checkpoint.load_model`) to ONNX bytes.

    Tries the ``torch.export`` based exporter first and falls back to the TorchScript one.
    Returns ``(model_bytes, exporter_name)``; ``metadata`` goes into ``metadata_props``.
    """
    import onnx

    graph = ExportGraph(model.eval().float().cpu(), *input_normalisation(metadata, metadata.get("path", "model metadata"))).eval()
    h, w = example_size or tuple(metadata.get("input_size", (256, 256)))
    example = torch.rand(2, 3, h, w)
    errors = []
    proto = None
    try:
        dims = {0: torch.export.Dim("batch", min=1, max=4096), 2: torch.export.Dim("height", min=8, max=8192), 3: torch.export.Dim("width", min=8, max=8192)}
        # The dynamo exporter prints progress lines; the CLI prints its own summary.
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(graph, (example,), dynamo=True, opset_version=opset, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamic_shapes={"image": dims}, verbose=False)
        proto, exporter = program.model_proto, "dynamo"
    except Exception as e:  # some graphs only go through the TorchScript exporter
        errors.append(f"dynamo exporter: {type(e).__name__}: {str(e)[:300]}")
    if proto is None:
        try:
            buf = io.BytesIO()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    graph,
                    (example,),
                    buf,
                    dynamo=False,
                    opset_version=opset,
                    input_names=[INPUT_NAME],
                    output_names=[OUTPUT_NAME],
                    dynamic_axes={INPUT_NAME: {0: "batch", 2: "height", 3: "width"}, OUTPUT_NAME: {0: "batch", 2: "height", 3: "width"}},
                )
            proto, exporter = onnx.load_from_string(buf.getvalue()), "torchscript"
        except Exception as e:
            errors.append(f"TorchScript exporter: {type(e).__name__}: {str(e)[:300]}")
            raise ExportError(f"ONNX export of model '{metadata.get('model')}' failed: " + "; ".join(errors)) from None
    meta = {
        **{k: v for k, v in metadata.items() if k != "path"},
        "onnx": {"input": f"{INPUT_NAME} (N, 3, H, W) float32 RGB in [0, 1], normalisation inside", "output": f"{OUTPUT_NAME} (N, C, H, W)", "opset": opset, "exporter": exporter},
    }
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, {META_KEY: json.dumps(meta)})
    return proto.SerializeToString(), exporter


@dataclass
class Parity:
    """Agreement of the ONNX model with PyTorch on the same images."""

    images: int
    sizes: list  # [(H, W), ...] checked
    max_abs_logit_diff: float
    argmax_agreement: float  # share of pixels with the same class
    ok: bool

    def as_dict(self) -> dict:
        return asdict(self)


def parity_check(model: nn.Module, session, images: Sequence[np.ndarray], sizes: Sequence[tuple[int, int]]) -> Parity:
    """Run PyTorch ``model`` (input normalised with the mean/std in the session's metadata) and
    the ONNX ``session`` ([0, 1] input) on ``images`` resized to each of ``sizes`` = (H, W), as
    one batch per size."""
    from ..data.decoding import resize_image
    from ..data.transforms import normalize

    mean, std = input_normalisation(session_metadata(session, "ONNX model"), "ONNX model")

    diff, agree, total = 0.0, 0, 0
    for size in sizes:
        x = torch.from_numpy(np.stack([resize_image(im, size) for im in images])).permute(0, 3, 1, 2).float().div_(255)
        with torch.inference_mode():
            ref = model.eval().float().cpu()(normalize(x, mean, std)).float().numpy()
        out = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
        if out.shape != ref.shape:
            raise RuntimeError(f"ONNX output shape {out.shape} differs from PyTorch's {ref.shape} at input size {size}")
        diff = max(diff, float(np.abs(out - ref).max()))
        agree += int((out.argmax(1) == ref.argmax(1)).sum())
        total += ref.shape[0] * ref.shape[2] * ref.shape[3]
    share = agree / total
    return Parity(len(images), [list(s) for s in sizes], diff, share, share >= MIN_AGREEMENT)


def export_onnx(checkpoint: Path | str, out: Path | str, check_images: Sequence[np.ndarray] | None = None, opset: int = OPSET) -> tuple[Path, Parity | None, str]:
    """Export a ``.safetensors`` model file to ``out`` (written atomically).

    With ``check_images`` (real ``(H, W, 3)`` uint8 images), the parity check runs at the
    model's input size and at half of it (two sizes exercise the dynamic axes) with the
    images as one batch; below :data:`MIN_AGREEMENT` argmax agreement it raises and leaves
    no file. Returns ``(path, parity or None, exporter)``.
    """
    if opset < 17:
        raise ValueError(f"opset must be >= 17, got {opset}")
    checkpoint, out = Path(checkpoint), Path(out)
    model, meta = load_model(checkpoint)
    meta = {**meta, "source_sha256": file_sha256(checkpoint), "source_file": checkpoint.name}
    data, exporter = to_onnx_bytes(model, meta, opset)
    parity = None
    if check_images:
        h, w = meta["input_size"]
        session = onnx_session(data)
        parity = parity_check(model, session, check_images, [(h, w), (max(8, h // 2 + 1), max(8, w // 2 + 3))])
        if not parity.ok:
            raise ExportError(
                f"{out}: ONNX export disagrees with PyTorch: argmax agreement {parity.argmax_agreement:.4%} < {MIN_AGREEMENT:.1%} (max abs logit difference {parity.max_abs_logit_diff:.3g}); file not written"
            )
    atomic_write(out, lambda tmp: tmp.write_bytes(data))
    return out, parity, exporter
