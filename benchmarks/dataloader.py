"""Is decoding or the model the limit? Images/s of the training data loader alone (no cache,
on-disk cache being filled, on-disk cache warm, in-memory cache warm) against images/s of a
training step (forward + backward + optimiser step on synthetic batches) and of both together.
Prints one JSON object.

    python benchmarks/dataloader.py --n 256 --workers auto --device cuda
    python benchmarks/dataloader.py --n 2 --size 128x72 --steps 2   # smoke run

The loader uses the preset's augmentation (the same TrainTransform as training), so "loader"
means decode + resize + augment + collate. Numbers from a machine shared with other jobs
(see ``load_average`` in the output) are distorted by contention: repeat on an idle one.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "duality_sample" / "Offroad_Segmentation_Training_Dataset"


def loader_rate(dataset, batch_size: int, workers: int, pin: bool, passes: int = 1) -> float:
    """Images/s over ``passes`` full passes; the last pass is timed (earlier ones warm caches)."""
    import torch

    dl = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers, pin_memory=pin, persistent_workers=workers > 0)
    rate = 0.0
    for _ in range(passes):
        t0, n = time.perf_counter(), 0
        for image, _target in dl:
            n += image.shape[0]
        rate = n / (time.perf_counter() - t0)
    return rate


def train_step_rate(model_name: str, size: tuple[int, int], batch_size: int, steps: int, device: str, precision: str, loader=None) -> float:
    """Images/s of training steps on synthetic batches, or on ``loader``'s batches when given."""
    import torch

    from desertseg.classes import NUM_CLASSES
    from desertseg.models.registry import build_model
    from desertseg.training.losses import SegmentationLoss

    model = build_model(model_name, NUM_CLASSES, pretrained=False).to(device).train()
    criterion = SegmentationLoss("ce").to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    autocast = torch.autocast(device_type=torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bf16-mixed")
    h, w = size

    def batches():
        if loader is None:
            x = torch.randn(batch_size, 3, h, w, device=device)
            y = torch.randint(0, NUM_CLASSES, (batch_size, h, w), device=device)
            while True:
                yield x, y
        while True:
            for x, y in loader:
                yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)

    def step(x, y):
        with autocast:
            loss = criterion(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    it = batches()
    for _ in range(2):  # warm-up (allocator, cudnn autotuning)
        step(*next(it))
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    t0, n = time.perf_counter(), 0
    for _ in range(steps):
        x, y = next(it)
        step(x, y)
        n += x.shape[0]
    sync()
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=SHARED, help="dataset root with train/")
    ap.add_argument("--split", default="train")
    ap.add_argument("--n", type=int, default=64, help="images to load (the first N of the split)")
    ap.add_argument("--preset", default="default", help="preset giving size, model and augmentation")
    ap.add_argument("--size", default=None, help="override WIDTHxHEIGHT")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--workers", default="auto", help="DataLoader workers: a count or auto")
    ap.add_argument("--steps", type=int, default=10, help="timed training steps")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when present)")
    ap.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"])
    ap.add_argument("--cache-dir", type=Path, default=None, help="on-disk cache folder (default: a temporary folder, removed after)")
    args = ap.parse_args()

    import torch

    from desertseg.data.decoding import SegmentationDataset
    from desertseg.data.samples import find_samples
    from desertseg.data.transforms import TrainTransform
    from desertseg.training.config import load_config
    from desertseg.training.engine import resolve_workers

    config = load_config(args.preset, {"size": args.size} if args.size else None)
    size = config.input_size
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    workers = resolve_workers(int(args.workers) if args.workers.isdigit() else args.workers)
    pin = device.startswith("cuda")
    samples = find_samples(args.data, args.split)[0][: args.n]
    transform = TrainTransform(config.augment)

    def dataset(**kw):
        return SegmentationDataset(samples, size, transform, **kw)

    with tempfile.TemporaryDirectory(prefix="desertseg-cache-") as tmp:
        cache_dir = args.cache_dir or Path(tmp)
        # Steady-state passes are timed on the second pass, so that worker start-up is not counted.
        rates = {
            "loader_no_cache": loader_rate(dataset(), args.batch_size, workers, pin, passes=2),
            "loader_disk_cache_cold": loader_rate(dataset(cache_dir=cache_dir), args.batch_size, workers, pin),
            "loader_disk_cache_warm": loader_rate(dataset(cache_dir=cache_dir), args.batch_size, workers, pin, passes=2),
            # In-memory caching is per process; measured single-process (workers=0), second pass.
            "loader_memory_cache_warm_0_workers": loader_rate(dataset(cache=True), args.batch_size, 0, pin, passes=2),
        }
        rates["train_step_synthetic"] = train_step_rate(config.model, size, args.batch_size, args.steps, device, args.precision)
        warm = torch.utils.data.DataLoader(dataset(cache_dir=cache_dir), batch_size=args.batch_size, shuffle=True, num_workers=workers, pin_memory=pin, persistent_workers=workers > 0)
        rates["train_step_with_warm_disk_cache_loader"] = train_step_rate(config.model, size, args.batch_size, args.steps, device, args.precision, loader=warm)

    result = {
        "images": len(samples),
        "size": f"{size[1]}x{size[0]}",
        "model": config.model,
        "batch_size": args.batch_size,
        "workers": workers,
        "pin_memory": pin,
        "precision": args.precision,
        "device": torch.cuda.get_device_name() if device.startswith("cuda") else f"cpu ({platform.processor() or platform.machine()})",
        "cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average": [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "images_per_s": {k: round(v, 2) for k, v in rates.items()},
        "model_is_the_limit": rates["loader_disk_cache_warm"] >= rates["train_step_synthetic"],
        "note": "short run; timings on a machine shared with other jobs are distorted by contention",
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
