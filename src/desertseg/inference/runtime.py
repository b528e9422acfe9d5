"""How a network runs: device choice, the backends (eager PyTorch with folded batch norm,
channels_last and optional bf16/torch.compile; onnxruntime for float32 and int8 exports) and
loading their files (sessions, metadata, the exports found beside a model file), and the fast
exact resize and logits-upsampling used around them. :class:`desertseg.inference.predict.Predictor` puts
them together.
"""

from __future__ import annotations

import copy
import json
import platform
import time
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..data.transforms import normalize
from ..errors import MissingExtra
from ..io import file_sha256
from ..models.checkpoint import META_KEY, CheckpointError

BACKENDS = ("auto", "torch", "onnx", "int8", "pt2e")
INSTALL_HINT = "onnxruntime is not installed; install it with `pip install desertseg[onnx]`"
# bf16 autocast must agree with float32 on this share of pixels to be used.
BF16_MIN_AGREEMENT = 0.999


def describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def pick_device(device: str | None = None) -> torch.device:
    """The torch device for ``device`` (None or auto: cuda when present). A device that does not
    exist here is the user's choice, so it is a ValueError saying what to pass, not torch's
    RuntimeError from deep inside the first ``.to()``."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    gpus = torch.cuda.device_count() if dev.type == "cuda" else 0
    if dev.type == "cuda" and (dev.index or 0) >= gpus:
        usable = f"cuda:0 to cuda:{gpus - 1} or cpu" if gpus else "cpu"
        raise ValueError(f"device {device!r} is not available: {gpus} CUDA GPUs are usable here (torch {torch.__version__}); use {usable}")
    return dev


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend '{backend}'; choose one of: {', '.join(BACKENDS)}")
    return backend


def _is_session(model) -> bool:
    return hasattr(model, "run") and hasattr(model, "get_inputs")


def fuse_conv_bn(model: torch.nn.Module) -> torch.nn.Module:
    """A copy of an eval-mode ``model`` with each Conv2d -> BatchNorm2d pair (consecutive
    children of one module, as in smp and torchvision ``Sequential`` blocks) folded into one
    conv: the same function with one memory pass fewer per block."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model = copy.deepcopy(model).eval()
    for module in model.modules():
        names = list(module._modules)
        for a, b in zip(names, names[1:]):
            conv, bn = module._modules[a], module._modules[b]
            # Exact types only: subclasses such as timm's BatchNormAct2d also apply an activation.
            if type(conv) is torch.nn.Conv2d and type(bn) is torch.nn.BatchNorm2d and bn.track_running_stats and bn.running_mean is not None:
                module._modules[a] = fuse_conv_bn_eval(conv, bn)
                module._modules[b] = torch.nn.Identity()
    return model


class TorchRunner:
    """Eager PyTorch: ``(N, 3, h, w)`` float in [0, 1] -> ``(N, C, h, w)`` float32 logits, the
    input normalised with ``mean``/``std`` (the model file's, see
    :func:`desertseg.models.checkpoint.input_normalisation`).

    ``bf16``: autocast to bfloat16, kept only if on the first batch it agrees with float32
    on >= 99.9% of pixels and (on CPU) is faster; otherwise a warning says why it is off.
    ``compile``: ``torch.compile`` the network on first use (slow start, may be faster).
    """

    name = "torch"

    def __init__(self, model: torch.nn.Module, device: torch.device, mean: Sequence[float], std: Sequence[float], bf16: bool = False, compile: bool = False):
        self.device = device
        self.mean, self.std = tuple(mean), tuple(std)
        self.net = fuse_conv_bn(model).to(device)
        self.channels_last = True
        self.net = self.net.to(memory_format=torch.channels_last)
        self.bf16 = bf16
        self._bf16_checked = not bf16
        if compile:
            try:
                self.net = torch.compile(self.net, dynamic=True)
            except Exception as e:  # no compiler toolchain: stay eager
                warnings.warn(f"torch.compile unavailable ({type(e).__name__}: {e}); running eager", stacklevel=2)

    def _forward(self, x: torch.Tensor, bf16: bool) -> torch.Tensor:
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16):
            return self.net(x).float()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = normalize(x.to(self.device, non_blocking=True), self.mean, self.std).contiguous(memory_format=torch.channels_last)
        if not self._bf16_checked:
            return self._check_bf16(x)
        return self._forward(x, self.bf16)

    def _check_bf16(self, x: torch.Tensor) -> torch.Tensor:
        self._bf16_checked = True
        timings = {}
        outs = {}
        for use in (False, True, False, True):  # the first pass of each warms up
            t0 = time.perf_counter()
            outs[use] = self._forward(x, use)
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            timings[use] = time.perf_counter() - t0
        agreement = (outs[True].argmax(1) == outs[False].argmax(1)).float().mean().item()
        faster = self.device.type != "cpu" or timings[True] < timings[False]
        if agreement < BF16_MIN_AGREEMENT or not faster:
            self.bf16 = False
            why = f"argmax agreement with float32 {agreement:.4%}" if agreement < BF16_MIN_AGREEMENT else f"not faster ({1000 * timings[True]:.0f} ms vs {1000 * timings[False]:.0f} ms)"
            warnings.warn(f"bf16 autocast disabled: {why}", stacklevel=3)
            return outs[False]
        return outs[True]


class OnnxRunner:
    """onnxruntime: ``(N, 3, h, w)`` float in [0, 1] -> ``(N, C, h, w)`` float32 logits (CPU tensor).
    The graph normalises itself (see :mod:`desertseg.inference.export`)."""

    name = "onnx"

    def __init__(self, session):
        self.session = session
        self.input = session.get_inputs()[0].name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = self.session.run(None, {self.input: np.ascontiguousarray(x.cpu().numpy())})[0]
        return torch.from_numpy(out)


def _resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of ``(N, C, h, w)`` float maps; channels_last is ~2x faster on CPU."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x.contiguous(memory_format=torch.channels_last), size=size, mode="bilinear", align_corners=False).contiguous()


def _source_index(out: int, inp: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each output row (or column): the two source indices and the weight of the second,
    as ``F.interpolate(mode="bilinear", align_corners=False)`` computes them."""
    scale = np.float32(inp) / np.float32(out)
    src = np.maximum((np.arange(out, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5), np.float32(0))
    i0 = np.minimum(src.astype(np.int64), inp - 1)
    i1 = np.where(i0 < inp - 1, i0 + 1, i0)
    return i0, i1, (src - i0).astype(np.float32)


def _expand(boundary: np.ndarray, y0: np.ndarray, x0: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The output pixels ``(i, j)`` whose source pixel ``(y0[i], x0[j])`` is marked in the
    ``(h, w)`` mask ``boundary``: found from the few marked source pixels, not by searching
    every output pixel (``y0`` and ``x0`` are sorted, as :func:`_source_index` makes them)."""
    h, w = boundary.shape
    rows, cols = np.nonzero(boundary)
    first_y, count_y = np.searchsorted(y0, np.arange(h)), np.bincount(y0, minlength=h)
    first_x, count_x = np.searchsorted(x0, np.arange(w)), np.bincount(x0, minlength=w)
    ny, nx = count_y[rows], count_x[cols]
    per = ny * nx
    which = np.repeat(np.arange(len(rows)), per)
    offset = np.arange(int(per.sum())) - np.repeat(np.cumsum(per) - per, per)
    return first_y[rows][which] + offset // nx[which], first_x[cols][which] + offset % nx[which]


def upsample_argmax(logits: torch.Tensor, size: tuple[int, int], max_boundary: float = 0.25) -> np.ndarray:
    """``argmax`` over classes of ``logits`` bilinearly resized to ``size``, computed exactly
    but cheaply: an output pixel whose four source pixels share one argmax class gets that
    class (a convex combination of vectors whose largest entry is class c has its largest
    entry at c), so interpolation only runs at class boundaries, a few percent of pixels.
    Falls back to the full resize when more than ``max_boundary`` of the pixels are boundary.

    Shape: ``(C, h, w)`` float logits -> ``(H, W)`` uint8 class indices.
    """
    H, W = size
    C, h, w = logits.shape
    # Classes last: torch's argmax over the first of three dimensions is ~10x slower (measured).
    hwc = logits.float().cpu().permute(1, 2, 0).contiguous()
    if (h, w) == (H, W):
        return hwc.argmax(-1).to(torch.uint8).numpy()
    a = hwc.argmax(-1).to(torch.uint8).numpy()  # (h, w)
    ap = np.pad(a, ((0, 1), (0, 1)), mode="edge")
    corner = ap[:-1, :-1]
    boundary = (corner != ap[:-1, 1:]) | (corner != ap[1:, :-1]) | (corner != ap[1:, 1:])
    y0, y1, wy = _source_index(H, h)
    x0, x1, wx = _source_index(W, w)
    # Clamped borders repeat a row/column, which the edge padding above reproduces.
    out = a.take(y0, 0).take(x0, 1)
    ys, xs = _expand(boundary, y0, x0)
    if len(ys) > max_boundary * H * W:
        return _resize(logits[None].float().cpu(), size)[0].max(0).indices.to(torch.uint8).numpy()
    L = hwc.numpy().reshape(h * w, C)
    a0, a1, b0, b1 = y0[ys] * w, y1[ys] * w, x0[xs], x1[xs]
    ly, lx = wy[ys, None], wx[xs, None]
    # Bilinear weights on the four source rows, gathered by flat index and combined in place:
    # 1.7x faster than 2-D fancy indexing with temporaries (measured), the same arithmetic.
    top = L.take(a0 + b0, 0) * (1 - lx)
    top += L.take(a0 + b1, 0) * lx
    bottom = L.take(a1 + b0, 0) * (1 - lx)
    bottom += L.take(a1 + b1, 0) * lx
    top *= 1 - ly
    bottom *= ly
    top += bottom
    out[ys, xs] = top.argmax(1)
    return out


def require_onnxruntime():
    """Import onnxruntime, or fail with how to install it."""
    try:
        import onnxruntime
    except ImportError:
        raise MissingExtra(INSTALL_HINT) from None
    return onnxruntime


def onnx_session(model: Path | str | bytes, device: str = "cpu", threads: int | None = None):
    """An onnxruntime session for an ``.onnx`` file (or its bytes), ``threads`` intra-op threads
    (default: torch's thread count, so both backends use the same CPU share)."""
    ort = require_onnxruntime()
    so = ort.SessionOptions()
    so.intra_op_num_threads = int(threads or torch.get_num_threads())
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Idle workers would spin for a while after each run, taking the CPU from the decoding and
    # postprocessing that follow it in this process (measured: 4 ms more per image on 2 threads).
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
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


# Export file names beside a ``<stem>.safetensors`` model file, by precision.
EXPORT_SUFFIXES = {"float32": ".onnx", "int8": ".int8.onnx"}


def find_export(checkpoint: Path | str, precision: str = "float32") -> Path | None:
    """The ``<stem>.onnx`` (float32) or ``<stem>.int8.onnx`` file beside ``checkpoint`` when it
    was exported from exactly this file (sha256 recorded at export) at that precision; an int8
    file must also record a passed parity guard (:mod:`desertseg.inference.quantize`)."""
    checkpoint = Path(checkpoint)
    candidate = checkpoint.with_name(checkpoint.stem + EXPORT_SUFFIXES[precision])
    if not candidate.is_file():
        return None
    try:  # without onnxruntime (the onnx extra) there is nothing to run it with
        import onnx
        import onnxruntime  # noqa: F401

        proto = onnx.load(str(candidate), load_external_data=False)
        meta = json.loads({p.key: p.value for p in proto.metadata_props}.get(META_KEY, "{}"))
    except Exception:
        return None
    if meta.get("precision", "float32") != precision or meta.get("source_sha256") != file_sha256(checkpoint):
        return None
    if precision == "int8" and not meta.get("quantization", {}).get("guard", {}).get("passed"):
        return None
    return candidate
