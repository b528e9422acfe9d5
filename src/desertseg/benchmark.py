"""End-to-end inference latency on real images: decode -> preprocess -> model -> full-resolution
class mask, per backend and batch size, as ``desertseg benchmark`` prints it.

Each configuration runs one untimed warm-up batch, then timed batches cycling through the
image files. Per-image latency is a batch's wall time divided by its size (for batch 1, the
plain latency); stage times come from :class:`desertseg.predict.Timing`.
"""

from __future__ import annotations

import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .data import DataError, read_image
from .samples import IMAGE_SUFFIXES

FIELDS = ("requested_backend", "model_file", "backend", "batch", "input_size", "images", "latency_ms", "batch_latency_ms", "images_per_s", "stage_ms_per_image", "peak_rss_mb", "cuda_peak_mb")
# Where the shared real data lives beside a checkout (as the tests find it).
SHARED_TEST_IMAGES = Path("duality_sample") / "Offroad_Segmentation_testImages" / "Color_Images"


def default_images_dir() -> Path | None:
    """The unseen-environment test images of the shared data, if found (``$DESERTSEG_SHARED_DATA``,
    ``../shared/data`` or ``shared/data`` from the working folder)."""
    roots = [os.environ.get("DESERTSEG_SHARED_DATA"), Path.cwd().parent / "shared" / "data", Path.cwd() / "shared" / "data"]
    for root in roots:
        if root and (Path(root) / SHARED_TEST_IMAGES).is_dir():
            return Path(root) / SHARED_TEST_IMAGES
    return None


def find_images(inputs: Sequence[Path | str], limit: int | None = None) -> list[Path]:
    """Image files from files, folders (searched recursively) and glob patterns, sorted per input."""
    import glob

    found: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file())
        elif p.is_file():
            found.append(p)
        else:
            matches = sorted(Path(m) for m in glob.glob(str(item)))
            if not matches:
                raise DataError(p, "no such file, folder or matching pattern")
            found += [m for m in matches if m.suffix.lower() in IMAGE_SUFFIXES]
    if not found:
        raise DataError(Path(str(inputs[0])) if inputs else Path("."), "no images found")
    return found[:limit] if limit else found


def peak_rss_mb() -> float | None:
    """Peak resident memory of this process so far (MB); None where getrusage is missing (Windows)."""
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(peak / (1024 * 1024 if sys.platform == "darwin" else 1024), 1)


def _stats(values_s: list[float]) -> dict:
    ms = np.asarray(values_s) * 1000
    return {"p50": round(float(np.percentile(ms, 50)), 2), "p90": round(float(np.percentile(ms, 90)), 2), "mean": round(float(ms.mean()), 2), "min": round(float(ms.min()), 2)}


def run_config(predictor, paths: Sequence[Path], batch: int, batches: int) -> dict:
    """Time ``batches`` batches of ``batch`` images (after one warm-up batch) end to end."""
    cycle = [paths[i % len(paths)] for i in range((batches + 1) * batch)]
    groups = [cycle[i * batch : (i + 1) * batch] for i in range(batches + 1)]
    cuda = predictor.device.type == "cuda"
    times, decode = [], 0.0
    for n, group in enumerate(groups):
        if n == 1:  # warm-up done: reset the counters
            t = predictor.timing
            t.preprocess = t.model = t.postprocess = 0.0
            t.images, decode = 0, 0.0
            if cuda:
                torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        images = [read_image(p) for p in group]
        t1 = time.perf_counter()
        masks = [p.mask for p in predictor.predict_batch(images)]
        if cuda:
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - t0
        if any(m.shape != im.shape[:2] for m, im in zip(masks, images)):
            raise RuntimeError("a predicted mask is not at its image's resolution")
        if n:
            times.append(elapsed)
            decode += t1 - t0
    count = batches * batch
    t = predictor.timing
    return {
        "backend": predictor.backend,
        "batch": batch,
        "input_size": list(predictor.input_size),
        "images": count,
        "latency_ms": _stats([s / batch for s in times]),
        "batch_latency_ms": _stats(times),
        "images_per_s": round(count / sum(times), 2),
        "stage_ms_per_image": {k: round(1000 * v / count, 2) for k, v in (("decode", decode), ("preprocess", t.preprocess), ("model", t.model), ("postprocess", t.postprocess))},
        "peak_rss_mb": peak_rss_mb(),
        "cuda_peak_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if cuda else None,
    }


def run_benchmark(
    checkpoint: Path | str | None,
    paths: Sequence[Path],
    backends: Sequence[str] = ("auto",),
    batch_sizes: Sequence[int] = (1,),
    size: tuple[int, int] | None = None,
    images: int = 8,
    threads: int | None = None,
    device: str | None = None,
    bf16: bool = False,
    compile: bool = False,
) -> dict:
    """Benchmark each backend x batch size on ``paths``; ``images`` timed images per configuration
    (rounded up to whole batches). ``size`` = (H, W) overrides the model's input size."""
    from .checkpoint import default_model_path
    from .predict import Predictor
    from .runtime import describe_device

    if threads:
        torch.set_num_threads(threads)
    results, meta, where = [], {}, None
    for backend in backends:
        kwargs = {"bf16": bf16, "compile": compile} if backend != "onnx" else {}
        predictor = Predictor.from_checkpoint(checkpoint, device=device, backend=backend, **kwargs)
        if size is not None:
            predictor.input_size = tuple(size)
        meta, where = predictor.metadata, describe_device(predictor.device)
        for b in batch_sizes:
            results.append({"requested_backend": backend, "model_file": meta.get("path"), **run_config(predictor, paths, b, max(1, math.ceil(images / b)))})
        del predictor
    first = read_image(paths[0])
    return {
        "checkpoint": str(checkpoint) if checkpoint is not None else str(default_model_path()),
        "model": meta.get("model"),
        "device": where,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "onnxruntime": _version("onnxruntime")},
        "image_size": list(first.shape[:2]),
        "image_files": len(paths),
        "data": str(Path(paths[0]).parent),
        "results": results,
    }


def _version(module: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:
        return None


def format_table(report: dict) -> str:
    """The results as a Markdown table."""
    lines = [
        f"Model {report['model']} ({report['checkpoint']}) on {report['device']}, {report['image_size'][1]}x{report['image_size'][0]} images",
        "",
        "| backend | batch | input | p50 ms/img | p90 ms/img | img/s | decode | preprocess | model | postprocess | peak RSS MB | CUDA peak MB |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        s = r["stage_ms_per_image"]
        h, w = r["input_size"]
        lines.append(
            f"| {r['backend']} | {r['batch']} | {w}x{h} | {r['latency_ms']['p50']:.1f} | {r['latency_ms']['p90']:.1f} | {r['images_per_s']:.1f} | "
            f"{s['decode']:.1f} | {s['preprocess']:.1f} | {s['model']:.1f} | {s['postprocess']:.1f} | {r['peak_rss_mb'] if r['peak_rss_mb'] is not None else 'n/a'} | {r['cuda_peak_mb'] if r['cuda_peak_mb'] is not None else 'n/a'} |"
        )
    return "\n".join(lines)
