"""``desertseg import-model``: bring a model trained elsewhere into the safetensors format.

Accepts a plain state dict (``torch.save(model.state_dict())``) from torchvision or
segmentation-models-pytorch, also wrapped as ``{"state_dict": ...}`` or
``{"model_state_dict": ...}`` (Lightning, common training scripts), with DDP ``module.`` or
``torch.compile`` ``_orig_mod.`` prefixes, or a safetensors file without our metadata. It is
loaded with ``torch.load(weights_only=True)``, which refuses any pickled Python object.

A whole pickled model (``torch.save(model)``, as the published system does) can only be loaded
by running code from the file, so it is refused unless the user passes ``trust_pickle``: then
it is loaded with ``weights_only=False`` after a loud warning. The output is written with
:func:`desertseg.models.checkpoint.save_model`, so ``desertseg info/predict/evaluate`` use it as is.

The input normalisation the weights were trained with is recorded in the file (``mean``/``std``)
and every backend applies it: ``imagenet`` for torchvision/smp-style training (the default),
``none`` for training on plain ``ToTensor`` output in [0, 1] (the published Duality system).
"""

from __future__ import annotations

import hashlib
import pickle
import re
import warnings
from pathlib import Path

import torch
from torch import nn

from ..classes import NUM_CLASSES
from ..data.transforms import MEAN, STD
from .checkpoint import CheckpointError, make_metadata, save_model, state_mismatches

NORMALISATIONS = {"imagenet": (MEAN, STD), "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))}
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "weights")
STRIP_ALWAYS = ("module.", "_orig_mod.")


class PickleTrustWarning(UserWarning):
    """Loading a whole pickled model ran code from the file."""


def _is_safetensors(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and int.from_bytes(head[:8], "little") < (100 << 20) and head[8:9] == b"{"


def _why(e: Exception) -> str:
    """torch's reason in a few words: the Python object the pickle asked for, if any."""
    text = str(e)
    m = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if m:
        return f"it asks for the Python object {m.group(1)}"
    m = re.search(r"WeightsUnpickler error:\s*([^\n]+)", text)
    return f"weights-only unpickler: {m.group(1).strip()}" if m else "weights-only unpickler refused it"


def load_source(path: Path | str, trust_pickle: bool = False):
    """The object stored in ``path``: a dict of tensors normally, an ``nn.Module`` only with ``trust_pickle``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "model file not found")
    if _is_safetensors(path):
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:
            raise CheckpointError(path, f"damaged safetensors file ({e})") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if not trust_pickle:
            raise CheckpointError(
                path,
                "not a plain state dict: the file holds pickled Python objects (probably a whole model saved "
                "with torch.save(model)), and loading it would run code from the file. It was NOT loaded. "
                "If you trust its source, re-run with --trust-pickle; better, save model.state_dict() where it "
                f"was trained and import that. ({_why(e)})",
            ) from None
    except Exception as e:  # not a zip, not a pickle, truncated ...
        raise CheckpointError(path, f"not a readable PyTorch checkpoint ({type(e).__name__}: {e})") from None
    warnings.warn(
        f"{path}: loading a pickled model with --trust-pickle RUNS CODE FROM THE FILE. Only do this for files from a source you trust.",
        PickleTrustWarning,
        stacklevel=2,
    )
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except (AttributeError, ModuleNotFoundError, ImportError) as e:
        raise CheckpointError(
            path,
            f"the pickled model needs code that is not importable here ({e}); in the project that trained it, run torch.save(model.state_dict(), 'state_dict.pth') and import that file instead",
        ) from None
    except Exception as e:
        raise CheckpointError(path, f"cannot unpickle ({type(e).__name__}: {e})") from None


def extract_state_dict(obj, path: Path | str = "?") -> dict[str, torch.Tensor]:
    """The tensors of a state dict, a wrapped state dict, or a module."""
    for _ in range(3):  # {'checkpoint': {'state_dict': {...}}} at most a few levels deep
        if isinstance(obj, nn.Module):
            obj = obj.state_dict()
        if isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
            inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), (dict, nn.Module))), None)
            if inner is None:
                break
            obj = inner
            continue
        break
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(path, f"no state dict found (got {type(obj).__name__}; looked under {', '.join(WRAPPER_KEYS)})")
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(path, f"no tensors found in the state dict (keys: {list(obj)[:5]})")
    return tensors


def map_keys(state: dict[str, torch.Tensor], expected: set[str]) -> dict[str, torch.Tensor]:
    """Rename ``state``'s keys to ``expected``'s: drop ``module.``/``_orig_mod.`` and torchvision's
    ``aux_classifier``, then strip and add the prefix (``model.``, ...) that matches the most keys."""
    clean = {}
    for k, v in state.items():
        changed = True
        while changed:
            changed = False
            for p in STRIP_ALWAYS:
                if k.startswith(p):
                    k, changed = k[len(p) :], True
        clean[k] = v
    strips = {""} | {".".join(k.split(".")[:n]) + "." for k in clean for n in (1, 2) if k.count(".") > n}
    adds = {""} | {".".join(k.split(".")[:n]) + "." for k in expected for n in (1, 2) if k.count(".") > n}
    best, best_hits = clean, -1
    for s in sorted(strips):
        for a in sorted(adds):
            cand = {a + k[len(s) :]: v for k, v in clean.items() if k.startswith(s)}
            hits = len(expected.intersection(cand))
            if hits > best_hits:
                best, best_hits = cand, hits
    return {k: v for k, v in best.items() if "aux_classifier." not in k or k in expected}


def convert(state: dict[str, torch.Tensor], arch: str, path: Path | str = "?") -> nn.Module:
    """Our ``arch`` model with ``state`` loaded strictly; mismatches are reported by name."""
    from .registry import MODELS, build_model

    if arch not in MODELS:
        raise CheckpointError(path, f"unknown --arch '{arch}' (known: {', '.join(MODELS)})")
    model = build_model(arch, NUM_CLASSES, pretrained=False)
    expected = model.state_dict()
    mapped = map_keys(state, set(expected))
    problems = state_mismatches(expected, mapped)
    if problems:
        shapes = [(mapped[k].shape, v.shape) for k, v in expected.items() if k in mapped and mapped[k].shape != v.shape]
        heads = [a[0] for a, b in shapes if len(a) and len(b) and a[0] != b[0] and b[0] == NUM_CLASSES]
        if heads:
            problems.append(f"the source predicts {heads[0]} classes, desertseg's class table has {NUM_CLASSES}")
        raise CheckpointError(path, f"weights do not fit --arch {arch}: " + "; ".join(problems))
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in mapped.items()}, strict=True)
    return model.eval()


def parse_normalisation(text: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``none``, ``imagenet`` or ``MEAN:STD`` (three comma-separated numbers each, e.g.
    ``0.5,0.5,0.5:0.25,0.25,0.25``) -> ``(mean, std)`` for [0, 1] RGB input."""
    if text.strip().lower() in NORMALISATIONS:
        return NORMALISATIONS[text.strip().lower()]
    try:
        mean, std = (tuple(float(v) for v in part.split(",")) for part in text.split(":"))
    except ValueError:
        mean = std = ()
    if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
        raise ValueError(f"normalisation must be none, imagenet or MEAN:STD with three comma-separated numbers each and std > 0 (e.g. 0.5,0.5,0.5:0.25,0.25,0.25); got {text!r}")
    return mean, std


def import_model(src: Path | str, arch: str, out: Path | str, input_size: tuple[int, int] = (256, 256), trust_pickle: bool = False, normalisation: str = "imagenet") -> Path:
    """Convert ``src`` into a desertseg ``.safetensors`` file at ``out``; ``input_size`` is (H, W),
    ``normalisation`` the input scaling the weights were trained with (see :func:`parse_normalisation`)."""
    mean, std = parse_normalisation(normalisation)
    src = Path(src)
    obj = load_source(src, trust_pickle=trust_pickle)
    model = convert(extract_state_dict(obj, src), arch, src)
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    meta = make_metadata(arch, input_size, config={"model": arch, "imported": True}, mean=mean, std=std, imported_from={"file": src.name, "sha256": digest, "pickle_trusted": bool(trust_pickle)})
    return save_model(out, model, meta)
