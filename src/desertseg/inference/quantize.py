"""int8 models: onnxruntime static quantization (QDQ) of an exported graph, calibrated on real
training images, with the layers that lose accuracy kept in float, and a parity guard.

How the float layers are found (per-layer sensitivity, not guesswork): the graph is cut into
the model's blocks (every node belongs to the block of the last weight-carrying node before
it: ``encoder.features.3``, ``decoder.blocks.2``, ``segmentation_head``, ...); each block is
quantized alone, with the calibration ranges of the full run, and the signal-to-noise ratio of
the logits against float32 on calibration images is its sensitivity. The fully quantized graph
is tried first; while it fails the guard, more of the most sensitive blocks stay float (1, 2,
4, ... of them). Whole blocks, not single nodes: a lone float node inside an int8 block adds
quantize/dequantize steps around it and measured worse than either. Nothing is written unless
a graph passes.

The guard (:mod:`desertseg.inference.parity`), at the masks' full resolution on every labelled
check set: argmax agreement with the float32 graph on >= 99% of the pixels, and mIoU (all
classes and classes present) no lower than float32's by more than 0.005.

Shape: same graph interface as :mod:`desertseg.inference.export` (``image`` ``(N, 3, H, W)`` in [0, 1]
-> ``logits`` ``(N, C, H, W)``).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np

from ..data.decoding import resize_image
from ..io import atomic_write, file_sha256
from ..models.checkpoint import META_KEY, load_model
from . import parity  # thresholds read through the module: one setting for Guard.ok and the messages
from .export import ExportError, to_onnx_bytes
from .parity import CheckSet, Guard, guard
from .runtime import onnx_session, require_onnxruntime

if TYPE_CHECKING:
    from torch import nn

# How many of the most sensitive blocks stay float, tried in this order.
TRIES = (0, 1, 2, 4, 8, 12, 16, 20, 24)


def _input(image: np.ndarray) -> dict:
    return {"image": np.ascontiguousarray(image.transpose(2, 0, 1)[None], dtype=np.float32) / 255}


def _reader(images: Sequence[np.ndarray]):
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(images)

        def get_next(self):
            image = next(self.it, None)
            return None if image is None else _input(image)

    return Reader()


@contextlib.contextmanager
def _quiet():
    """onnxruntime's quantization tools print progress and advice through print() and the root
    logger; the CLI prints its own summary."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


def quantize_graph(float_path: Path, out: Path, images: Sequence[np.ndarray], cache: Path, exclude: Sequence[str] = (), only: Sequence[str] | None = None) -> Path:
    """Static QDQ quantization: int8 per-channel weights, uint8 activations with percentile
    (99.99%) ranges from ``images`` (kept in ``cache``, so later calls skip calibration),
    nodes in ``exclude`` left float (or only the nodes in ``only`` quantized)."""
    require_onnxruntime()
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    with _quiet():
        quantize_static(
            str(float_path),
            str(out),
            _reader(images),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            weight_type=QuantType.QInt8,
            activation_type=QuantType.QUInt8,
            nodes_to_exclude=list(exclude),
            nodes_to_quantize=list(only) if only is not None else None,
            calibrate_method=CalibrationMethod.Percentile,
            extra_options={"CalibPercentile": 99.99},
            calibration_cache_path=str(cache),
        )
    return out


def prepare_graph(model: "nn.Module", meta: dict, out: Path) -> Path:
    """The float32 export of ``model``, shape-inferred and graph-optimised for quantization."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    raw = out.with_name(out.stem + ".raw.onnx")
    raw.write_bytes(to_onnx_bytes(model, meta)[0])
    with _quiet():
        quant_pre_process(str(raw), str(out), skip_symbolic_shape=True)
    return out


def blocks(float_path: Path) -> list[tuple[str, list[str]]]:
    """``(block name, its node names)`` in graph order. A node's block is named by the weight of
    the last Conv/Gemm/MatMul up to it, up to the first index (``encoder.features.3``,
    ``decoder.blocks.2``, ``segmentation_head``); nodes before the first weight join it."""
    import onnx

    graph = onnx.load(str(float_path)).graph
    weights = {t.name for t in graph.initializer}
    parts: dict[str, list[str]] = {}
    current, pending = None, []
    for node in graph.node:
        weight = next((i for i in node.input if i in weights), None) if node.op_type in ("Conv", "Gemm", "MatMul") else None
        if weight is not None:
            current = _block_name(weight)
        if current is None:
            pending.append(node.name)
            continue
        parts.setdefault(current, []).extend(pending + [node.name])
        pending = []
    if pending:
        parts.setdefault(current or "graph", []).extend(pending)
    return list(parts.items())


def _block_name(weight: str) -> str:
    parts = weight.removeprefix("model.").split(".")
    index = next((k for k, part in enumerate(parts) if part.isdigit()), None)
    return ".".join(parts[: index + 1]) if index is not None else ".".join(parts[:-1]) or parts[0]


def _sqnr_db(ref: np.ndarray, out: np.ndarray) -> float:
    noise = float(np.square(ref - out).sum())
    return float("inf") if noise == 0 else 10 * float(np.log10(np.square(ref).sum() / noise))


def sensitivity(float_path: Path, images: Sequence[np.ndarray], cache: Path, work: Path, progress: bool = True, parts: Sequence[tuple[str, list[str]]] | None = None) -> list[tuple[str, float]]:
    """``(block name, logits SQNR in dB with only that block int8)`` for every block (default:
    :func:`blocks`), most sensitive (lowest SQNR) first; measured on ``images`` (calibration
    images)."""
    from tqdm import tqdm

    parts = list(parts if parts is not None else blocks(float_path))
    ref_session = onnx_session(float_path)
    ref = np.concatenate([ref_session.run(None, _input(im))[0] for im in images])
    scores = []
    for name, nodes in tqdm(parts, desc="block sensitivity", unit="block", disable=not progress):
        session = onnx_session(quantize_graph(float_path, work / "one.onnx", images, cache, only=nodes))
        scores.append((name, _sqnr_db(ref, np.concatenate([session.run(None, _input(im))[0] for im in images]))))
    return sorted(scores, key=lambda s: s[1])


def _give_back(kept: list[str], path: Path, result: Guard, attempt: Callable, tries: list, log: Callable) -> tuple[list[str], Path, Guard]:
    """Return to int8 each float block the guard does not need, least sensitive first (int8
    blocks run faster); ``attempt(blocks)`` quantizes with those float and returns
    ``(file, guard)``. Returns the smallest passing set found, its file and its guard."""
    for name in reversed(list(kept)):
        trial = [b for b in kept if b != name]
        trial_path, trial_result = attempt(trial)
        tries.append(trial_result.as_try(trial))
        log(f"  without {name} float: {trial_result.describe()}")
        if trial_result.ok:
            kept, result = trial, trial_result
            path = trial_path.replace(path)
    return kept, path, result


def export_int8(
    checkpoint: Path | str, out: Path | str, calibration: Sequence[np.ndarray], check_sets: Sequence[CheckSet], progress: bool = True, log: Callable[[str], None] = print
) -> tuple[Path, dict]:
    """Quantize a ``.safetensors`` model file to an int8 ``.onnx`` file at ``out`` that passes
    the guard on ``check_sets``, calibrated on ``calibration`` (real ``(H, W, 3)`` uint8
    training images, resized to the model's input size). Returns ``(path, quantization
    metadata)``; raises :class:`ExportError` saying by how much the best try failed, and
    writes nothing, when no try passes.
    """
    from .predict import Predictor

    if not calibration or not check_sets or not all(cs.pairs for cs in check_sets):
        raise ValueError("int8 export needs calibration images and labelled check sets with at least one pair each")
    checkpoint, out = Path(checkpoint), Path(out)
    model, meta = load_model(checkpoint)
    meta = {**meta, "source_sha256": file_sha256(checkpoint), "source_file": checkpoint.name}
    calib = [resize_image(im, tuple(meta["input_size"])) for im in calibration]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        float_path, cache = prepare_graph(model, meta, work / "float32.onnx"), work / "calibration.json"

        def masks(path: Path) -> dict[str, list[np.ndarray]]:
            predictor = Predictor(onnx_session(path), meta, backend="onnx")
            return {cs.name: [predictor.predict(image).mask for image, _ in cs.pairs] for cs in check_sets}

        parts = dict(blocks(float_path))

        def _try(kept: list[str], out_path: Path) -> tuple[Path, Guard]:
            path = quantize_graph(float_path, out_path, calib, cache, exclude=[n for name in kept for n in parts[name]])
            return path, guard(float_masks, masks(path), check_sets)

        float_masks, ranking, tries = masks(float_path), [], []
        for k in (k for k in TRIES if k < len(parts)):
            if k and not ranking:
                log(f"int8 fails the guard with every block quantized; measuring the sensitivity of its {len(parts)} blocks ...")
                ranking = sensitivity(float_path, calib[:4], cache, work, progress, list(parts.items()))
            kept = [name for name, _ in ranking[:k]]
            path, result = _try(kept, work / "int8.onnx")
            tries.append(result.as_try(kept))
            log(f"  {k} blocks float: {result.describe()}")
            if result.ok:
                break
        else:
            raise ExportError(f"{out}: no int8 graph passes the parity guard; {parity.best_try(tries)}")
        kept, path, result = _give_back(kept, path, result, lambda trial: _try(trial, work / "trial.onnx"), tries, log)
        quantization = {
            "method": "onnxruntime static QDQ: int8 per-channel weights, uint8 activations, percentile (99.99%) ranges",
            "calibration_images": len(calib),
            "blocks": len(parts),
            "float_blocks": [{"block": name, "sqnr_db_alone": round(db, 2)} for name, db in ranking if name in kept],
            "sensitivity_db": {name: round(db, 2) for name, db in ranking},
            "guard": {"passed": True, "min_agreement": parity.MIN_AGREEMENT, "max_miou_drop": parity.MAX_MIOU_DROP, "sets": result.sets},
            "tries": tries,
        }
        _write(path, out, {**meta, "precision": "int8", "quantization": quantization})
    return out, quantization


def _write(graph: Path, out: Path, meta: dict) -> None:
    """``graph`` with ``meta`` as its desertseg metadata, written atomically to ``out``."""
    import onnx

    proto = onnx.load(str(graph))
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, {META_KEY: json.dumps(meta)})
    atomic_write(out, lambda tmp: tmp.write_bytes(proto.SerializeToString()))
