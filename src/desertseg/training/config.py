"""Training configuration: every hyperparameter of a run in one dataclass, filled from a
readable preset file (``presets/*.toml``) and overridden from the command line."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

import tomllib

from ..data.decoding import parse_size

PRESETS_DIR = Path(__file__).parents[1] / "presets"
# The default preset's [augment] table (see transforms.TrainTransform for each key).
DEFAULT_AUGMENT = {"hflip": 0.5, "scale": [0.8, 1.5], "brightness": 0.3, "contrast": 0.3, "saturation": 0.3, "hue": 0.05, "gamma": [0.7, 1.4], "white_balance": 0.1, "grayscale": 0.1, "haze": 0.3}


@dataclass
class TrainConfig:
    """Every hyperparameter of a run; presets set them, the command line overrides them.

    The defaults are the default preset (``presets/default.toml``; a test keeps them equal),
    so code that builds a config directly trains the same recipe as ``--preset default``.
    """

    model: str = "fpn_mobilenet_v2"
    pretrained: bool | str = "auto"
    # A desertseg model file to start from instead of ImageNet weights ("default": the bundled
    # model), e.g. to fine-tune it on labelled frames of your own desert; same model name.
    init: str | None = None
    size: str = "480x270"  # WIDTHxHEIGHT
    epochs: int = 30
    batch_size: int = 8  # per process
    optimizer: str = "adamw"  # adam | adamw | sgd
    lr: float = 1e-3
    weight_decay: float = 1e-4
    scheduler: str = "cosine"  # step | cosine | none
    step_size: int = 20
    gamma: float = 0.1
    warmup_epochs: int = 1
    loss: str = "ce+dice"
    class_weighting: str = "inverse_sqrt"  # none | inverse_sqrt | inverse
    label_smoothing: float = 0.0
    encoder_lr_mult: float = 0.1  # encoder learning rate = lr * this; 0 freezes the encoder
    augment: dict = field(default_factory=lambda: dict(DEFAULT_AUGMENT))
    cache: bool = True  # keep decoded, resized samples in memory (per loader process)
    cache_dir: str | None = None  # on-disk cache of decoded, resized samples (desertseg.data.cache)
    num_workers: int | str = "auto"  # DataLoader workers per process; "auto" from the CPU count
    precision: str = "32-true"
    accumulate: int = 1
    max_time: float | None = None  # minutes, for the whole run (a resumed run keeps counting)
    seed: int = 0
    max_bad_share: float = 0.05  # damaged files met in training are skipped; past this share of a split the run stops
    train_split: str = "train"
    val_split: str = "val"

    @property
    def input_size(self) -> tuple[int, int]:
        return parse_size(self.size)


def list_presets() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.toml"))


def load_config(preset: str | Path = "default", overrides: dict | None = None) -> TrainConfig:
    """A preset name (``seed``, ``default``) or a TOML file, then ``overrides`` on top."""
    path = Path(preset)
    if not path.suffix:
        path = PRESETS_DIR / f"{preset}.toml"
        if not path.is_file():
            raise ValueError(f"unknown preset '{preset}'; built-in presets: {', '.join(list_presets())}, or pass a .toml file")
    if not path.is_file():
        raise ValueError(f"preset file not found: {path}")
    with open(path, "rb") as f:
        values = tomllib.load(f)
    for key, value in (overrides or {}).items():
        # Tables merge (augment.hflip=0 changes one key); everything else replaces.
        merge = isinstance(value, dict) and value and isinstance(values.get(key), dict)
        values[key] = {**values[key], **value} if merge else value  # augment={} clears the table
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"{path}: unknown keys {unknown}; known keys: {', '.join(sorted(known))}")
    cfg = TrainConfig(**values)
    parse_size(cfg.size)  # validate the size early
    return cfg


def parse_override(text: str) -> tuple[str, object]:
    """``key=value`` with the value read as TOML (numbers, booleans, lists, strings)."""
    if "=" not in text:
        raise ValueError(f"override must look like key=value, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # bare strings
    if "." in key:  # augment.hflip=0.5
        top, sub = key.split(".", 1)
        return top, {sub: value}
    return key, value


def merge_overrides(items: list[str], base: dict | None = None, **options) -> dict:
    """Overrides from ``key=value`` texts (``--set``) on top of ``base``, then every option
    that is not None (``--epochs 3``) on top of those. Tables merge key by key, so
    ``--set augment.hflip=0 --set augment.haze=0.5`` changes two augmentation keys."""
    overrides: dict = dict(base or {})
    for text in items:
        key, value = parse_override(text)
        if isinstance(value, dict) and isinstance(overrides.get(key), dict):
            value = {**overrides[key], **value}
        overrides[key] = value
    overrides.update({k: v for k, v in options.items() if v is not None})
    return overrides
