"""int8 through PyTorch's PT2E flow: torchao's ``X86InductorQuantizer``, compiled ahead of time by inductor.

Which int8 path is faster depends on the model, the blocks kept float and the CPU. On an AMD
EPYC with AVX-512 VNNI, 2 threads, the bundled FPN's model time was 31.4 to 34.1 ms against
onnxruntime's 47.4 (``desertseg benchmark``), with the same 11 float blocks; a calibration
that kept FPN's stride-4 decoder block ``decoder.seg_blocks.3`` float instead ran 50 to 57 ms,
slower than onnxruntime. So ``backend="auto"`` takes it only where ``desertseg compile`` timed
it faster (:func:`faster_here`). It needs torchao (the
``pt2e`` extra) and a C++ compiler. The compiled graph holds the GIL for much of its run (at
one thread, a Python loop in another thread ran at 0.10 to 0.35 of its idle speed meanwhile,
against 0.93 to 0.95 beside onnxruntime and PyTorch: ``benchmarks/pt2e_gil.py``), so a folder
``predict``, which decodes and writes in threads beside the model, runs slower with it than
with onnxruntime (``benchmarks/folder_throughput.py``): there ``auto`` keeps onnxruntime.

The file ``<stem>.pt2e`` beside a model file (safetensors format) holds the calibration only:
every observer's statistics after calibrating on real training images, with JSON metadata (the
source's sha256, the blocks kept float, the parity guard's figures, torch and torchao
versions), written by :func:`desertseg.inference.pt2e_export.export_pt2e`. Nothing is unpickled.

Compiled code is machine code for one CPU and thread count, so it is never shipped: the first
load on a machine rebuilds the quantized graph from the float model and those statistics
(export, insert observers, restore them, convert), compiles it with AOTInductor (23 to 38 s on
2 cores) and keeps the package in this user's cache (:func:`compiled_path`); later loads take
it from there in about 1.3 s (``benchmarks/load_time.py``). A package is native code, so it is
only ever loaded from that cache, which only this machine's compiles write, never from beside
a model file.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Callable, Sequence

import torch

from ..errors import MissingExtra
from ..io import atomic_write, file_sha256
from ..models.checkpoint import META_KEY, CheckpointError, input_normalisation, load_model, read_metadata

SUFFIX = ".pt2e"
INSTALL_HINT = 'the pt2e backend needs torchao and platformdirs: pip install "desertseg[pt2e]"'
OBSERVER = "activation_post_process"
CACHE_ENV = "DESERTSEG_CACHE"  # where compiled packages are kept; default: the user's cache folder
NO_COMPILER = "it needs a C++ compiler; use backend 'int8' (onnxruntime) instead"


def require_torchao():
    """torchao's x86 quantizer module and its ``prepare_pt2e`` / ``convert_pt2e``, or fail with how to install them."""
    try:
        import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    except ImportError:
        raise MissingExtra(INSTALL_HINT) from None
    return xiq, prepare_pt2e, convert_pt2e


def torchao_version() -> str:
    """The installed torchao's version, read without importing it (an import takes seconds), or
    fail with how to install it."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("torchao")
    except PackageNotFoundError:
        raise MissingExtra(INSTALL_HINT) from None


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


def compiled_path(path: Path | str) -> Path:
    """Where this machine keeps the compiled package of calibration file ``path``: keyed by the
    file's sha256, the CPU's instruction set, the thread count (inductor builds it into the
    kernels: a 1-thread build has no OpenMP regions) and the torch and torchao versions, so that none of them changing reuses a stale one."""
    try:
        import platformdirs
    except ImportError:
        raise MissingExtra(INSTALL_HINT) from None
    root = Path(os.environ.get(CACHE_ENV) or platformdirs.user_cache_dir("desertseg")) / "pt2e"
    parts = [Path(path).stem, file_sha256(path)[:16], torch.backends.cpu.get_cpu_capability(), f"t{torch.get_num_threads()}", f"torch{torch.__version__}", f"torchao{torchao_version()}"]
    return root / (re.sub(r"[^\w.-]", "_", "-".join(parts)) + ".pt2")


def compile_package(prepared: torch.nn.Module, example: torch.Tensor, package: Path | str) -> Path:
    """Convert a calibrated ``prepared`` graph to int8 and compile it for ``example``'s shape with
    AOTInductor into the ``.pt2`` file ``package``. Freezing folds the int8 weights into the
    compiled kernels; without it, no int8 speed."""
    _, _, convert_pt2e = require_torchao()
    from torch._inductor import aoti_compile_and_package

    try:
        with torch.no_grad():
            program = torch.export.export(convert_pt2e(prepared), (example,))
            atomic_write(package, lambda tmp: aoti_compile_and_package(program, package_path=str(tmp), inductor_configs={"freezing": True}), suffix=".pt2")
    except Exception as e:
        # The machine's problem, not a bug: a one-line error that says what to do.
        raise MissingExtra(f"inductor could not compile the int8 graph ({type(e).__name__}: {str(e)[:300]}); {NO_COMPILER}") from None
    return Path(package)


class Pt2eRunner:
    """The compiled int8 graph of a ``.pt2`` package: ``(N, 3, h, w)`` float in [0, 1] ->
    ``(N, C, h, w)`` float32 logits, the input normalised with ``mean``/``std``. Images run one
    at a time, at the one shape it was compiled for, so it serves every batch size."""

    name = "pt2e"

    def __init__(self, package: Path | str, example: torch.Tensor, mean: Sequence[float], std: Sequence[float]):
        from torch._inductor import aoti_load_package

        self.package, self.mean, self.std = Path(package), tuple(mean), tuple(std)
        self.net = aoti_load_package(str(package))
        self._run(example)  # a damaged package fails here, not on the first image

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.net(x)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        from ..data.transforms import normalize

        # Contiguous like the example it was compiled for.
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


def compiled(checkpoint: Path | str) -> Path | None:
    """The calibration file beside ``checkpoint`` (see :func:`find`) when this machine has
    already compiled it at the current thread count, so that it loads in about a second. None
    without torchao."""
    found = find(checkpoint)
    try:
        return found if found is not None and compiled_path(found).is_file() else None
    except MissingExtra:
        return None


def speed_path(path: Path | str) -> Path:
    """Where ``desertseg compile`` records, beside this machine's compiled package of calibration
    file ``path``, how fast it ran against the onnxruntime int8 file on this machine."""
    return compiled_path(path).with_suffix(".speed.json")


def write_speed(path: Path | str, record: dict) -> None:
    """Record ``{"pt2e_ms": ..., "int8_ms": ...}`` (model time per image here; ``int8_ms`` None
    without an int8 file or onnxruntime) for :func:`faster_here`."""
    atomic_write(speed_path(path), lambda tmp: tmp.write_text(json.dumps(record)), suffix=".json")


def read_speed(path: Path | str) -> dict | None:
    """What :func:`write_speed` recorded on this machine for calibration file ``path``, if anything."""
    try:
        record = json.loads(speed_path(path).read_text())
        return record if isinstance(record, dict) and isinstance(record.get("pt2e_ms"), (int, float)) else None
    except (OSError, ValueError, MissingExtra):
        return None


def faster_here(path: Path | str) -> bool:
    """Whether this machine measured its compiled package of ``path`` faster than the onnxruntime
    int8 path (``desertseg compile`` measures it): what ``backend="auto"`` needs to take PT2E.
    Which one wins depends on the model and the CPU (how many blocks stay float, VNNI or AMX),
    so it is measured where it runs, never assumed."""
    record = read_speed(path)
    if record is None:
        return False
    int8_ms = record.get("int8_ms")
    return not isinstance(int8_ms, (int, float)) or record["pt2e_ms"] < int8_ms


def load(checkpoint: Path | str, path: Path | str, log: Callable[[str], None] | None = None) -> tuple[Pt2eRunner, dict]:
    """The compiled int8 runner of ``checkpoint`` from its calibration file ``path``, and the
    metadata a Predictor needs (the model file's, ``precision`` int8, ``quantization``). The
    first call on a machine compiles it (``log`` says so; stderr by default), later ones take
    the package from :func:`compiled_path`."""
    from safetensors.torch import load_file

    info = read_info(path)
    # The metadata alone while a package exists: it was compiled from this very file (the
    # calibration names its sha256), whose model load_model built and checked then.
    meta = read_metadata(checkpoint)
    mean, std = input_normalisation(meta, checkpoint)
    example = example_input(meta)
    meta = {**meta, "precision": "int8", "quantization": info["quantization"], "source_sha256": info["source_sha256"], "path": str(path)}
    package = compiled_path(path)
    if package.is_file():
        try:
            return Pt2eRunner(package, example, mean, std), meta
        except Exception:
            package.unlink(missing_ok=True)  # damaged (an interrupted copy, a full disk): compile it again
    (log or (lambda m: print(m, file=sys.stderr)))(f"compiling the int8 graph for this CPU, once (half a minute or so); it is kept in {package.parent}")
    model, _ = load_model(checkpoint)
    prepared = prepare(model, example, [b["block"] for b in info["quantization"]["float_blocks"]])
    restore(prepared, load_file(str(path)), path)
    return Pt2eRunner(compile_package(prepared, example, package), example, mean, std), meta
