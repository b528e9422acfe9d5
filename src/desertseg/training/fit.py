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
import os
import shutil
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from ..classes import NUM_CLASSES
from ..data.decoding import DataError, SegmentationDataset
from ..data.samples import find_samples
from ..errors import TooManyDamagedFiles
from .config import TrainConfig
from .engine import AtomicCheckpointIO, EpochLines, KeepingCSVLogger, ResumeState, TrainingDiverged, on_terminal, quiet_lightning, resolve_workers
from .lightning_module import SegmentationData, SegmentationModule, initial_model
from .losses import class_weights

# Above this, the per-worker in-memory sample cache is switched off (use cache_dir instead).
MEMORY_CACHE_LIMIT = 2 * 2**30


def pixel_counts(dataset: SegmentationDataset) -> np.ndarray:
    """Labelled pixels per class over ``dataset`` at the training size, for class weights.

    A file that cannot be read is warned about and left out here; training meets it again,
    skips it and counts it (see :mod:`desertseg.training.lightning_module`).
    """
    counts = np.zeros(NUM_CLASSES, dtype=np.int64)
    for i in range(len(dataset)):
        try:
            _, target = dataset.load(i)
        except DataError as e:
            warnings.warn(f"class weights leave out a damaged file: {e}", stacklevel=2)
            continue
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
    from ..io import atomic_write

    def write(tmp: Path):
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=header)
            w.writeheader()
            w.writerows(keep)

    atomic_write(path, write)


def _checkpoint_epoch(path: Path) -> int:
    # Our own checkpoint; read without unpickling arbitrary objects, memory-mapped (cheap).
    return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["epoch"])


def _resume_point(config: TrainConfig, out: Path, resume: bool, lead: bool) -> tuple[TrainConfig, Path | None]:
    """The config to train (a resumed run's own) and the checkpoint to continue from, if any;
    metrics.csv is trimmed to that checkpoint's epoch so no epoch is logged twice."""
    if resume:
        saved = out / "config.json"
        if not saved.is_file():
            raise FileNotFoundError(f"{out}: not a run folder (no config.json); nothing to resume")
        config = TrainConfig(**json.loads(saved.read_text()))
    if lead:
        check_run_dir(out, resume)
    last = out / "checkpoints" / "last.ckpt"
    if resume and last.exists():
        if lead:
            _trim_metrics(out / "metrics.csv", _checkpoint_epoch(last) + 1)
        return config, last
    if resume and lead:
        print(f"note: {out} has no checkpoints/last.ckpt yet; starting the run from its first epoch")
        _trim_metrics(out / "metrics.csv", 0)
    return config, None


def _trainer(config: TrainConfig, out: Path, validate: bool, progress: bool, limit_train_batches, **launch):
    """Lightning's Trainer for ``config``, with the best-by-val checkpoint callback (or None).

    ``launch``: accelerator, devices, num_nodes, strategy.
    """
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    best = ModelCheckpoint(dirpath=out / "checkpoints", filename="best", monitor="val_miou", mode="max", save_top_k=1) if validate else None
    callbacks = [
        *([best] if best else []),
        # Lightning 2.6's save_last only re-saves when a new best was saved; this one saves every epoch.
        ModelCheckpoint(dirpath=out / "checkpoints", filename="last", monitor=None, save_top_k=1, enable_version_counter=False),
        ResumeState(),
        *([EpochLines()] if progress and not on_terminal() else []),
    ]
    trainer = L.Trainer(
        max_epochs=config.epochs,
        max_time={"minutes": config.max_time} if config.max_time else None,
        precision=config.precision,
        accumulate_grad_batches=config.accumulate,
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        logger=KeepingCSVLogger(out),
        default_root_dir=out,
        use_distributed_sampler=False,  # our samplers shard by rank (see SegmentationData)
        log_every_n_steps=1,
        enable_progress_bar=progress and on_terminal(),
        enable_model_summary=False,
        limit_train_batches=limit_train_batches,
        limit_val_batches=None if validate else 0,
        num_sanity_val_steps=None if validate else 0,
        deterministic=False,
        **launch,
    )
    return trainer, best


def _datasets(config: TrainConfig, data: Path, validate: bool, workers: int, lead: bool) -> tuple[SegmentationDataset, SegmentationDataset | None]:
    """Training and validation datasets; listing problems are printed, not fatal."""
    from ..data.transforms import TrainTransform, eval_transform

    size = config.input_size
    train_samples, problems = find_samples(data, config.train_split)
    val_samples, vproblems = find_samples(data, config.val_split) if validate else ([], [])
    if lead:
        for p in problems + vproblems:
            print(f"warning: {p}")
    # Per-process in-memory caches multiply with workers; past the limit use only the disk cache.
    est = (len(train_samples) + len(val_samples)) * size[0] * size[1] * 4 * max(1, workers)
    in_memory = config.cache and est <= MEMORY_CACHE_LIMIT
    if config.cache and not in_memory and lead:
        print(f"note: in-memory sample cache off ({est / 2**30:.1f} GiB across {workers} workers); set cache_dir for a shared on-disk cache")
    train_ds = SegmentationDataset(train_samples, size, TrainTransform(config.augment), cache=in_memory, cache_dir=config.cache_dir)
    val_ds = SegmentationDataset(val_samples, size, eval_transform, cache=in_memory, cache_dir=config.cache_dir) if validate else None
    return train_ds, val_ds


def _release(module: SegmentationModule, config: TrainConfig, out: Path, best) -> dict:
    """Write ``best.safetensors`` / ``last.safetensors`` from the Lightning checkpoints."""
    from ..models.checkpoint import make_metadata, save_model

    result = {}
    best_score = float(best.best_model_score) if best and best.best_model_score is not None else None
    for tag, path in (("best", best.best_model_path if best else ""), ("last", str(out / "checkpoints" / "last.ckpt"))):
        if not path or not Path(path).exists():
            continue
        # Our own Lightning checkpoint; still loaded without unpickling arbitrary objects.
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        state = {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
        module.model.load_state_dict(state)
        metrics = {"epoch": ckpt["epoch"]}
        if tag == "best":
            metrics["val_miou_at_input_size"] = best_score
        save_model(out / f"{tag}.safetensors", module.model, make_metadata(config.model, config.input_size, asdict(config), metrics))
        result[tag] = metrics
    return result


def _fit(trainer, module: SegmentationModule, datamodule: SegmentationData, ckpt_path, out: Path) -> None:
    """``trainer.fit``; a run stopped by damaged files or a diverged loss says which checkpoint is kept."""
    last = out / "checkpoints" / "last.ckpt"

    def kept(what: str) -> str:
        return f"the {what} is kept: {last} (epoch {_checkpoint_epoch(last)})" if last.exists() else "no checkpoint had been written yet"

    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    except TooManyDamagedFiles as e:
        # Raised after the epoch's checkpoint was written (SegmentationModule.on_fit_end).
        raise TooManyDamagedFiles(f"{e}, then continue with --resume {out}. Training stopped; {kept('last checkpoint')}.") from None
    except FloatingPointError as e:
        raise TrainingDiverged(f"{e}; training stopped and {kept('last good checkpoint')}. Lower the learning rate or use precision 32-true.") from None


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

    from ..evaluation.report import plot_curves
    from ..io import atomic_write

    out = Path(out)
    if "spawn" in str(strategy) or str(strategy) == "ddp_notebook":
        raise ValueError(f"strategy '{strategy}' is not supported: use 'ddp' (Lightning starts one process per device) or launch with torchrun / srun")
    lead = _is_launch_rank_zero()
    config, ckpt_path = _resume_point(config, out, resume, lead)
    resolve_workers(config.num_workers)  # validate before any work
    if config.init and not resume:
        initial_model(config)  # a wrong init file fails here, not after reading every mask for the class weights
    L.seed_everything(config.seed, workers=True, verbose=False)
    # Epoch-level metrics computed from the reduced confusion matrix are identical on every rank.
    warnings.filterwarnings("ignore", message=".*when logging on epoch level in distributed setting.*")
    quiet_lightning()

    # No validation split (val_split = "" or "none"): every pair trains, and the last epoch is
    # the model. That is the leakage-free choice when the environments at hand are all used
    # for training (generalisation.py folds, the bundled model on every shared environment).
    validate = config.val_split.lower() not in ("", "none")
    trainer, best = _trainer(config, out, validate, progress, limit_train_batches, accelerator=accelerator, devices=devices, num_nodes=num_nodes, strategy=strategy)
    workers = resolve_workers(config.num_workers, trainer.num_devices)
    train_ds, val_ds = _datasets(config, data, validate, workers, lead)
    if lead:  # desertseg's own device line, in place of Lightning's (engine.quiet_lightning)
        where = f"{trainer.num_devices} {trainer.strategy.root_device.type} device(s)" + (f" x {trainer.num_nodes} nodes" if trainer.num_nodes > 1 else "")
        print(f"Training {config.model} at {config.size} for {config.epochs} epochs on {len(train_ds)} pairs ({len(val_ds) if val_ds else 'no'} val) with {where}")
    loss_weights = class_weights(pixel_counts(train_ds), config.class_weighting).tolist() if config.class_weighting != "none" else None
    module = SegmentationModule(asdict(config), loss_weights)

    if lead and not resume:
        atomic_write(out / "config.json", lambda tmp: tmp.write_text(json.dumps(asdict(config), indent=2)))
    _fit(trainer, module, SegmentationData(train_ds, val_ds, config, workers), ckpt_path, out)
    if not trainer.is_global_zero:
        return {}
    result = _release(module, config, out, best)
    plot_curves(out / "metrics.csv", out / "curves.png")
    return result
