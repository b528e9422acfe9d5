"""Training configuration: every hyperparameter of a run in one dataclass, filled from a
readable preset file (``presets/*.toml``) and overridden from the command line."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

import tomllib

from .data import parse_size

PRESETS_DIR = Path(__file__).parent / "presets"


@dataclass
class TrainConfig:
    """Every hyperparameter of a run; presets set them, the command line overrides them."""

    model: str = "unet_mobilenet_v2"
    pretrained: bool | str = "auto"
    size: str = "480x272"  # WIDTHxHEIGHT
    epochs: int = 40
    batch_size: int = 8  # per process
    optimizer: str = "adam"  # adam | adamw | sgd
    lr: float = 2e-4
    weight_decay: float = 0.0
    scheduler: str = "step"  # step | cosine | none
    step_size: int = 20
    gamma: float = 0.1
    warmup_epochs: int = 0
    loss: str = "ce"
    class_weighting: str = "none"  # none | inverse_sqrt | inverse
    label_smoothing: float = 0.0
    encoder_lr_mult: float = 1.0  # encoder learning rate = lr * this; 0 freezes the encoder
    ema_decay: float = 0.0  # exponential moving average of the weights, saved as the model; 0 = off
    repeat_threshold: float = 0.0  # repeat-factor sampling of images holding rare classes; 0 = off
    augment: dict = field(default_factory=dict)
    cache: bool = True  # keep decoded, resized samples in memory (per loader process)
    cache_dir: str | None = None  # on-disk cache of decoded, resized samples (desertseg.cache)
    num_workers: int | str = "auto"  # DataLoader workers per process; "auto" from the CPU count
    precision: str = "32-true"
    accumulate: int = 1
    max_time: float | None = None  # minutes, for the whole run (a resumed run keeps counting)
    seed: int = 0
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
