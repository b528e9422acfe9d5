"""Why the default (int8) path measures slower when it alternates image by image with the
published path than when it runs alone (issue 15: 8.1x back to back, 6.6x alternating).

Times the int8 path's end-to-end p50 on the same real 960x540 images in one process, in turn:

- ``alone``: right after another int8 image, nothing else in between;
- ``after_published``: each int8 image right after one published-path image (as
  ``latency_vs_seed.py`` alternates them);
- ``after_published_pause``: the same with a 0.2 s pause between the two, which lets the
  published path's idle OpenMP threads stop spinning (GNU OpenMP spins GOMP_SPINCOUNT times,
  300,000 by default, before it sleeps) but leaves the caches as cold as without the pause;
- ``after_cache_flush``: each int8 image after a pass over 256 MB of memory (about the
  published model's weights and activations), with no OpenMP thread awake.

If ``after_published_pause`` recovers ``alone``'s time, the cause is idle threads competing for
the two cores; if ``after_cache_flush`` is as slow as ``after_published``, it is the caches. Run
it once with the default settings and once with ``OMP_WAIT_POLICY=PASSIVE`` (threads sleep at
once) to compare. Prints JSON.

    python benchmarks/interleaving.py --threads 2 --images 20
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
UNSEEN = ROOT.parent / "shared" / "data" / "duality_sample" / "Offroad_Segmentation_testImages"


def p50(seconds: list[float]) -> float:
    return round(float(np.percentile(np.asarray(seconds) * 1000, 50)), 1)


def main() -> None:
    import torch

    from desertseg.data.decoding import read_image
    from desertseg.data.samples import list_samples
    from desertseg.inference.benchmark import PublishedPath
    from desertseg.inference.predict import Predictor
    from desertseg.models.checkpoint import default_model_path

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=default_model_path())
    ap.add_argument("--backend", default="auto", help="our path: auto (the default, int8 on a CPU), torch, onnx, int8")
    ap.add_argument("--images", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--pause", type=float, default=0.2, help="seconds between the published image and ours in after_published_pause")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    samples, _ = list_samples(UNSEEN)
    paths = [samples[i % len(samples)].image for i in range(args.images)]
    ours = Predictor.from_checkpoint(args.checkpoint, device="cpu", backend=args.backend)
    published = PublishedPath()
    flush = np.ones(256 * 2**20 // 8)

    def run_ours(path: Path) -> float:
        t0 = time.perf_counter()
        ours.predict(read_image(path))
        return time.perf_counter() - t0

    def before(mode: str, path: Path) -> None:
        if mode.startswith("after_published"):
            published.predict_batch([published.decode(path)])
        if mode == "after_published_pause":
            time.sleep(args.pause)
        if mode == "after_cache_flush":
            flush.sum()

    modes = ("alone", "after_published", "after_published_pause", "after_cache_flush")
    times: dict[str, list[float]] = {m: [] for m in modes}
    for p in paths[:2]:  # warm-up
        run_ours(p)
        before("after_published", p)
    for p in paths:  # the modes take turns image by image, so machine load hits them alike
        for mode in modes:
            before(mode, p)
            times[mode].append(run_ours(p))
    result = {
        "backend": ours.backend,
        "device": ours.describe_device(),
        "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(unset: GNU OpenMP spins, then sleeps)"),
        "images": len(paths),
        "p50_ms": {m: p50(t) for m, t in times.items()},
    }
    result["slowdown_vs_alone"] = {m: round(v / result["p50_ms"]["alone"], 3) for m, v in result["p50_ms"].items()}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
