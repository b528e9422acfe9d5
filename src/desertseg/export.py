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
import hashlib
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

from .checkpoint import META_KEY, CheckpointError, input_normalisation, load_model
from .errors import MissingExtra
from .io import atomic_write
from .models import PadToMultiple

OPSET = 18
INPUT_NAME, OUTPUT_NAME = "image", "logits"
INSTALL_HINT = "onnxruntime is not installed; install it with `pip install desertseg[onnx]`"
# Argmax agreement below this share of pixels fails an export.
MIN_AGREEMENT = 0.999


class ExportError(RuntimeError):
    """The model could not be exported, or its export does not agree with PyTorch; nothing was written."""


class ExportGraph(nn.Module):
    """``(N, 3, H, W)`` float in [0, 1] -> ``(N, C, H, W)`` logits, normalisation inside.

    :class:`~desertseg.models.PadToMultiple` skips padding with a Python ``if`` on the
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


def require_onnxruntime():
    """Import onnxruntime, or fail with how to install it."""
    try:
        import onnxruntime
    except ImportError:
        raise MissingExtra(INSTALL_HINT) from None
    return onnxruntime


def file_sha256(path: Path | str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def to_onnx_bytes(model: nn.Module, metadata: dict, opset: int = OPSET, example_size: tuple[int, int] | None = None) -> tuple[bytes, str]:
    """Export ``model`` (as loaded by :func:`~desertseg.checkpoint.load_model`) to ONNX bytes.

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


def onnx_session(model: Path | str | bytes, device: str = "cpu", threads: int | None = None):
    """An onnxruntime session for an ``.onnx`` file (or its bytes), ``threads`` intra-op threads
    (default: torch's thread count, so both backends use the same CPU share)."""
    ort = require_onnxruntime()
    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads or torch.get_num_threads())
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    providers = ["CPUExecutionProvider"]
    if device == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise MissingExtra("the onnx backend on cuda needs onnxruntime-gpu (CUDAExecutionProvider is not available); use --backend torch on GPUs")
        providers = ["CUDAExecutionProvider", *providers]
    src = model if isinstance(model, bytes) else str(model)
    try:
        return ort.InferenceSession(src, so, providers=providers)
    except Exception as e:
        name = "ONNX model" if isinstance(model, bytes) else model
        raise CheckpointError(name, f"onnxruntime cannot load it ({type(e).__name__}: {str(e)[:300]})") from None


def session_metadata(session, path: Path | str) -> dict:
    """The desertseg metadata stored in an ONNX model's ``metadata_props``."""
    props = session.get_modelmeta().custom_metadata_map
    if META_KEY not in props:
        raise CheckpointError(path, "ONNX model has no desertseg metadata; export it with `desertseg export`")
    try:
        return json.loads(props[META_KEY])
    except json.JSONDecodeError as e:
        raise CheckpointError(path, f"ONNX metadata is not valid JSON ({e})") from None


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
    from .data import resize_image
    from .transforms import normalize

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


def sibling_onnx(checkpoint: Path | str) -> Path | None:
    """An ``.onnx`` file beside ``checkpoint`` exported from exactly this file (sha256 checked)."""
    checkpoint = Path(checkpoint)
    candidate = checkpoint.with_suffix(".onnx")
    if not candidate.is_file():
        return None
    try:
        import onnx

        proto = onnx.load(str(candidate), load_external_data=False)
        props = {p.key: p.value for p in proto.metadata_props}
        source = json.loads(props.get(META_KEY, "{}")).get("source_sha256")
    except Exception:
        return None
    return candidate if source and source == file_sha256(checkpoint) else None
