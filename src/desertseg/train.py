"""Training on Lightning: the recipe comes from a preset file, the engine from Lightning
(devices, DDP, mixed precision, checkpointing and resume), the metrics from one dataset-level
confusion matrix per validation pass.

A run folder holds::

    config.json            the resolved config
    metrics.csv            per-epoch metrics (Lightning CSVLogger)
    checkpoints/best.ckpt  best by val mIoU, and last.ckpt (for --resume)
    best.safetensors       release model files (weights + metadata)
    last.safetensors
    curves.png             loss and mIoU curves
"""

from __future__ import annotations

import json
import math
import shutil
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from .classes import CLASS_NAMES, NUM_CLASSES
from .data import SegmentationDataset, find_samples, parse_size
from .losses import SegmentationLoss, class_weights
from .metrics import confusion_metric, summarize

PRESETS_DIR = Path(__file__).parent / "presets"


@dataclass
class TrainConfig:
    """Every hyperparameter of a run; presets set them, the command line overrides them."""

    model: str = "unet_mobilenet_v2"
    pretrained: bool | str = "auto"
    size: str = "480x272"  # WIDTHxHEIGHT
    epochs: int = 40
    batch_size: int = 8
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
    augment: dict = field(default_factory=dict)
    cache: bool = True  # keep decoded, resized samples in memory
    num_workers: int = 0
    precision: str = "32-true"
    accumulate: int = 1
    max_time: float | None = None  # minutes
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
    cfg.input_size  # validate the size early
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


def _lightning_module():
    import lightning as L

    from .models import build_model

    class SegmentationModule(L.LightningModule):
        """Model + loss + optimiser; validation accumulates one confusion matrix."""

        def __init__(self, config: dict, weights: list[float] | None = None):
            super().__init__()
            self.save_hyperparameters()
            self.cfg = TrainConfig(**config)
            self.model = build_model(self.cfg.model, NUM_CLASSES, pretrained=self.cfg.pretrained)
            w = torch.tensor(weights) if weights is not None else None
            self.criterion = SegmentationLoss(self.cfg.loss, class_weights=w, label_smoothing=self.cfg.label_smoothing)
            self.val_cm = confusion_metric()

        def forward(self, x):
            return self.model(x)

        def training_step(self, batch, batch_idx):
            image, target = batch
            loss = self.criterion(self.model(image), target)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"training loss became {loss.item()} at epoch {self.current_epoch}, step {batch_idx}; "
                    "stopping. The last good checkpoint is kept in the run folder (lower the learning rate or use precision 32-true)."
                )
            self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=image.shape[0])
            return loss

        def validation_step(self, batch, batch_idx):
            image, target = batch
            logits = self.model(image)
            self.log("val_loss", self.criterion(logits, target), on_epoch=True, sync_dist=True, batch_size=image.shape[0])
            self.val_cm.update(logits.argmax(1), target)

        def on_validation_epoch_end(self):
            m = summarize(self.val_cm.compute())  # already reduced across processes
            self.val_cm.reset()
            self.log("val_miou", m["miou_all"], prog_bar=True, sync_dist=False)
            self.log("val_miou_present", m["miou_present"])
            self.log("val_pixel_accuracy", m["pixel_accuracy"])
            for name, c in zip(CLASS_NAMES, m["per_class"]):
                self.log(f"val_iou/{name}", c["iou"] if c["iou"] is not None else float("nan"))

        def configure_optimizers(self):
            c = self.cfg
            params = self.model.parameters()
            if c.optimizer == "adam":
                opt = torch.optim.Adam(params, lr=c.lr, weight_decay=c.weight_decay)
            elif c.optimizer == "adamw":
                opt = torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay)
            elif c.optimizer == "sgd":
                opt = torch.optim.SGD(params, lr=c.lr, momentum=0.9, weight_decay=c.weight_decay)
            else:
                raise ValueError(f"unknown optimizer '{c.optimizer}' (adam, adamw, sgd)")
            if c.scheduler == "none":
                return opt
            if c.scheduler == "step":
                sched = torch.optim.lr_scheduler.StepLR(opt, step_size=c.step_size, gamma=c.gamma)
                return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
            if c.scheduler == "cosine":
                total = max(1, self.trainer.estimated_stepping_batches)
                warm = int(total * c.warmup_epochs / max(c.epochs, 1))

                def factor(step):
                    if step < warm:
                        return (step + 1) / warm
                    return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

                sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
                return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
            raise ValueError(f"unknown scheduler '{c.scheduler}' (step, cosine, none)")

    return SegmentationModule


def pixel_counts(dataset: SegmentationDataset) -> np.ndarray:
    counts = np.zeros(NUM_CLASSES, dtype=np.int64)
    for i in range(len(dataset)):
        _, target = dataset.load(i)
        counts += np.bincount(target[target < NUM_CLASSES].ravel(), minlength=NUM_CLASSES)
    return counts


def check_run_dir(out: Path, resume: bool) -> None:
    """Fail before training if the run folder is unusable (exists, unwritable, disk full)."""
    if out.exists() and not resume and any(out.iterdir()):
        raise FileExistsError(f"{out}: run folder exists and is not empty; pass --resume {out} to continue it, or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    probe = out / ".write_test"
    try:
        probe.write_bytes(b"x" * 1024)
        probe.unlink()
    except OSError as e:
        raise OSError(f"{out}: run folder is not writable ({e})") from None
    free = shutil.disk_usage(out).free
    if free < 200 * 2**20:
        raise OSError(f"{out}: only {free // 2**20} MiB free on disk; checkpoints need at least 200 MiB")


def train(
    config: TrainConfig,
    data: Path,
    out: Path,
    devices: str | int = "auto",
    num_nodes: int = 1,
    strategy: str = "auto",
    accelerator: str = "auto",
    resume: bool = False,
    limit_train_batches: int | float | None = None,
    progress: bool = True,
) -> dict:
    """Train ``config`` on ``data`` into run folder ``out``; returns the best metrics."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    from .checkpoint import make_metadata, save_model
    from .transforms import TrainTransform, eval_transform

    out = Path(out)
    check_run_dir(out, resume)
    if resume:
        saved = json.loads((out / "config.json").read_text())
        config = TrainConfig(**saved)
    L.seed_everything(config.seed, workers=True, verbose=False)

    size = config.input_size
    train_samples, problems = find_samples(data, config.train_split)
    val_samples, vproblems = find_samples(data, config.val_split)
    for p in problems + vproblems:
        print(f"warning: {p}")
    train_ds = SegmentationDataset(train_samples, size, TrainTransform(config.augment), cache=config.cache)
    val_ds = SegmentationDataset(val_samples, size, eval_transform, cache=config.cache)
    weights = None
    if config.class_weighting != "none":
        weights = class_weights(pixel_counts(train_ds), config.class_weighting).tolist()

    if not resume:
        (out / "config.json").write_text(json.dumps(asdict(config), indent=2))
    loader_args = dict(num_workers=config.num_workers, persistent_workers=config.num_workers > 0, pin_memory=torch.cuda.is_available())
    train_dl = torch.utils.data.DataLoader(train_ds, batch_size=config.batch_size, shuffle=True, drop_last=len(train_ds) > config.batch_size, **loader_args)
    val_dl = torch.utils.data.DataLoader(val_ds, batch_size=config.batch_size, **loader_args)

    module = _lightning_module()(asdict(config), weights)
    ckpt_cb = ModelCheckpoint(dirpath=out / "checkpoints", filename="best", monitor="val_miou", mode="max", save_last=True)
    trainer = L.Trainer(
        max_epochs=config.epochs,
        max_time={"minutes": config.max_time} if config.max_time else None,
        accelerator=accelerator,
        devices=devices,
        num_nodes=num_nodes,
        strategy=strategy,
        precision=config.precision,
        accumulate_grad_batches=config.accumulate,
        callbacks=[ckpt_cb],
        logger=CSVLogger(out, name="", version=""),
        log_every_n_steps=1,
        enable_progress_bar=progress,
        enable_model_summary=False,
        limit_train_batches=limit_train_batches,
        deterministic=False,
    )
    last = out / "checkpoints" / "last.ckpt"
    trainer.fit(module, train_dl, val_dl, ckpt_path=str(last) if resume and last.exists() else None)
    if not trainer.is_global_zero:
        return {}

    result = {}
    best_score = float(ckpt_cb.best_model_score) if ckpt_cb.best_model_score is not None else None
    for tag, path in (("best", ckpt_cb.best_model_path), ("last", str(last))):
        if not path or not Path(path).exists():
            continue
        # Our own Lightning checkpoint; still loaded without unpickling arbitrary objects.
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
        module.model.load_state_dict(state)
        metrics = {"epoch": ckpt["epoch"]}
        if tag == "best":
            metrics["val_miou_at_input_size"] = best_score
        save_model(out / f"{tag}.safetensors", module.model, make_metadata(config.model, size, asdict(config), metrics))
        result[tag] = metrics
    plot_curves(out / "metrics.csv", out / "curves.png")
    return result


def read_metrics_csv(path: Path) -> list[dict]:
    """Per-epoch rows of Lightning's metrics.csv, merging the train and val lines of an epoch."""
    import csv

    rows: dict[int, dict] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            epoch = int(float(row["epoch"]))
            merged = rows.setdefault(epoch, {"epoch": epoch})
            merged.update({k: float(v) for k, v in row.items() if v not in ("", None) and k not in ("epoch", "step")})
    return [rows[k] for k in sorted(rows)]


def plot_curves(metrics_csv: Path, out_png: Path) -> Path | None:
    """Loss and mIoU per epoch as a PNG."""
    if not Path(metrics_csv).exists():
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_metrics_csv(Path(metrics_csv))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for key, ax in (("train_loss", ax1), ("val_loss", ax1), ("val_miou", ax2), ("val_miou_present", ax2)):
        pts = [(r["epoch"], r[key]) for r in rows if key in r]
        if pts:
            ax.plot(*zip(*pts), marker=".", label=key)
    ax1.set(xlabel="epoch", ylabel="loss", title="Loss")
    ax2.set(xlabel="epoch", ylabel="mIoU", title="Validation mIoU (at input size)", ylim=(0, 1))
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return Path(out_png)

