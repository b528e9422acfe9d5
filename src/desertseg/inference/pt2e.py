"""int8 through PyTorch's PT2E flow: torchao's ``X86InductorQuantizer``, compiled by inductor.

Beside the onnxruntime int8 file, on the same model, float blocks and 2 threads
(``benchmarks/pt2e_vs_onnx.py``), its model time was 32.3 against 43.8 ms and its end-to-end
path 9.9x against 7.4x the published one (AMD EPYC with AVX-512 VNNI). It costs a compile when
loaded (11 s there), torchao (the ``pt2e`` extra) and a C++ compiler on the machine, and on 2
cores it does not speed up the pipelined folder ``predict`` (its OpenMP threads take the
cores of the decoding thread), so it is a backend to ask for (``backend="pt2e"``), not the
default.

The file ``<stem>.pt2e`` beside a model file (safetensors format) holds the calibration only:
every observer's statistics after calibrating on real training images, with JSON metadata (the
source's sha256, the blocks kept float, the parity guard's figures, torch and torchao
versions), written by :func:`desertseg.inference.pt2e_export.export_pt2e`. Loading rebuilds
the quantized graph from the float model and those statistics: export, insert observers,
restore them, convert, compile. Nothing is unpickled.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch

from ..errors import MissingExtra
from ..io import file_sha256
from ..models.checkpoint import META_KEY, CheckpointError, input_normalisation, load_model

SUFFIX = ".pt2e"
INSTALL_HINT = 'the pt2e backend needs torchao: pip install "desertseg[pt2e]"'
OBSERVER = "activation_post_process"


def require_torchao():
    """torchao's x86 quantizer module and its ``prepare_pt2e`` / ``convert_pt2e``, or fail with how to install them."""
    try:
        import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    except ImportError:
        raise MissingExtra(INSTALL_HINT) from None
    return xiq, prepare_pt2e, convert_pt2e


def prepare(model: torch.nn.Module, example: torch.Tensor, float_blocks: Sequence[str] = ()) -> torch.nn.Module:
    """``model`` exported at ``example``'s shape with observers inserted by the x86 quantizer's
    default static config (int8 per-channel weights, uint8 activations); the submodules named in
    ``float_blocks`` (e.g. ``encoder.features.1``) stay float."""
    xiq, prepare_pt2e, _ = require_torchao()
    quantizer = xiq.X86InductorQuantizer()
    quantizer.set_global(xiq.get_default_x86_inductor_quantization_config())
    prefix = "model." if hasattr(model, "model") else ""  # the registry's padding wrapper
    for block in float_blocks:
        quantizer.set_module_name_qconfig(prefix + block, None)
    with torch.no_grad():
        return prepare_pt2e(torch.export.export(model.eval(), (example,)).module(), quantizer)


def observer_state(prepared: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every observer buffer of a calibrated ``prepared`` graph, by ``<observer>.<buffer>``."""
    return {f"{name}.{b}": t.detach().clone() for name, m in prepared.named_modules() if name.startswith(OBSERVER) for b, t in m.named_buffers(recurse=False)}


def restore(prepared: torch.nn.Module, state: dict[str, torch.Tensor], path: Path | str) -> None:
    """Put saved observer statistics back into a freshly ``prepared`` graph of the same model."""
    if set(observer_state(prepared)) != set(state):
        raise CheckpointError(
            path, "its observers do not match this model's graph (another model, or another torch/torchao version); export it again with `desertseg export --precision int8 --engine pt2e`"
        )
    for key, t in state.items():
        name, buffer = key.rsplit(".", 1)
        setattr(prepared.get_submodule(name), buffer, t.clone())


class Pt2eRunner:
    """The compiled int8 graph: ``(N, 3, h, w)`` float in [0, 1] -> ``(N, C, h, w)`` float32
    logits, the input normalised with ``mean``/``std``. Images run one at a time, so one input
    shape (one compile) serves every batch size."""

    name = "pt2e"

    def __init__(self, prepared: torch.nn.Module, example: torch.Tensor, mean: Sequence[float], std: Sequence[float]):
        _, _, convert_pt2e = require_torchao()
        self.mean, self.std = tuple(mean), tuple(std)
        with torch.no_grad():
            self.net = torch.compile(convert_pt2e(prepared), dynamic=False)
        try:
            self._run(example)  # compile now, not on the first image
        except Exception as e:
            # The machine's problem, not a bug: a one-line error that says what to do.
            raise MissingExtra(f"inductor could not compile the int8 graph ({type(e).__name__}: {str(e)[:300]}); it needs a C++ compiler; use backend 'int8' (onnxruntime) instead") from None

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        import torch._inductor.config as inductor_config

        # Freezing folds the int8 weights into the compiled kernels; without it, no int8 speed.
        with torch.no_grad(), inductor_config.patch(freezing=True):
            return self.net(x)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        from ..data.transforms import normalize

        # Contiguous like the example it was compiled for: other strides would compile it again.
        x = normalize(x.cpu(), self.mean, self.std).contiguous()
        return torch.cat([self._run(x[i : i + 1]) for i in range(len(x))]).float()


def example_input(meta: dict) -> torch.Tensor:
    """A zero batch of one at the model's input size: the shape the graph is exported and compiled for."""
    return torch.zeros(1, 3, *meta["input_size"])


def read_info(path: Path | str) -> dict:
    """The JSON metadata of a ``.pt2e`` calibration file."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return json.loads((f.metadata() or {})[META_KEY])
    except Exception as e:
        raise CheckpointError(path, f"not a desertseg PT2E calibration file ({type(e).__name__}: {str(e)[:200]})") from None


def find(checkpoint: Path | str) -> Path | None:
    """The ``<stem>.pt2e`` file beside ``checkpoint`` when it was calibrated from exactly this
    file (sha256) and recorded a passed parity guard."""
    checkpoint = Path(checkpoint)
    candidate = checkpoint.with_name(checkpoint.stem + SUFFIX)
    if not candidate.is_file():
        return None
    try:
        info = read_info(candidate)
    except CheckpointError:
        return None
    ok = info.get("source_sha256") == file_sha256(checkpoint) and info.get("quantization", {}).get("guard", {}).get("passed")
    return candidate if ok else None


def load(checkpoint: Path | str, path: Path | str) -> tuple[Pt2eRunner, dict]:
    """The compiled int8 runner of ``checkpoint`` from its calibration file ``path``, and the
    metadata a Predictor needs (the model file's, ``precision`` int8, ``quantization``)."""
    from safetensors.torch import load_file

    info = read_info(path)
    model, meta = load_model(checkpoint)
    mean, std = input_normalisation(meta, checkpoint)
    prepared = prepare(model, example_input(meta), [b["block"] for b in info["quantization"]["float_blocks"]])
    restore(prepared, load_file(str(path)), path)
    meta = {**meta, "precision": "int8", "quantization": info["quantization"], "source_sha256": info["source_sha256"], "path": str(path)}
    return Pt2eRunner(prepared, example_input(meta), mean, std), meta
