"""Train the seed preset and the default preset with the SAME wall-clock budget on the shared
train split, evaluate both on the unseen-environment split at full resolution, print JSON.

    python benchmarks/seed_vs_default.py --budget-min 15

Targets (issue 10): default all-10 mIoU >= 2x the seed's at equal budget, and default
present-class mIoU >= 0.45 on the unseen split. Both are printed, not asserted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "duality_sample"


def run(preset: str, budget_min: float, data: Path, unseen: Path, out: Path, threads: int) -> dict:
    import torch

    from desertseg.data.samples import find_samples
    from desertseg.evaluation.loop import evaluate
    from desertseg.inference.predict import Predictor
    from desertseg.training.config import load_config
    from desertseg.training.fit import train

    torch.set_num_threads(threads)
    # Each preset keeps its own schedule; the budget stops whichever runs longer.
    config = load_config(preset, {"max_time": budget_min})
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # stdout carries the JSON only
        train(config, data, out / preset, progress=False)
    train_s = time.perf_counter() - t0
    samples, _ = find_samples(unseen)
    # The budget stops training mid-schedule, so the last weights are what the budget bought;
    # best-by-val picks by the training environments, which says little about an unseen one.
    predictor = Predictor.from_checkpoint(out / preset / "last.safetensors", device="cpu")
    r = evaluate(predictor, samples, progress=False, keep_per_image=False)
    epochs = predictor.metadata["metrics"].get("epoch")
    return {
        "preset": preset,
        "model": config.model,
        "size": config.size,
        "train_seconds": round(train_s, 1),
        "epochs_completed": (epochs or 0) + 1,
        "seconds_per_epoch": round(train_s / ((epochs or 0) + 1), 1),
        "pretrained_setting": predictor.metadata["config"].get("pretrained"),  # "auto": ImageNet weights only if cached or downloadable
        "unseen_miou_all": round(r["miou_all"], 4),
        "unseen_miou_present": round(r["miou_present"], 4),
        "unseen_pixel_accuracy": round(r["pixel_accuracy"], 4),
        "unseen_per_class_iou": {c["class"]: None if c["iou"] is None else round(c["iou"], 4) for c in r["per_class"]},
        "latency_ms_end_to_end": round(r["latency_ms"]["end_to_end_mean"], 1),
        "latency_ms_model": round(r["latency_ms"]["model_mean"], 1),
        "device": r["latency_ms"]["device"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget-min", type=float, default=15.0, help="training minutes per preset")
    ap.add_argument("--data", type=Path, default=SHARED / "Offroad_Segmentation_Training_Dataset")
    ap.add_argument("--unseen", type=Path, default=SHARED / "Offroad_Segmentation_testImages")
    ap.add_argument("--out", type=Path, default=Path("runs/seed_vs_default"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--presets", default="seed,default")
    args = ap.parse_args()
    results = {p: run(p, args.budget_min, args.data, args.unseen, args.out, args.threads) for p in args.presets.split(",")}
    summary = {"budget_minutes_each": args.budget_min, "results": results}
    if "seed" in results and "default" in results:
        s, d = results["seed"], results["default"]
        ratio = d["unseen_miou_all"] / s["unseen_miou_all"] if s["unseen_miou_all"] else None
        summary["default_over_seed_miou_all"] = None if ratio is None else round(ratio, 2)
        summary["target_2x_met"] = bool(ratio and ratio >= 2)
        summary["target_present_0.45_met"] = d["unseen_miou_present"] >= 0.45
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
