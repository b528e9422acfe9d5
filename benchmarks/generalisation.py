"""Leave-one-environment-out: how well does a recipe transfer to a desert it never saw?

Pools every shared Duality pair (train + val + testImages: environments cc, mt0, mt1, w0),
and for each environment trains the preset on the other three and scores the held-out one at
full resolution with one confusion matrix. Nothing is chosen on the held-out environment:
there is no validation pass, the last epoch is the model. Prints JSON with each fold's all-10
and present-class mIoU and per-class IoU, the mean over folds per seed, and the mean and
spread over seeds. Every recipe decision is made on the mean over folds.

    python benchmarks/generalisation.py --preset default --fast --seeds 0
    python benchmarks/generalisation.py --preset default --seeds 0,1,2 --out runs/loeo/default
    python benchmarks/generalisation.py --preset default --fast --set encoder_lr_mult=0 --name frozen
    python benchmarks/generalisation.py --table runs/loeo/*/summary.json     # the protocol table

``--fast`` is the screening setting (256x144, 10 epochs; the recipe's other keys unchanged).
Finished folds are kept in ``OUT/<fold>-seed<N>/fold.json`` and not trained again, so an
interrupted benchmark continues where it stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "duality_sample"
FAST = {"size": "256x144", "epochs": 10}


def tta_tag(flip: bool, scales: tuple[float, ...]) -> str:
    """``flip``, ``ms0.75-1-1.25``, both joined by ``+``, or ``""`` without test-time augmentation."""
    parts = (["flip"] if flip else []) + (["ms" + "-".join(f"{x:g}" for x in scales)] if tuple(scales) != (1.0,) else [])
    return "+".join(parts)


def same_recipe(saved: dict, config) -> bool:
    """Whether a fold saved earlier trained ``config``. A key the saved config lacks was added
    to TrainConfig later; it matches when ``config`` holds that key's default (the behaviour
    before the key existed), so adding a key does not retrain every finished fold."""
    from dataclasses import MISSING, fields

    defaults = {f.name: f.default if f.default is not MISSING else f.default_factory() for f in fields(config)}
    return all(saved[k] == v if k in saved else v == defaults[k] for k, v in asdict(config).items())


def run_fold(config, data: Path, held_out: str, out: Path, threads: int, flip: bool = False, scales: tuple[float, ...] = (1.0,)) -> dict:
    """Train ``config`` on every environment but ``held_out``, score ``held_out`` (with
    ``flip`` / ``scales``: test-time augmentation, reusing a model already trained)."""
    import torch

    from desertseg.data.splits import make_splits, write_split_file
    from desertseg.evaluation.loop import evaluate
    from desertseg.inference.predict import Predictor
    from desertseg.training.fit import train

    config.train_split, config.val_split = str(out / "train_split.json"), "none"
    tag = tta_tag(flip, scales)
    done = out / (f"fold-{tag}.json" if tag else "fold.json")
    if done.is_file() and same_recipe(json.loads(done.read_text()).get("config") or {}, config):
        return json.loads(done.read_text())
    torch.set_num_threads(threads)
    splits, _ = make_splits(data, [held_out])
    write_split_file(out / "train_split.json", splits["train"], data, "train")
    run_dir = out / "run"
    saved = run_dir / "config.json"
    if saved.is_file() and not same_recipe(json.loads(saved.read_text()), config):
        raise SystemExit(f"{run_dir} holds a run of another recipe; give this one its own --out or --name")
    trained = (run_dir / "last.safetensors").is_file() and saved.is_file()
    t0 = time.perf_counter()
    if not trained:
        with contextlib.redirect_stdout(sys.stderr):  # stdout carries the JSON only
            train(config, data, run_dir, resume=run_dir.exists(), progress=False)
    train_s = None if trained else round(time.perf_counter() - t0, 1)
    predictor = Predictor.from_checkpoint(run_dir / "last.safetensors", device="cpu", backend="torch", flip=flip, scales=tuple(scales))
    r = evaluate(predictor, splits["val"], progress=False, keep_per_image=False)
    result = {
        "held_out": held_out,
        "seed": config.seed,
        "train_images": len(splits["train"]),
        "test_images": r["images"],
        "train_seconds": train_s,
        "tta": tag or None,
        "miou_all": round(r["miou_all"], 4),
        "miou_present": round(r["miou_present"], 4),
        "pixel_accuracy": round(r["pixel_accuracy"], 4),
        "per_class_iou": {c["class"]: None if c["iou"] is None else round(c["iou"], 4) for c in r["per_class"]},
        "confusion_matrix": r["confusion_matrix"],
        "config": asdict(config),
    }
    done.write_text(json.dumps(result, indent=1))
    return result


def _spread(values: list[float]) -> dict:
    return {"mean": round(statistics.fmean(values), 4), "std": round(statistics.stdev(values), 4) if len(values) > 1 else None, "n": len(values)}


def summarize(folds: list[dict]) -> dict:
    """Mean over folds for each seed, then mean and std of those means over seeds; per fold
    the mean and std over seeds."""
    seeds = sorted({f["seed"] for f in folds})
    envs = sorted({f["held_out"] for f in folds})
    per_seed = {}
    for s in seeds:
        mine = [f for f in folds if f["seed"] == s]
        if len(mine) == len(envs):  # a seed counts once all its folds are in
            per_seed[s] = {k: statistics.fmean(f[k] for f in mine) for k in ("miou_all", "miou_present", "pixel_accuracy")}
    summary = {
        "mean_over_folds": {k: _spread([v[k] for v in per_seed.values()]) for k in ("miou_all", "miou_present", "pixel_accuracy")} if per_seed else None,
        "per_seed_mean_over_folds": {str(s): {k: round(v, 4) for k, v in m.items()} for s, m in per_seed.items()},
        "per_fold": {},
    }
    for env in envs:
        mine = [f for f in folds if f["held_out"] == env]
        classes = mine[0]["per_class_iou"]
        summary["per_fold"][env] = {
            "miou_all": _spread([f["miou_all"] for f in mine]),
            "miou_present": _spread([f["miou_present"] for f in mine]),
            "per_class_iou_mean": {c: (round(statistics.fmean(vals), 4) if vals else None) for c in classes for vals in [[f["per_class_iou"][c] for f in mine if f["per_class_iou"][c] is not None]]},
        }
    return summary


def table(summaries: list[Path]) -> str:
    """The protocol table (recipe x fold, all-10 mIoU; mean over folds +- std over seeds) as Markdown."""
    docs = [json.loads(Path(p).read_text()) for p in summaries]
    envs = sorted({e for d in docs for e in d["per_fold"]})
    lines = ["| recipe | seeds | " + " | ".join(f"{e} held out" for e in envs) + " | mean all-10 | mean present |", "|---|---:|" + "---:|" * (len(envs) + 2)]
    fmt = lambda s: "" if s is None else f"{s['mean']:.4f}" + (f" ± {s['std']:.4f}" if s.get("std") is not None else "")  # noqa: E731
    for d in docs:
        folds = [fmt(d["per_fold"][e]["miou_all"]) if e in d["per_fold"] else "" for e in envs]
        m = d["mean_over_folds"] or {}
        seeds = ",".join(sorted({str(f["seed"]) for f in d["folds"]}))
        lines.append(f"| {d['recipe']} | {seeds} | " + " | ".join(folds) + f" | {fmt(m.get('miou_all'))} | {fmt(m.get('miou_present'))} |")
    return "\n".join(lines)


def main() -> None:
    from desertseg.training.config import load_config, merge_overrides

    if sys.argv[1:2] == ["--table"]:  # python benchmarks/generalisation.py --table runs/loeo/*/summary.json
        print(table([Path(p) for p in sys.argv[2:]]))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="default", help="preset name or .toml file")
    ap.add_argument("--fast", action="store_true", help=f"screening setting: {FAST}")
    ap.add_argument("--seeds", default="0", help="comma-separated seeds")
    ap.add_argument("--folds", default="cc,mt0,mt1,w0", help="environments to hold out, one fold each")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="key=value override (TOML value), repeatable")
    ap.add_argument("--name", help="label of this recipe in the output (default: the preset)")
    ap.add_argument("--data", type=Path, default=SHARED, help="folder holding every environment's pairs")
    ap.add_argument("--out", type=Path, help="results folder (default runs/loeo/NAME)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--flip", action="store_true", help="score with horizontal-flip test-time augmentation (reuses trained folds)")
    ap.add_argument("--scales", default="1", help="test-time scales of the input size, e.g. 0.75,1,1.25 (reuses trained folds)")
    args = ap.parse_args()

    name = args.name or Path(args.preset).stem + ("-fast" if args.fast else "")
    out = args.out or ROOT / "runs" / "loeo" / name
    overrides = merge_overrides(args.overrides, base=FAST if args.fast else None)
    scales = tuple(float(x) for x in args.scales.split(","))
    tag = tta_tag(args.flip, scales)
    folds = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        for env in args.folds.split(","):
            config = load_config(args.preset, {**overrides, "seed": seed})
            result = run_fold(config, args.data, env, out / f"{env}-seed{seed}", args.threads, args.flip, scales)
            print(f"{name}: held out {env}, seed {seed}: mIoU all {result['miou_all']:.4f}, present {result['miou_present']:.4f}", file=sys.stderr)
            folds.append(result)
    doc = {
        "recipe": name + (f" + {tag} TTA" if tag else ""),
        "preset": args.preset,
        "overrides": overrides,
        "protocol": "leave-one-environment-out over all shared Duality pairs; last epoch; full-resolution confusion matrix",
        "folds": [{k: v for k, v in f.items() if k not in ("confusion_matrix", "config")} for f in folds],
        **summarize(folds),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / (f"summary-{tag}.json" if tag else "summary.json")).write_text(json.dumps(doc, indent=1))
    print(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
