"""Images per second of `desertseg predict` on a folder of real images, with the pipeline
(decoding ahead and writing behind the model in background threads) and without it, against
the model's own rate, in one run on one machine. Prints JSON.

    python benchmarks/folder_throughput.py --threads 2 --backends auto,torch

Folder: the 100 real 960x540 PNGs of the shared Duality train split. Outputs (index, raw,
colour and overlay PNGs) go to a temporary folder. "model rate" is images per second of the
network alone (the predictor's own model time), the ceiling a folder run can approach. Each
row loads its predictor as `desertseg predict --workers N` does, so `auto` shows what a
folder run takes with and without the pipeline.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
FOLDER = SHARED / "duality_sample" / "Offroad_Segmentation_Training_Dataset" / "train" / "Color_Images"


def main() -> None:
    import torch

    from desertseg.data.decoding import read_image
    from desertseg.inference.outputs import predict_paths
    from desertseg.inference.predict import Predictor

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folder", type=Path, default=FOLDER)
    ap.add_argument("--backends", default="auto,torch", help="comma-separated: auto, torch, onnx, int8, pt2e")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=4)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    images = sorted(p for p in args.folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    rows = []
    for backend in args.backends.split(","):
        for workers in (0, 1):
            # As `desertseg predict --workers N` loads it: `auto` picks for the pipeline or not.
            predictor = Predictor.from_checkpoint(backend=backend, device="cpu", pipelined=workers > 0)
            predictor.predict_batch([read_image(images[0])])  # warm-up
            model_before, images_before = predictor.timing.model, predictor.timing.images
            with tempfile.TemporaryDirectory() as out:
                t0 = time.perf_counter()
                summary = predict_paths(predictor, [str(args.folder)], Path(out) / "run", batch_size=args.batch_size, progress=False, workers=workers)
                seconds = time.perf_counter() - t0
            n = predictor.timing.images - images_before
            rows.append(
                {
                    "backend": predictor.backend,
                    "requested": backend,
                    "workers": workers,
                    "images": summary.written,
                    "seconds": round(seconds, 2),
                    "images_per_s": round(summary.written / seconds, 2),
                    "model_rate_images_per_s": round(n / (predictor.timing.model - model_before), 2),
                }
            )
    print(json.dumps({"folder": str(args.folder), "threads": args.threads, "batch_size": args.batch_size, "device": "cpu", "results": rows}, indent=2))


if __name__ == "__main__":
    main()
