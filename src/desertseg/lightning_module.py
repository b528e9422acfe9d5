"""The LightningModule and LightningDataModule of training, and the optimiser and scheduler
registries a preset names (``optimizer = "adamw"``, ``scheduler = "cosine"``).

Imported by :mod:`desertseg.train` only; running a trained model never needs Lightning.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable

import lightning as L
import torch
from torchmetrics import MeanMetric

from .classes import CLASS_NAMES, NUM_CLASSES
from .config import TrainConfig
from .engine import EpochShardSampler, SeededAugment, TrainingDiverged
from .io import atomic_write
from .losses import SegmentationLoss
from .metrics import confusion_metric, summarize
from .models import build_model, encoder_parameters

# name -> (parameter groups, config) -> optimiser
OPTIMIZERS: dict[str, Callable[[list, TrainConfig], torch.optim.Optimizer]] = {
    "adam": lambda params, c: torch.optim.Adam(params, lr=c.lr, weight_decay=c.weight_decay),
    "adamw": lambda params, c: torch.optim.AdamW(params, lr=c.lr, weight_decay=c.weight_decay),
    "sgd": lambda params, c: torch.optim.SGD(params, lr=c.lr, momentum=0.9, weight_decay=c.weight_decay),
}


def _step(opt: torch.optim.Optimizer, c: TrainConfig, total_steps: int) -> dict:
    return {"scheduler": torch.optim.lr_scheduler.StepLR(opt, step_size=c.step_size, gamma=c.gamma), "interval": "epoch"}


def cosine_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def _cosine(opt: torch.optim.Optimizer, c: TrainConfig, total_steps: int) -> dict:
    total = max(1, total_steps)
    warmup = int(total * c.warmup_epochs / max(c.epochs, 1))
    return {"scheduler": torch.optim.lr_scheduler.LambdaLR(opt, lambda step: cosine_factor(step, warmup, total)), "interval": "step"}


# name -> (optimiser, config, optimiser steps of the run) -> Lightning scheduler dict; "none": constant
SCHEDULERS: dict[str, Callable[[torch.optim.Optimizer, TrainConfig, int], dict]] = {"step": _step, "cosine": _cosine}


def parameter_groups(model: torch.nn.Module, encoder_lr_mult: float, lr: float) -> list[dict]:
    """The decoder at ``lr``, the pretrained encoder at ``lr * encoder_lr_mult`` (0: frozen).

    A pretrained encoder fine-tuned at full speed on a few environments forgets features that
    transfer; a smaller encoder rate keeps them.
    """
    enc = encoder_parameters(model)
    enc_ids = {id(p) for p in enc}
    rest = [p for p in model.parameters() if id(p) not in enc_ids]
    if encoder_lr_mult == 0:
        for p in enc:
            p.requires_grad_(False)
        return [{"params": rest}]
    return [{"params": rest}, {"params": enc, "lr": lr * encoder_lr_mult}]


class SegmentationModule(L.LightningModule):
    """Model + loss + optimiser; validation accumulates one confusion matrix.

    Shape: ``batch`` = (image ``(N, 3, H, W)`` float, target ``(N, H, W)`` long).
    """

    def __init__(self, config: dict, weights: list[float] | None = None):
        super().__init__()
        self.save_hyperparameters()
        self.cfg = TrainConfig(**config)
        for key, registry in (("optimizer", OPTIMIZERS), ("scheduler", {**SCHEDULERS, "none": None})):
            if getattr(self.cfg, key) not in registry:
                raise ValueError(f"unknown {key} '{getattr(self.cfg, key)}' ({', '.join(registry)})")
        self.model = build_model(self.cfg.model, NUM_CLASSES, pretrained=self.cfg.pretrained)
        w = torch.tensor(weights) if weights is not None else None
        self.criterion = SegmentationLoss(self.cfg.loss, class_weights=w, label_smoothing=self.cfg.label_smoothing)
        # Both are torchmetrics states summed over processes by compute() (dist_reduce_fx="sum"),
        # so under DDP the metrics are those of the whole validation set, not a mean of per-rank numbers.
        self.val_cm = confusion_metric()
        self.val_loss = MeanMetric()

    def forward(self, x):
        return self.model(x)

    def training_step(self, batch, batch_idx):
        image, target = batch
        loss = self.criterion(self.model(image), target)
        if not torch.isfinite(loss):
            raise TrainingDiverged(f"training loss became {loss.item()} at epoch {self.current_epoch}, step {batch_idx} (optimizer step {self.global_step})")
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True, batch_size=image.shape[0])
        return loss

    def on_validation_epoch_start(self):
        # Each DDP rank updates BatchNorm running statistics with its own batches, so they
        # drift apart within an epoch; validate every shard with rank 0's, which are the
        # ones the checkpoint stores.
        if self.trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            for buf in self.model.buffers():
                torch.distributed.broadcast(buf, src=0)

    def validation_step(self, batch, batch_idx):
        image, target = batch
        logits = self.model(image)
        self.val_loss.update(self.criterion(logits, target), weight=image.shape[0])
        self.val_cm.update(logits.argmax(1), target)

    def on_validation_epoch_end(self):
        cm = self.val_cm.compute()  # summed across processes
        val_loss = self.val_loss.compute()
        self.val_cm.reset()
        self.val_loss.reset()
        m = summarize(cm)
        # Identical on every rank (computed from the reduced matrix): no further sync needed.
        self.log("val_loss", val_loss)
        self.log("val_miou", m["miou_all"], prog_bar=True)
        self.log("val_miou_present", m["miou_present"])
        self.log("val_pixel_accuracy", m["pixel_accuracy"])
        for name, c in zip(CLASS_NAMES, m["per_class"]):
            self.log(f"val_iou/{name}", c["iou"] if c["iou"] is not None else float("nan"))
        if self.trainer.is_global_zero and not self.trainer.sanity_checking:
            doc = {"epoch": self.current_epoch, "world_size": self.trainer.world_size, "confusion_matrix": cm.cpu().tolist()}
            atomic_write(Path(self.trainer.default_root_dir) / "val_confusion.json", lambda tmp: tmp.write_text(json.dumps(doc)))

    def configure_optimizers(self):
        c = self.cfg
        opt = OPTIMIZERS[c.optimizer](parameter_groups(self.model, c.encoder_lr_mult, c.lr), c)
        if c.scheduler == "none":
            return opt
        return {"optimizer": opt, "lr_scheduler": SCHEDULERS[c.scheduler](opt, c, self.trainer.estimated_stepping_batches)}


class SegmentationData(L.LightningDataModule):
    """Loaders are built inside ``fit``, once the process's rank and world size are known;
    ``repeat``: per-sample repeat factors of the training set (None: each sample once)."""

    def __init__(self, train_ds, val_ds, config: TrainConfig, workers: int, repeat: torch.Tensor | None = None):
        super().__init__()
        self.train_ds, self.val_ds, self.config, self.workers, self.repeat = train_ds, val_ds, config, workers, repeat

    def _args(self) -> dict:
        cuda = self.trainer.strategy.root_device.type == "cuda"
        return dict(num_workers=self.workers, persistent_workers=self.workers > 0, pin_memory=cuda)

    def train_dataloader(self):
        t, c = self.trainer, self.config
        sampler = EpochShardSampler(len(self.train_ds), c.seed, t.global_rank, t.world_size, lambda: t.current_epoch, self.repeat)
        drop_last = len(sampler) > c.batch_size
        return torch.utils.data.DataLoader(SeededAugment(self.train_ds, c.seed), batch_size=c.batch_size, sampler=sampler, drop_last=drop_last, **self._args())

    def val_dataloader(self):
        if self.val_ds is None:  # training without validation (val_split = "none")
            return []
        # Every image exactly once over all processes (a padded DistributedSampler would
        # count some twice in the summed confusion matrix); shards may differ by one image.
        t = self.trainer
        if len(self.val_ds) < t.world_size:
            raise ValueError(f"the validation split has {len(self.val_ds)} images, fewer than the {t.world_size} training processes")
        shard = list(range(t.global_rank, len(self.val_ds), t.world_size))
        return torch.utils.data.DataLoader(self.val_ds, batch_size=self.config.batch_size, sampler=shard, **self._args())
