"""The Lightning pieces of training: the module (model + loss + optimiser + one confusion
matrix per validation pass, summed over processes), deterministic data order and augmentation,
RNG state in checkpoints, atomic checkpoint writes and a CSV logger that survives --resume.

:mod:`desertseg.train` puts them together; nothing here is needed to run a trained model.
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .classes import CLASS_NAMES, NUM_CLASSES
from .config import TrainConfig
from .losses import SegmentationLoss
from .metrics import confusion_metric, summarize
from .models import encoder_parameters


class TrainingDiverged(FloatingPointError, RuntimeError):
    """The loss became NaN or infinite; the message names the epoch, the step and the checkpoint kept."""


# --- data order, seeding and worker count -------------------------------------------------


def resolve_workers(setting: int | str, procs_per_node: int = 1) -> int:
    """DataLoader workers per training process: an int, or ``"auto"`` = the usable CPUs
    shared among the node's processes, one left for the training loop, between 1 and 8."""
    if setting == "auto":
        try:
            cpus = len(os.sched_getaffinity(0))
        except AttributeError:  # macOS, Windows
            cpus = os.cpu_count() or 1
        return max(1, min(8, cpus // max(1, procs_per_node) - 1))
    if isinstance(setting, bool) or not isinstance(setting, int) or setting < 0:
        raise ValueError(f"num_workers must be a count >= 0 or 'auto', got {setting!r}")
    return setting


class EpochShardSampler(torch.utils.data.Sampler):
    """Shuffles training samples with ``(seed, epoch)`` and gives each process its shard.

    It reads the epoch from ``epoch_fn`` when iteration starts (Lightning creates the iterator
    of a resumed epoch before it calls ``set_epoch``) and yields ``epoch * n + index`` so that
    :class:`SeededAugment` can seed each sample's augmentation. Every process gets
    ``ceil(n / world_size)`` samples (the permutation wraps around), as DDP needs equal step counts.
    """

    def __init__(self, n: int, seed: int, rank: int, world_size: int, epoch_fn: Callable[[], int]):
        self.n, self.seed, self.rank, self.world_size, self.epoch_fn = n, seed, rank, world_size, epoch_fn

    def __len__(self) -> int:
        return math.ceil(self.n / self.world_size)

    def __iter__(self):
        epoch = int(self.epoch_fn())
        g = torch.Generator()
        g.manual_seed(self.seed * 100_003 + epoch)
        order = torch.randperm(self.n, generator=g).tolist()
        total = len(self) * self.world_size
        order = (order * math.ceil(total / self.n))[:total]
        return iter([epoch * self.n + i for i in order[self.rank :: self.world_size]])


class SeededAugment(torch.utils.data.Dataset):
    """Wraps a dataset so that item ``epoch * n + i`` is sample ``i`` augmented with a torch RNG
    seeded from ``(seed, epoch, i)``: augmentation then does not depend on worker count,
    process count, batch order or on a run having been resumed (desertseg's transforms draw
    only from torch's RNG)."""

    def __init__(self, dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int):
        epoch, i = divmod(int(key), len(self.dataset))
        sample_seed = int(np.random.SeedSequence([self.seed, epoch, i]).generate_state(1, np.uint64)[0] >> 1)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed)
            return self.dataset[i]


def rng_state() -> dict:
    """This process's torch, numpy, python (and CUDA) RNG states, in a form ``torch.load(weights_only=True)`` reads."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


# --- Lightning parts (built lazily: `import desertseg.train` does not import Lightning) ----


def lightning_module():
    import lightning as L
    from torchmetrics import MeanMetric

    from .models import build_model

    class SegmentationModule(L.LightningModule):
        """Model + loss + optimiser; validation accumulates one confusion matrix.

        Shape: ``batch`` = (image ``(N, 3, H, W)`` float, target ``(N, H, W)`` long).
        """

        def __init__(self, config: dict, weights: list[float] | None = None):
            super().__init__()
            self.save_hyperparameters()
            self.cfg = TrainConfig(**config)
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
                raise TrainingDiverged(
                    f"training loss became {loss.item()} at epoch {self.current_epoch}, step {batch_idx} "
                    f"(optimizer step {self.global_step})"
                )
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
                from .checkpoint import atomic_write

                doc = {"epoch": self.current_epoch, "world_size": self.trainer.world_size, "confusion_matrix": cm.cpu().tolist()}
                path = Path(self.trainer.default_root_dir) / "val_confusion.json"
                atomic_write(path, lambda tmp: tmp.write_text(json.dumps(doc)))

        def configure_optimizers(self):
            c = self.cfg
            # A pretrained encoder fine-tuned at full speed on a few environments forgets
            # features that transfer; a smaller encoder rate (or 0: frozen) keeps them.
            enc = encoder_parameters(self.model)
            enc_ids = {id(p) for p in enc}
            rest = [p for p in self.model.parameters() if id(p) not in enc_ids]
            if c.encoder_lr_mult == 0:
                for p in enc:
                    p.requires_grad_(False)
                params = [{"params": rest}]
            else:
                params = [{"params": rest}, {"params": enc, "lr": c.lr * c.encoder_lr_mult}]
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


def data_module(train_ds, val_ds, config: TrainConfig, workers: int):
    """Loaders are built inside ``fit``, once the process's rank and world size are known."""
    import lightning as L

    class SegmentationData(L.LightningDataModule):
        def _args(self) -> dict:
            cuda = self.trainer.strategy.root_device.type == "cuda"
            return dict(num_workers=workers, persistent_workers=workers > 0, pin_memory=cuda)

        def train_dataloader(self):
            t = self.trainer
            sampler = EpochShardSampler(len(train_ds), config.seed, t.global_rank, t.world_size, lambda: t.current_epoch)
            drop_last = len(sampler) > config.batch_size
            return torch.utils.data.DataLoader(SeededAugment(train_ds, config.seed), batch_size=config.batch_size, sampler=sampler, drop_last=drop_last, **self._args())

        def val_dataloader(self):
            if val_ds is None:  # training without validation (val_split = "none")
                return []
            # Every image exactly once over all processes (a padded DistributedSampler would
            # count some twice in the summed confusion matrix); shards may differ by one image.
            t = self.trainer
            if len(val_ds) < t.world_size:
                raise ValueError(f"the validation split has {len(val_ds)} images, fewer than the {t.world_size} training processes")
            shard = list(range(t.global_rank, len(val_ds), t.world_size))
            return torch.utils.data.DataLoader(val_ds, batch_size=config.batch_size, sampler=shard, **self._args())

    return SegmentationData()


def resume_callback():
    import lightning as L

    class ResumeState(L.Callback):
        """Stores every process's torch, numpy, python (and CUDA) RNG states in each checkpoint
        and restores this process's on resume, before the first resumed batch is drawn."""

        def on_save_checkpoint(self, trainer, pl_module, checkpoint):
            states = [rng_state()]
            if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
                states = [None] * trainer.world_size
                torch.distributed.all_gather_object(states, rng_state())
            checkpoint["rng_states"] = states

        def on_load_checkpoint(self, trainer, pl_module, checkpoint):
            states = checkpoint.get("rng_states")
            if not states:
                warnings.warn("checkpoint holds no RNG states; random streams will differ from an uninterrupted run", stacklevel=2)
                return
            rank = trainer.global_rank
            if len(states) != trainer.world_size:
                warnings.warn(f"checkpoint was written by {len(states)} processes, now {trainer.world_size}; restoring rank 0's RNG state everywhere", stacklevel=2)
                rank = 0
            set_rng_state(states[rank])

    return ResumeState()


def atomic_checkpoint_io():
    """A Lightning CheckpointIO that writes to a temporary file in the same folder, fsyncs and
    renames it over the target: a kill or a full disk mid-write leaves the previous checkpoint intact."""
    from lightning.pytorch.plugins.io import TorchCheckpointIO

    from .checkpoint import atomic_write

    class AtomicCheckpointIO(TorchCheckpointIO):
        def save_checkpoint(self, checkpoint, path, storage_options=None):
            if storage_options is not None:
                raise TypeError("AtomicCheckpointIO takes no storage_options")

            def write(tmp: Path):
                with open(tmp, "wb") as f:
                    torch.save(checkpoint, f)
                    f.flush()
                    os.fsync(f.fileno())

            atomic_write(Path(path), write)

    return AtomicCheckpointIO()


def csv_logger(out: Path):
    """Lightning's CSVLogger, but flushed every step (a kill loses nothing already logged) and
    appending to an existing metrics.csv instead of deleting it (so --resume keeps history)."""
    from lightning.fabric.loggers.logger import rank_zero_experiment
    from lightning.pytorch.loggers import CSVLogger
    from lightning.pytorch.loggers.csv_logs import ExperimentWriter

    class KeepingWriter(ExperimentWriter):
        def _check_log_dir_exists(self) -> None:
            if os.path.isfile(self.metrics_file_path):
                with open(self.metrics_file_path, newline="") as f:
                    self.metrics_keys = sorted(next(csv.reader(f), []))

    class KeepingCSVLogger(CSVLogger):
        @property
        @rank_zero_experiment
        def experiment(self):
            if self._experiment is None:
                os.makedirs(self.root_dir, exist_ok=True)
                self._experiment = KeepingWriter(log_dir=self.log_dir)
            return self._experiment

    return KeepingCSVLogger(out, name="", version="", flush_logs_every_n_steps=1)


# --- the run -------------------------------------------------------------------------------
