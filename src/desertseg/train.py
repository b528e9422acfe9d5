"""Training on Lightning: the recipe comes from a preset file, the engine from Lightning
(devices, DDP, mixed precision, gradient accumulation, time budget), the metrics from one
dataset-level confusion matrix per validation pass, summed over every process.

A run folder holds::

    config.json            the resolved config
    metrics.csv            per-epoch metrics (written as they come, kept across --resume)
    val_confusion.json     the confusion matrix of the latest validation pass
    checkpoints/last.ckpt  full training state at the latest epoch boundary (for --resume)
    checkpoints/best.ckpt  best by val mIoU
    best.safetensors       release model files (weights + metadata)
    last.safetensors
    curves.png             loss and mIoU curves

Fault tolerance: every checkpoint is written to a temporary name and renamed, so a kill never
leaves a torn file; ``last.ckpt`` is written at each epoch boundary with the optimiser,
scheduler, loop progress and the RNG states of every process, and ``--resume RUN_DIR``
continues from it. Data order and augmentation are pure functions of (seed, epoch, sample),
so a resumed run sees the same batches as an uninterrupted one, whatever the worker count.
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import shutil
import tomllib
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .classes import CLASS_NAMES, NUM_CLASSES
from .data import SegmentationDataset, find_samples, parse_size
from .losses import SegmentationLoss, class_weights
from .metrics import confusion_metric, summarize
from .models import encoder_parameters

PRESETS_DIR = Path(__file__).parent / "presets"
# Above this, the per-worker in-memory sample cache is switched off (use cache_dir instead).
MEMORY_CACHE_LIMIT = 2 * 2**30


class TrainingDiverged(FloatingPointError, RuntimeError):
    """The loss became NaN or infinite; the message names the epoch, the step and the checkpoint kept."""


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


def _lightning_module():
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


def _data_module(train_ds, val_ds, config: TrainConfig, workers: int):
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
            # Every image exactly once over all processes (a padded DistributedSampler would
            # count some twice in the summed confusion matrix); shards may differ by one image.
            t = self.trainer
            if len(val_ds) < t.world_size:
                raise ValueError(f"the validation split has {len(val_ds)} images, fewer than the {t.world_size} training processes")
            shard = list(range(t.global_rank, len(val_ds), t.world_size))
            return torch.utils.data.DataLoader(val_ds, batch_size=config.batch_size, sampler=shard, **self._args())

    return SegmentationData()


def _resume_callback():
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


def _csv_logger(out: Path):
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


def pixel_counts(dataset: SegmentationDataset) -> np.ndarray:
    counts = np.zeros(NUM_CLASSES, dtype=np.int64)
    for i in range(len(dataset)):
        _, target = dataset.load(i)
        counts += np.bincount(target[target < NUM_CLASSES].ravel(), minlength=NUM_CLASSES)
    return counts


def check_run_dir(out: Path, resume: bool) -> None:
    """Fail before training if the run folder is unusable (exists, unwritable, disk full)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out}: run folder path is a file, not a folder")
    if out.exists() and not resume and any(out.iterdir()):
        raise FileExistsError(f"{out}: run folder exists and is not empty; pass --resume {out} to continue it, or choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OSError(f"{out}: run folder cannot be created ({e.strerror or e})") from None
    probe = out / ".write_test"
    try:
        probe.write_bytes(b"x" * 1024)
        probe.unlink()
    except OSError as e:
        raise OSError(f"{out}: run folder is not writable ({e.strerror or e})") from None
    free = shutil.disk_usage(out).free
    if free < 200 * 2**20:
        raise OSError(f"{out}: only {free // 2**20} MiB free on disk; checkpoints need at least 200 MiB")


def _is_launch_rank_zero() -> bool:
    """True unless a launcher (torchrun, SLURM srun, Lightning's DDP launcher) started this
    process as a rank other than global rank 0; only rank 0 checks and writes the run folder."""
    return all(os.environ.get(k, "0") == "0" for k in ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK"))


def _trim_metrics(path: Path, below_epoch: int) -> None:
    """Drop metrics.csv rows of epochs the resumed run will redo (logged after the checkpoint)."""
    if not path.is_file():
        return
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        header, rows = reader.fieldnames or [], list(reader)
    keep = []
    for r in rows:
        try:
            if int(float(r["epoch"])) < below_epoch:
                keep.append(r)
        except (KeyError, TypeError, ValueError):
            continue  # a line torn by the kill
    from .checkpoint import atomic_write

    def write(tmp: Path):
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=header)
            w.writeheader()
            w.writerows(keep)

    atomic_write(path, write)


def _checkpoint_epoch(path: Path) -> int:
    # Our own checkpoint; read without unpickling arbitrary objects, memory-mapped (cheap).
    return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["epoch"])


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
    """Train ``config`` on ``data`` into run folder ``out``; returns the best metrics.

    With ``resume`` the config comes from ``out/config.json`` and training continues from
    ``out/checkpoints/last.ckpt``. Multi-process runs: ``strategy="ddp"`` (Lightning starts
    the processes), or the same command under torchrun or SLURM srun.
    """
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from .checkpoint import atomic_write, make_metadata, save_model
    from .transforms import TrainTransform, eval_transform

    out = Path(out)
    if "spawn" in str(strategy) or str(strategy) == "ddp_notebook":
        raise ValueError(f"strategy '{strategy}' is not supported: use 'ddp' (Lightning starts one process per device) or launch with torchrun / srun")
    lead = _is_launch_rank_zero()
    if resume:
        saved = out / "config.json"
        if not saved.is_file():
            raise FileNotFoundError(f"{out}: not a run folder (no config.json); nothing to resume")
        config = TrainConfig(**json.loads(saved.read_text()))
    if lead:
        check_run_dir(out, resume)
    resolve_workers(config.num_workers)  # validate before any work
    L.seed_everything(config.seed, workers=True, verbose=False)
    # Epoch-level metrics computed from the reduced confusion matrix are identical on every rank.
    warnings.filterwarnings("ignore", message=".*when logging on epoch level in distributed setting.*")

    last = out / "checkpoints" / "last.ckpt"
    ckpt_path = None
    if resume and last.exists():
        ckpt_path = last
        if lead:
            _trim_metrics(out / "metrics.csv", _checkpoint_epoch(last) + 1)
    elif resume and lead:
        print(f"note: {out} has no checkpoints/last.ckpt yet; starting the run from its first epoch")
        _trim_metrics(out / "metrics.csv", 0)

    trainer = L.Trainer(
        max_epochs=config.epochs,
        max_time={"minutes": config.max_time} if config.max_time else None,
        accelerator=accelerator,
        devices=devices,
        num_nodes=num_nodes,
        strategy=strategy,
        precision=config.precision,
        accumulate_grad_batches=config.accumulate,
        callbacks=[
            ModelCheckpoint(dirpath=out / "checkpoints", filename="best", monitor="val_miou", mode="max", save_top_k=1),
            # Lightning 2.6's save_last only re-saves when a new best was saved; this one saves every epoch.
            ModelCheckpoint(dirpath=out / "checkpoints", filename="last", monitor=None, save_top_k=1, enable_version_counter=False),
            _resume_callback(),
        ],
        plugins=[atomic_checkpoint_io()],
        logger=_csv_logger(out),
        default_root_dir=out,
        use_distributed_sampler=False,  # our samplers shard by rank (see _data_module)
        log_every_n_steps=1,
        enable_progress_bar=progress,
        enable_model_summary=False,
        limit_train_batches=limit_train_batches,
        deterministic=False,
    )
    workers = resolve_workers(config.num_workers, trainer.num_devices)

    size = config.input_size
    train_samples, problems = find_samples(data, config.train_split)
    val_samples, vproblems = find_samples(data, config.val_split)
    if lead:
        for p in problems + vproblems:
            print(f"warning: {p}")
    # Per-process in-memory caches multiply with workers; past the limit use only the disk cache.
    est = (len(train_samples) + len(val_samples)) * size[0] * size[1] * 4 * max(1, workers)
    in_memory = config.cache and est <= MEMORY_CACHE_LIMIT
    if config.cache and not in_memory and lead:
        print(f"note: in-memory sample cache off ({est / 2**30:.1f} GiB across {workers} workers); set cache_dir for a shared on-disk cache")
    train_ds = SegmentationDataset(train_samples, size, TrainTransform(config.augment), cache=in_memory, cache_dir=config.cache_dir)
    val_ds = SegmentationDataset(val_samples, size, eval_transform, cache=in_memory, cache_dir=config.cache_dir)
    weights = None
    if config.class_weighting != "none":
        weights = class_weights(pixel_counts(train_ds), config.class_weighting).tolist()
    module = _lightning_module()(asdict(config), weights)

    if lead and not resume:
        atomic_write(out / "config.json", lambda tmp: tmp.write_text(json.dumps(asdict(config), indent=2)))
    try:
        trainer.fit(module, datamodule=_data_module(train_ds, val_ds, config, workers), ckpt_path=ckpt_path, weights_only=True)
    except FloatingPointError as e:
        kept = f"the last good checkpoint is kept: {last} (epoch {_checkpoint_epoch(last)})" if last.exists() else "no checkpoint had been written yet"
        raise TrainingDiverged(f"{e}; training stopped and {kept}. Lower the learning rate or use precision 32-true.") from None
    if not trainer.is_global_zero:
        return {}

    result = {}
    best_cb = trainer.checkpoint_callback
    best_score = float(best_cb.best_model_score) if best_cb.best_model_score is not None else None
    for tag, path in (("best", best_cb.best_model_path), ("last", str(last))):
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

