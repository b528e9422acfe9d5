"""The release model format: safetensors weights + JSON metadata in the same file.

Like nanoGPT's checkpoints, a model file describes itself: model name, class table,
normalisation, input size, training config and metrics travel in the safetensors header, so
a file found on disk can be used without guessing. Nothing here unpickles anything.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from .. import __version__
from ..classes import class_table
from ..io import atomic_write

if TYPE_CHECKING:  # torch is imported lazily so that light commands start fast
    from torch import nn

FORMAT = "desertseg/1"
META_KEY = "desertseg"


class CheckpointError(Exception):
    """A model file that cannot be used; the message names the file and the problem."""

    def __init__(self, path: Path | str, problem: str):
        self.path = Path(path)
        super().__init__(f"{path}: {problem}")


def make_metadata(
    model_name: str, input_size: tuple[int, int], config: dict | None = None, metrics: dict | None = None, mean: Sequence[float] | None = None, std: Sequence[float] | None = None, **extra
) -> dict:
    """``mean``/``std``: the input normalisation the model was trained with (default ImageNet's,
    which training applies, see :func:`desertseg.data.transforms.normalize`)."""
    from ..data.transforms import MEAN, STD

    return {
        "format": FORMAT,
        "model": model_name,
        "num_classes": len(class_table()),
        "classes": class_table(),
        "input_size": list(input_size),  # (H, W)
        "mean": [float(v) for v in (MEAN if mean is None else mean)],
        "std": [float(v) for v in (STD if std is None else std)],
        "config": config or {},
        "metrics": metrics or {},
        "desertseg_version": __version__,
        **extra,
    }


def input_normalisation(meta: dict, path: Path | str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(mean, std)`` from a model file's metadata: every backend normalises its [0, 1] RGB input
    with these, as the model was trained. A file without them is refused, never guessed."""
    try:
        mean, std = tuple(float(v) for v in meta["mean"]), tuple(float(v) for v in meta["std"])
    except (KeyError, TypeError, ValueError):
        mean = std = ()
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise CheckpointError(
            path,
            f"metadata lacks a valid input normalisation (mean {meta.get('mean')!r}, std {meta.get('std')!r}; three numbers each, std > 0), "
            "so how to scale its input is unknown; re-import the weights with `desertseg import-model --normalisation ...`",
        )
    return mean, std


def save_model(path: Path | str, model: nn.Module, metadata: dict, half: bool = False) -> Path:
    """Write ``model``'s weights and ``metadata`` to one ``.safetensors`` file (atomically)."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    path = Path(path)
    atomic_write(path, lambda tmp: save_file(state, str(tmp), metadata={META_KEY: json.dumps(metadata)}))
    return path


def read_metadata(path: Path | str) -> dict:
    """The JSON metadata of a release file, without loading the weights."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "model file not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except Exception as e:
        hint = " It looks like a pickled PyTorch file; convert it with `desertseg import-model`." if _looks_pickled(path) else ""
        raise CheckpointError(path, f"not a safetensors model file ({type(e).__name__}: {e}).{hint}") from None
    if META_KEY not in header:
        raise CheckpointError(path, "safetensors file has no desertseg metadata; convert it with `desertseg import-model`")
    try:
        meta = json.loads(header[META_KEY])
    except json.JSONDecodeError as e:
        raise CheckpointError(path, f"metadata is not valid JSON ({e})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(path, f"unsupported format {meta.get('format')!r}; this version reads {FORMAT}")
    return meta


def _looks_pickled(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(4)
    return head[:2] == b"PK" or head[:1] == b"\x80"


def state_mismatches(expected: dict, state: dict) -> list[str]:
    """Missing, unexpected and mis-shaped tensors of ``state`` against ``expected``, as sentences."""
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    shapes = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in expected.items() if k in state and state[k].shape != v.shape]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing tensors (first: {missing[:3]})")
    if extra:
        parts.append(f"{len(extra)} unexpected tensors (first: {extra[:3]})")
    if shapes:
        parts.append(f"{len(shapes)} wrong shapes (first: {shapes[:3]})")
    return parts


def load_model(path: Path | str, allow_class_remap: bool = False) -> tuple[nn.Module, dict]:
    """Build the model named in the file's metadata and load its weights strictly.

    Refuses a file trained with another class table (unless ``allow_class_remap``), and
    reports missing, unexpected or mis-shaped tensors by name.
    """
    from safetensors.torch import load_file

    from .registry import MODELS, build_model

    path = Path(path)
    meta = read_metadata(path)
    if meta.get("classes") != class_table() and not allow_class_remap:
        theirs = [c.get("name") for c in meta.get("classes", [])]
        raise CheckpointError(path, f"model was trained with a different class table ({theirs}); pass allow_class_remap to use it anyway")
    input_normalisation(meta, path)
    name = meta.get("model")
    if name not in MODELS:
        raise CheckpointError(path, f"unknown model '{name}' (known: {', '.join(MODELS)})")
    model = build_model(name, int(meta["num_classes"]), pretrained=False)
    state = load_file(str(path))
    expected = model.state_dict()
    problems = state_mismatches(expected, state)
    if problems:
        raise CheckpointError(path, f"weights do not fit model '{name}': " + "; ".join(problems))
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()})
    return model.eval(), meta


def default_model_path() -> Path:
    """The model shipped inside the package."""
    return Path(__file__).parents[1] / "weights" / "default.safetensors"
