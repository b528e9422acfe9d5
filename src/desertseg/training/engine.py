"""The machinery under training: deterministic data order and augmentation (whatever the
worker and process count, resumed or not), RNG state in checkpoints, atomic checkpoint writes,
a CSV logger that survives --resume, quiet Lightning output and plain epoch lines for logs.
The LightningModule itself is :mod:`desertseg.training.lightning_module`;
:mod:`desertseg.training.fit` puts them together; nothing here is needed to run a trained model.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import random
import sys
import time
import warnings
from pathlib import Path
from typing import Callable

import lightning as L
import numpy as np
import torch
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.plugins.io import TorchCheckpointIO

from ..data.decoding import DamagedSample, DataError
from ..io import atomic_write


class TrainingDiverged(FloatingPointError, RuntimeError):
    """The loss became NaN or infinite; the message names the epoch, the step and the checkpoint kept."""


# --- data order, seeding and worker count -------------------------------------------------


class _ThirdPartyNoise(logging.Filter):
    """Drops Lightning's advertisement, device banner and internal notes, so that what a user
    reads during training is desertseg's own output (``fit.train`` prints the device line;
    Lightning's warnings and its distributed-setup lines still pass)."""

    NOISE = ("💡 Tip", "Loading `train_dataloader` to estimate", "GPU available:", "TPU available:", "HPU available:", "`Trainer.fit` stopped: `max_epochs=")

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.NOISE)


def quiet_lightning() -> None:
    """Silence Lightning's tips and a deprecation warning of its own internals (idempotent)."""
    log = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    if not any(isinstance(f, _ThirdPartyNoise) for f in log.filters):
        log.addFilter(_ThirdPartyNoise())
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated.*")


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


# Stand-ins tried for an unreadable training sample before its place in the batch stays empty.
MAX_STAND_INS = 8


class SkipDamaged(torch.utils.data.Dataset):
    """Wraps a dataset so that a sample whose files cannot be read (:class:`DataError`) is
    reported instead of ending the run: item ``i`` is ``(image, target, damaged)``, where
    ``damaged`` holds a :class:`DamagedSample` for each unreadable sample passed over (usually none).

    With ``stand_in`` (training) a readable sample takes the damaged one's place, so batches keep
    their size: BatchNorm needs more than one sample per batch, and DDP processes must all run
    the same optimiser steps. The stand-in is drawn from an RNG seeded by ``(i, attempt)``, so it
    is the same whatever the worker or process count, and inside :class:`SeededAugment` it is
    augmented with the damaged sample's seed. After ``MAX_STAND_INS`` unreadable draws, or
    without ``stand_in`` (validation, where a stand-in would be scored twice), image and target
    are None and the item is dropped from its batch.
    """

    def __init__(self, dataset, stand_in: bool):
        self.dataset, self.stand_in = dataset, stand_in

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        damaged = []
        index = int(i)
        for attempt in range(1 + (MAX_STAND_INS if self.stand_in else 0)):
            try:
                image, target = self.dataset[index]
                return image, target, tuple(damaged)
            except DataError as e:
                damaged.append(DamagedSample(index, str(e.path), e.problem))
            # A local generator: the torch RNG that augmentation draws from stays untouched.
            index = int(np.random.default_rng([int(i), attempt]).integers(len(self.dataset)))
        return None, None, tuple(damaged)


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


class EpochLines(L.Callback):
    """One plain line per epoch (``epoch 3/30: train_loss 0.8123, val_miou 0.4120, 41 s``) in
    place of the progress bar, whose redraws make a log file unreadable."""

    KEYS = ("train_loss", "val_miou")

    def on_train_epoch_start(self, trainer, pl_module):
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):  # after the epoch's validation
        if trainer.is_global_zero:
            m = trainer.callback_metrics
            scores = "".join(f"{k} {float(m[k]):.4f}, " for k in self.KEYS if k in m)
            print(f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}: {scores}{time.perf_counter() - self.start:.0f} s", flush=True)


def on_terminal() -> bool:
    """Whether output goes to a terminal (progress bars) rather than a file or pipe (plain lines)."""
    return sys.stdout.isatty()


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes checkpoints to a temporary file in the same folder, fsyncs and renames it over the
    target: a kill or a full disk mid-write leaves the previous checkpoint intact."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")

        def write(tmp: Path):
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())

        atomic_write(Path(path), write)


class _KeepingWriter(ExperimentWriter):
    def _check_log_dir_exists(self) -> None:
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as f:
                self.metrics_keys = sorted(next(csv.reader(f), []))


class KeepingCSVLogger(CSVLogger):
    """Lightning's CSVLogger, but flushed every step (a kill loses nothing already logged) and
    appending to an existing metrics.csv instead of deleting it (so --resume keeps history)."""

    def __init__(self, out: Path):
        super().__init__(out, name="", version="", flush_logs_every_n_steps=1)

    @property
    @rank_zero_experiment
    def experiment(self):
        if self._experiment is None:
            os.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _KeepingWriter(log_dir=self.log_dir)
        return self._experiment


# --- the run -------------------------------------------------------------------------------
