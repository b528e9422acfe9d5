"""The LightningModule and LightningDataModule of training, and the optimiser and scheduler
registries a preset names (``optimizer = "adamw"``, ``scheduler = "cosine"``).

Imported by :mod:`desertseg.training.fit` only; running a trained model never needs Lightning.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable

import lightning as L
import torch
from torchmetrics import MeanMetric

from ..classes import CLASS_NAMES, NUM_CLASSES
from ..data.decoding import DamagedSample
from ..data.transforms import MEAN, STD
from ..errors import TooManyDamagedFiles
from ..io import atomic_write
from ..metrics import confusion_metric, summarize
from ..models.checkpoint import CheckpointError, default_model_path, input_normalisation, load_model
from ..models.registry import build_model, encoder_parameters
from .config import TrainConfig
from .engine import EpochShardSampler, SeededAugment, SkipDamaged, TrainingDiverged
from .losses import SegmentationLoss

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


def initial_model(cfg: TrainConfig) -> torch.nn.Module:
    """The model training starts from: ``cfg.init``'s weights (a desertseg model file, or
    ``"default"`` for the bundled one) when set, else ``cfg.model`` with ImageNet weights.

    A file of another architecture or trained on other input normalisation is refused with its
    name: training feeds ImageNet-normalised input, so such weights would start out wrong.
    """
    if not cfg.init:
        return build_model(cfg.model, NUM_CLASSES, pretrained=cfg.pretrained)
    path = default_model_path() if cfg.init == "default" else Path(cfg.init)
    model, meta = load_model(path)
    if meta["model"] != cfg.model:
        raise CheckpointError(path, f"init holds a '{meta['model']}' model but the run trains '{cfg.model}'; pass --model {meta['model']}")
    mean, std = input_normalisation(meta, path)
    if not (torch.allclose(torch.tensor(mean), torch.tensor(MEAN)) and torch.allclose(torch.tensor(std), torch.tensor(STD))):
        raise CheckpointError(path, f"init was trained on input normalised with mean {list(mean)}, std {list(std)}; training feeds ImageNet-normalised input, so it cannot continue from it")
    return model.float().train()


def collate_readable(items: list[tuple]) -> tuple:
    """Batches :class:`~desertseg.training.engine.SkipDamaged` items: ``(image, target, damaged)``, the
    readable samples stacked (None when there is none) and every :class:`DamagedSample` met."""
    readable = [(image, target) for image, target, _ in items if image is not None]
    damaged = tuple(d for *_, found in items for d in found)
    image, target = torch.utils.data.default_collate(readable) if readable else (None, None)
    return image, target, damaged


# The per-epoch count of damaged files of each split, as metrics.csv names it.
BAD_FILES = {"train": "bad_files", "val": "val_bad_files"}


def damaged_share_message(split: str, count: int, total: int, share: float, examples: dict[str, str]) -> str:
    """What a run stopped for too many damaged files says: how many, a few of them (``examples``:
    path -> problem, those this process met; other DDP processes' are in their warnings), and what to do."""
    named = sorted(examples.items())[:3]
    listed = "; ".join(f"{path} ({problem})" for path, problem in named) + (f" and {count - len(named)} more" if count > len(named) else "")
    return (
        f"{count} damaged file{'s' if count != 1 else ''} among the {total} {split} samples, more than max_bad_share = {share:g} of them: "
        f"{listed if named else 'see the warnings above'}. Repair or remove them (`desertseg check-data` lists every problem)"
    )


class SegmentationModule(L.LightningModule):
    """Model + loss + optimiser; validation accumulates one confusion matrix.

    Shape: ``batch`` = (image ``(N, 3, H, W)`` float, target ``(N, H, W)`` long, damaged
    :class:`DamagedSample` tuple), as :func:`collate_readable` makes it; image and target are
    None when no sample of the batch was readable.

    Damaged files are warned about once each, skipped, and counted per epoch (``bad_files``,
    ``val_bad_files`` in metrics.csv, summed over processes); when an epoch meets more than
    ``max_bad_share`` of a split damaged, the run stops after the epoch's checkpoint is written
    and ``fit`` raises :class:`TooManyDamagedFiles`.
    """

    def __init__(self, config: dict, class_weights: list[float] | None = None):
        super().__init__()
        self.save_hyperparameters()
        self.cfg = TrainConfig(**config)
        for key, registry in (("optimizer", OPTIMIZERS), ("scheduler", {**SCHEDULERS, "none": None})):
            if getattr(self.cfg, key) not in registry:
                raise ValueError(f"unknown {key} '{getattr(self.cfg, key)}' ({', '.join(registry)})")
        self.model = initial_model(self.cfg)
        w = torch.tensor(class_weights) if class_weights is not None else None
        self.criterion = SegmentationLoss(self.cfg.loss, class_weights=w, label_smoothing=self.cfg.label_smoothing)
        # Both are torchmetrics states summed over processes by compute() (dist_reduce_fx="sum"),
        # so under DDP the metrics are those of the whole validation set, not a mean of per-rank numbers.
        self.val_cm = confusion_metric()
        self.val_loss = MeanMetric()
        if not 0 <= self.cfg.max_bad_share <= 1:
            raise ValueError(f"max_bad_share must lie in 0..1, got {self.cfg.max_bad_share}")
        self._epoch_damaged: dict[str, dict[str, str]] = {"train": {}, "val": {}}  # split -> path -> problem, this process and epoch
        self._warned: set[str] = set()
        self._stop_reason: str | None = None

    def forward(self, x):
        return self.model(x)

    def training_step(self, batch, batch_idx):
        image, target, damaged = batch
        self._count_damaged("train", damaged)
        if image is None:
            return self._skipped_step()
        loss = self.criterion(self.model(image), target)
        if not torch.isfinite(loss):
            raise TrainingDiverged(f"training loss became {loss.item()} at epoch {self.current_epoch}, step {batch_idx} (optimizer step {self.global_step})")
        self.log("train_loss", loss, on_step=False, on_epoch=True, prog_bar=True, sync_dist=True, batch_size=image.shape[0])
        return loss

    def _skipped_step(self) -> torch.Tensor | None:
        """The step of a batch without one readable sample. One process skips it (None);
        Lightning refuses None under DDP, whose processes must all join the gradient all-reduce,
        so there every process steps on a zero loss that reaches every trainable parameter.
        Reached only when MAX_STAND_INS draws failed for every sample of the batch."""
        if self.trainer.world_size == 1:
            return None
        return sum(p.sum() for p in self.parameters() if p.requires_grad) * 0.0

    def _count_damaged(self, split: str, damaged: tuple[DamagedSample, ...]) -> None:
        """Warn once per file and process, and log how many files this step met that the epoch
        had not (every step logs, so that every process syncs the same metrics)."""
        seen = self._epoch_damaged[split]
        new = {d.path: d.problem for d in damaged if d.path not in seen}
        seen.update(new)
        for path, problem in new.items():
            if path not in self._warned:
                self._warned.add(path)
                print(f"warning: skipped damaged file {path}: {problem}", flush=True)
        # Summed over the epoch's steps and (sync_dist) over processes when the epoch ends.
        self.log(BAD_FILES[split], float(len(new)), on_step=False, on_epoch=True, reduce_fx="sum", sync_dist=True, batch_size=1)

    def _split_sizes(self) -> dict[str, int]:
        """Samples per split, from the loaders (their datasets are whole splits, not shards)."""
        loaders = {"train": self.trainer.train_dataloader, "val": self.trainer.val_dataloaders}
        return {split: len(dl.dataset) for split, dl in loaders.items() if isinstance(dl, torch.utils.data.DataLoader)}

    def on_train_epoch_start(self):
        self._epoch_damaged["train"] = {}

    def on_train_epoch_end(self):
        # callback_metrics holds the epoch's counts summed over processes; reading it computes
        # them in Lightning's own order, as rank 0's progress bar may already have done, so no
        # collective of our own is needed (one here would pair with the wrong one on rank 0).
        metrics, share = self.trainer.callback_metrics, self.cfg.max_bad_share
        for split, total in self._split_sizes().items():
            count = int(metrics.get(BAD_FILES[split], 0))
            if self._stop_reason is None and count > share * total:
                self._stop_reason = damaged_share_message(split, count, total, share, self._epoch_damaged[split])
        # Stopping here, not raising, lets the checkpoint callbacks (which run after this hook)
        # write this epoch's last.ckpt first; on_fit_end then raises.
        if self._stop_reason is not None:
            self.trainer.should_stop = True

    def on_fit_end(self):
        if self._stop_reason is not None:
            raise TooManyDamagedFiles(self._stop_reason)

    def on_validation_epoch_start(self):
        self._epoch_damaged["val"] = {}
        # Each DDP rank updates BatchNorm running statistics with its own batches, so they
        # drift apart within an epoch; validate every shard with rank 0's, which are the
        # ones the checkpoint stores.
        if self.trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            for buf in self.model.buffers():
                torch.distributed.broadcast(buf, src=0)

    def validation_step(self, batch, batch_idx):
        image, target, damaged = batch
        self._count_damaged("val", damaged)
        if image is None:
            return
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
    """Loaders are built inside ``fit``, once the process's rank and world size are known."""

    def __init__(self, train_ds, val_ds, config: TrainConfig, workers: int):
        super().__init__()
        self.train_ds, self.val_ds, self.config, self.workers = train_ds, val_ds, config, workers

    def _args(self) -> dict:
        cuda = self.trainer.strategy.root_device.type == "cuda"
        # Unreadable samples are skipped and reported (SkipDamaged, collate_readable), not fatal.
        return dict(num_workers=self.workers, persistent_workers=self.workers > 0, pin_memory=cuda, collate_fn=collate_readable)

    def train_dataloader(self):
        t, c = self.trainer, self.config
        sampler = EpochShardSampler(len(self.train_ds), c.seed, t.global_rank, t.world_size, lambda: t.current_epoch)
        drop_last = len(sampler) > c.batch_size
        return torch.utils.data.DataLoader(SeededAugment(SkipDamaged(self.train_ds, stand_in=True), c.seed), batch_size=c.batch_size, sampler=sampler, drop_last=drop_last, **self._args())

    def val_dataloader(self):
        if self.val_ds is None:  # training without validation (val_split = "none")
            return []
        # Every image exactly once over all processes (a padded DistributedSampler would
        # count some twice in the summed confusion matrix); shards may differ by one image.
        t = self.trainer
        if len(self.val_ds) < t.world_size:
            raise ValueError(f"the validation split has {len(self.val_ds)} images, fewer than the {t.world_size} training processes")
        shard = list(range(t.global_rank, len(self.val_ds), t.world_size))
        return torch.utils.data.DataLoader(SkipDamaged(self.val_ds, stand_in=False), batch_size=self.config.batch_size, sampler=shard, **self._args())
