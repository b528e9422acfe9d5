"""Writing a PT2E int8 calibration (``<stem>.pt2e``, see :mod:`desertseg.inference.pt2e`):
calibrated on real training images, kept only when it passes the parity guard
(:mod:`desertseg.inference.parity`), the blocks kept float starting from the onnxruntime int8
export's per-block sensitivity."""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from ..io import atomic_write, file_sha256
from ..models.checkpoint import META_KEY, CheckpointError, input_normalisation, load_model
from . import parity
from .parity import CheckSet, guard
from .pt2e import Pt2eRunner, compile_package, compiled_path, example_input, observer_state, prepare, require_torchao


def calibrate(model: torch.nn.Module, meta: dict, calibration: Sequence[torch.Tensor], float_blocks: Sequence[str]) -> torch.nn.Module:
    """``model`` prepared for PT2E (``float_blocks`` kept float) with its observers run on
    ``calibration``: ``(1, 3, h, w)`` normalised inputs at the model's input size."""
    prepared = prepare(model, example_input(meta), float_blocks)
    with torch.no_grad():
        for x in calibration:
            prepared(x)
    return prepared


def onnx_ranking(checkpoint: Path | str) -> tuple[list[str], list[str]]:
    """Blocks most sensitive first, as the onnxruntime int8 export of ``checkpoint`` measured
    them (per-block SQNR of the logits), and the blocks that export kept float: PT2E starts from
    its choice."""
    from .runtime import find_export, onnx_session, session_metadata

    found = find_export(checkpoint, "int8")
    if found is None:
        raise CheckpointError(
            checkpoint, "the pt2e engine starts from the per-block sensitivity that the onnxruntime int8 export measured; run `desertseg export --precision int8` (engine onnxruntime) first"
        )
    q = session_metadata(onnx_session(found), found)["quantization"]
    return sorted(q["sensitivity_db"], key=q["sensitivity_db"].get), [b["block"] for b in q["float_blocks"]]


def export_pt2e(
    checkpoint: Path | str,
    out: Path | str,
    calibration: Sequence[np.ndarray],
    check_sets: Sequence[CheckSet],
    ranking: Sequence[str],
    first: Sequence[str] = (),
    log: Callable[[str], None] = print,
) -> tuple[Path, dict]:
    """Calibrate ``checkpoint``'s model with PT2E on ``calibration`` (real ``(H, W, 3)`` uint8
    training images) and write ``out`` when it passes the parity guard on ``check_sets``. The
    first try keeps float the blocks ``first`` (the onnxruntime export's choice, which gave back
    to int8 the blocks its guard did not need); then the first ``k`` blocks of ``ranking`` (most
    sensitive first), ``k`` growing as the onnxruntime export's does. The set matters for speed,
    not only its size: a float block of the decoder that runs at stride 4 (FPN's
    ``decoder.seg_blocks.3``) made the compiled graph 1.5x slower (50 to 57 ms model time on
    2 threads, timed by ``desertseg compile``, against 35 ms with the onnxruntime export's set
    in ``benchmarks/pt2e_vs_onnx.py``). Raises ``ExportError`` (nothing written) when no try
    passes. The passing try's compiled package goes to this machine's
    cache, so loading ``out`` here compiles nothing."""
    from safetensors.torch import save_file

    from ..data.decoding import resize_image
    from ..data.transforms import normalize

    require_torchao()
    checkpoint, out = Path(checkpoint), Path(out)
    model, meta = load_model(checkpoint)
    mean, std = input_normalisation(meta, checkpoint)
    size = tuple(meta["input_size"])
    calib = [normalize(torch.from_numpy(np.array(resize_image(im, size))).permute(2, 0, 1)[None].float() / 255, mean, std) for im in calibration]
    with tempfile.TemporaryDirectory(prefix="desertseg-pt2e-") as work:
        kept, state, package, result, tries = _first_passing(model, meta, (mean, std), calib, check_sets, ranking, first, Path(work), out, log)
        import torchao

        quantization = {
            "method": "PyTorch PT2E: torchao X86InductorQuantizer default static config (int8 per-channel weights, uint8 histogram-calibrated activations), compiled by AOTInductor with freezing on each machine",
            "engine": "pt2e",
            "versions": {"torch": torch.__version__, "torchao": torchao.__version__},
            "calibration_images": len(calib),
            "float_blocks": [{"block": b} for b in kept],
            "guard": {"passed": True, "min_agreement": parity.MIN_AGREEMENT, "max_miou_drop": parity.MAX_MIOU_DROP, "sets": result.sets},
            "tries": tries,
        }
        info = {"format": "desertseg-pt2e/1", "source_sha256": file_sha256(checkpoint), "source_file": checkpoint.name, "input_size": list(size), "quantization": quantization}
        atomic_write(out, lambda tmp: save_file(state, str(tmp), metadata={META_KEY: json.dumps(info)}))
        atomic_write(compiled_path(out), lambda tmp: shutil.copyfile(package, tmp), suffix=".pt2")
    return out, quantization


def _first_passing(model, meta, norm, calib, check_sets, ranking, first, work: Path, out: Path, log):
    """The first try (blocks kept float, observer state, compiled package, guard result, every
    try's record) whose compiled graph passes the guard; ``ExportError`` when none does."""
    from .export import ExportError
    from .predict import Predictor
    from .quantize import TRIES

    float_predictor = Predictor(model, meta, device="cpu", backend="torch")
    float_masks = {cs.name: [float_predictor.predict(image).mask for image, _ in cs.pairs] for cs in check_sets}
    tries = []
    candidates = [list(first)] + [list(ranking[:k]) for k in TRIES if len(first) < k <= len(ranking)]
    for n, kept in enumerate(candidates):
        prepared = calibrate(model, meta, calib, kept)
        state = observer_state(prepared)
        # The guard runs the very package that loading compiles from the written file.
        package = compile_package(prepared, example_input(meta), work / f"try{n}.pt2")
        predictor = Predictor(Pt2eRunner(package, example_input(meta), *norm), {**meta, "precision": "int8"}, device="cpu", backend="pt2e")
        result = guard(float_masks, {cs.name: [predictor.predict(image).mask for image, _ in cs.pairs] for cs in check_sets}, check_sets)
        tries.append(result.as_try(kept))
        which = " (the onnxruntime export's)" if n == 0 and first else ""
        log(f"  {len(kept)} blocks float{which}: {result.describe()}")
        if result.ok:
            return kept, state, package, result, tries
    raise ExportError(f"{out}: no PT2E int8 graph passes the parity guard; {parity.best_try(tries)}")
