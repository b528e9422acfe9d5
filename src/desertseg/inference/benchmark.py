"""End-to-end inference latency on real images: decode -> preprocess -> model -> full-resolution
class mask, per backend and batch size, as ``desertseg benchmark`` prints it.

Each configuration runs one untimed warm-up batch, then timed batches cycling through the
image files. Per-image latency is a batch's wall time divided by its size (for batch 1, the
plain latency); stage times come from :class:`desertseg.inference.predict.Timing`.
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

from ..data.decoding import read_image

FIELDS = ("requested_backend", "model_file", "backend", "batch", "input_size", "images", "latency_ms", "batch_latency_ms", "images_per_s", "stage_ms_per_image", "peak_rss_mb", "cuda_peak_mb")
# Rows also carry "speedup_vs_published" and "unseen_miou" when run_benchmark is asked for them.
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


class PublishedPath:
    """The published system's inference path, for ratios measured in the same run: PIL decode,
    PIL bilinear resize to 256x256, ToTensor (plain [0, 1] input, as it trains), torchvision
    DeepLabV3-ResNet50 in float32 eager, argmax at 256x256, nearest resize back. Untrained
    weights unless ``checkpoint`` (a ``deeplabv3_resnet50`` model file) is given: the time is
    the same, the mIoU is only meaningful with trained weights.
    """

    backend = "published"
    input_size = (256, 256)

    def __init__(self, checkpoint: Path | str | None = None):
        from ..models.checkpoint import load_model
        from ..models.registry import build_model
        from .predict import Timing

        if checkpoint is not None:
            self.model, meta = load_model(checkpoint)
            if meta.get("model") != "deeplabv3_resnet50":
                raise ValueError(f"{checkpoint}: the published path is a deeplabv3_resnet50 model, got {meta.get('model')}")
        else:
            self.model = build_model("deeplabv3_resnet50", 10, pretrained=False)
        self.model.eval()
        self.trained = checkpoint is not None
        self.device, self.timing, self.metadata = torch.device("cpu"), Timing(), {"model": "deeplabv3_resnet50", "path": str(checkpoint) if checkpoint else None}

    @staticmethod
    def decode(path: Path) -> np.ndarray:
        from PIL import Image

        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))

    def predict_batch(self, images: Sequence[np.ndarray]) -> list:
        from types import SimpleNamespace

        from PIL import Image
        from torchvision.transforms import functional as TF

        out = []
        for image in images:
            t0 = time.perf_counter()
            x = TF.to_tensor(Image.fromarray(image).resize(self.input_size[::-1], Image.BILINEAR))[None]
            t1 = time.perf_counter()
            with torch.inference_mode():
                pred = self.model(x).argmax(1)[0].to(torch.uint8).numpy()
            t2 = time.perf_counter()
            out.append(SimpleNamespace(mask=np.asarray(Image.fromarray(pred).resize(image.shape[1::-1], Image.NEAREST))))
            self.timing.preprocess += t1 - t0
            self.timing.model += t2 - t1
            self.timing.postprocess += time.perf_counter() - t2
        return out


def miou(predictor, samples: Sequence, decode=read_image) -> dict:
    """All-10 and present-class mIoU of ``predictor`` on labelled Duality ``samples`` at full resolution."""
    from ..classes import NUM_CLASSES, raw_to_index
    from ..data.decoding import read_mask
    from ..metrics import confusion_matrix, summarize

    cm = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
    for s in samples:
        cm += confusion_matrix(predictor.predict_batch([decode(s.image)])[0].mask, raw_to_index(read_mask(s.mask)))
    r = summarize(cm)
    return {"miou_all": round(r["miou_all"], 4), "miou_present": round(r["miou_present"], 4), "images": len(samples)}


def run_config(predictor, paths: Sequence[Path], batch: int, batches: int, read=read_image) -> dict:
    """Time ``batches`` batches of ``batch`` images (after one warm-up batch) end to end, each
    image read from its file by ``read``."""
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
        images = [read(p) for p in group]
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
    published: bool = False,
    published_checkpoint: Path | str | None = None,
    miou_samples: Sequence | None = None,
) -> dict:
    """Benchmark each backend x batch size on ``paths``; ``images`` timed images per configuration
    (rounded up to whole batches). ``size`` = (H, W) overrides the model's input size.

    ``published``: also time :class:`PublishedPath` at batch 1 and give every row its p50
    ratio to it (``speedup_vs_published``). ``miou_samples``: labelled samples (e.g. the unseen
    split) scored by each path at full resolution (``unseen_miou``)."""
    from ..models.checkpoint import default_model_path
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
        if miou_samples:
            results[-1]["unseen_miou"] = miou(predictor, miou_samples)
        del predictor
    if published:
        seed = PublishedPath(published_checkpoint)
        row = {"requested_backend": "published", "model_file": seed.metadata["path"], **run_config(seed, paths, 1, images, read=seed.decode)}
        if miou_samples:
            row["unseen_miou"] = miou(seed, miou_samples, decode=seed.decode) if seed.trained else None
        for r in results:
            r["speedup_vs_published"] = round(row["latency_ms"]["p50"] / r["latency_ms"]["p50"], 2)
        results.append(row)
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


def time_int8_paths(checkpoint: Path | str, rounds: int = 12) -> dict:
    """Median model time per image, in ms, of the PT2E and onnxruntime int8 paths of
    ``checkpoint`` on this machine, run in turns at the model's input size so that both see the
    same load: ``{"pt2e_ms", "int8_ms"}`` (``int8_ms`` None without an int8 file or
    onnxruntime). What ``desertseg compile`` records for ``backend="auto"``."""
    from ..errors import MissingExtra
    from ..models.checkpoint import CheckpointError
    from .predict import Predictor

    fast = Predictor.from_checkpoint(checkpoint, device="cpu", backend="pt2e")
    runners = {"pt2e": fast.runner}
    try:
        runners["int8"] = Predictor.from_checkpoint(checkpoint, device="cpu", backend="int8").runner
    except (CheckpointError, MissingExtra):
        pass
    x = torch.rand(1, 3, *fast.input_size)
    times: dict[str, list[float]] = {name: [] for name in runners}
    for i in range(rounds + 1):  # the first round warms up
        for name, run in runners.items():
            start = time.perf_counter()
            run(x)
            if i:
                times[name].append(time.perf_counter() - start)
    ms = {f"{name}_ms": round(1000 * float(np.median(t)), 2) for name, t in times.items()}
    return {"int8_ms": None, **ms}


def _version(module: str) -> str | None:
    try:
        from importlib.metadata import version

        return version(module)
    except Exception:
        return None


def _miou_text(m: dict | None) -> str:
    return f"{m['miou_all']:.4f} / {m['miou_present']:.4f}" if m else "n/a"


def format_benchmark(report: dict) -> str:
    """The results as a Markdown table."""
    lines = [
        f"Model {report['model']} ({report['checkpoint']}) on {report['device']}, {report['image_size'][1]}x{report['image_size'][0]} images",
        "",
        "| backend | batch | input | p50 ms/img | p90 ms/img | img/s | decode | preprocess | model | postprocess | x published | unseen mIoU all/present | peak RSS MB | CUDA peak MB |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in report["results"]:
        s = r["stage_ms_per_image"]
        h, w = r["input_size"]
        lines.append(
            f"| {r['backend']} | {r['batch']} | {w}x{h} | {r['latency_ms']['p50']:.1f} | {r['latency_ms']['p90']:.1f} | {r['images_per_s']:.1f} | "
            f"{s['decode']:.1f} | {s['preprocess']:.1f} | {s['model']:.1f} | {s['postprocess']:.1f} | {r.get('speedup_vs_published', 'n/a')} | {_miou_text(r.get('unseen_miou'))} | {r['peak_rss_mb'] if r['peak_rss_mb'] is not None else 'n/a'} | {r['cuda_peak_mb'] if r['cuda_peak_mb'] is not None else 'n/a'} |"
        )
    return "\n".join(lines)
