"""Adaptation to an unseen environment, under leave-one-environment-out (issue 13): without its
labels (test-time adaptation), and, as what a few labelled frames of the new desert are worth,
with them.

Reuses the folds that ``benchmarks/generalisation.py`` trained (``OUT/<fold>-seed<N>/run/
last.safetensors``). Each held-out environment's frames, sorted by name, are cut in two
halves (the first and second half of its sequence, so that adaptation and scoring share no
neighbouring frames); each half is scored by the model adapted on the *other* half's images,
without their labels. The two halves' confusion matrices are summed, so every frame is scored
once, by a model that never saw it, and the fold's mIoU compares with the unadapted model's on
the same frames. Prints JSON: per method, fold and seed the all-10 and present-class mIoU, the
mean over folds per seed, the mean and spread over seeds, and the paired gain over ``none``.

    python benchmarks/adaptation.py --runs runs/loeo/default --methods none,bn,bn0.5,tent

Methods:
    none    the trained model as it is.
    bnA     BatchNorm statistics re-estimated on the target half (AdaBN, Li et al. 2016) and
            mixed with the training statistics: A * target + (1 - A) * source (``bn`` = bn1).
    tent    entropy minimisation of the BatchNorm affine parameters on the target half
            (Tent, Wang et al. 2021: batch statistics, Adam 1e-3, ``--tent-steps`` batches of
            8), then the statistics re-estimated as ``bn``.
    labels  fine-tuned with the other half's *labels* through the training engine
            (``desertseg train --init MODEL``: the fold's recipe for ``--label-steps``
            optimiser steps, no validation, last epoch): what labelling frames of the new
            desert buys, the mark that no method without labels could pass. ``labelsN``: only
            N frames of the other half, evenly spaced, are labelled. Runs are kept in the
            fold's folder (``labelsN-STEPSsteps-half<K>``) and not trained again.
    joint   the fold's recipe trained again from ImageNet weights on its training
            environments *plus* the other half with its labels: the held-out environment as
            one more training environment, half of it (``joint-half<K>``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "duality_sample"


def _inputs(model_meta: dict, samples) -> torch.Tensor:
    """The samples' images as the model sees them: ``(N, 3, h, w)`` normalised, at its input size."""
    from desertseg.data.decoding import read_image
    from desertseg.data.transforms import normalize
    from desertseg.models.checkpoint import input_normalisation

    mean, std = input_normalisation(model_meta, "model")
    x = torch.from_numpy(np.stack([read_image(s.image) for s in samples])).permute(0, 3, 1, 2)
    x = F.interpolate(x, size=tuple(model_meta["input_size"]), mode="bilinear", antialias=True, align_corners=False)
    return normalize(x.float().div_(255), mean, std)


def _batch_norms(model: torch.nn.Module) -> list[torch.nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@torch.no_grad()
def adapt_bn(model: torch.nn.Module, x: torch.Tensor, alpha: float = 1.0, batch_size: int = 8) -> torch.nn.Module:
    """Re-estimate every BatchNorm's statistics on ``x`` (a cumulative average over batches),
    then mix them with the trained ones: ``alpha * target + (1 - alpha) * source``."""
    norms = _batch_norms(model)
    source = [(m.running_mean.clone(), m.running_var.clone()) for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch counts alike
    model.eval()
    for m in norms:
        m.train()
    for i in range(0, len(x), batch_size):
        model(x[i : i + batch_size])
    model.eval()
    for m, (mu, var) in zip(norms, source):
        m.running_mean.mul_(alpha).add_(mu, alpha=1 - alpha)
        m.running_var.mul_(alpha).add_(var, alpha=1 - alpha)
    return model


def adapt_tent(model: torch.nn.Module, x: torch.Tensor, steps: int = 20, lr: float = 1e-3, batch_size: int = 8, seed: int = 0) -> torch.nn.Module:
    """Tent: minimise the mean per-pixel prediction entropy on ``x`` over the BatchNorm affine
    parameters only, with batch statistics; then re-estimate the statistics on ``x``."""
    norms = _batch_norms(model)
    for p in model.parameters():
        p.requires_grad_(False)
    params = [p for m in norms for p in (m.weight, m.bias) if p is not None]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=lr)
    g = torch.Generator().manual_seed(seed)
    model.eval()
    for m in norms:
        m.train()
    for _ in range(steps):
        idx = torch.randperm(len(x), generator=g)[:batch_size]
        logp = model(x[idx]).log_softmax(1)
        loss = -(logp.exp() * logp).sum(1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return adapt_bn(model, x)


def adapted(path: Path, method: str, x: torch.Tensor, tent_steps: int):
    """The fold's model loaded from ``path`` and adapted with ``method`` on inputs ``x``."""
    from desertseg.models.checkpoint import load_model

    model, meta = load_model(path)
    if method.startswith("bn"):
        adapt_bn(model, x, alpha=float(method[2:] or 1))
    elif method == "tent":
        adapt_tent(model, x, steps=tent_steps)
    elif method != "none":
        raise SystemExit(f"unknown method {method!r} (none, bn, bnA, tent, labels, labelsN, joint)")
    return model, meta


def labelled_frames(half: list, n: int) -> list:
    """``n`` frames of ``half`` spread evenly over it (all of it for 0 or n >= its length)."""
    if not n or n >= len(half):
        return list(half)
    return [half[round(i * (len(half) - 1) / max(n - 1, 1))] for i in range(n)]


def retrained(path: Path, samples, data: Path, run_dir: Path, **changes) -> Path:
    """The fold model ``path``'s recipe, with ``changes``, trained on ``samples`` into
    ``run_dir`` (no validation, last epoch) unless it is there already; its model file."""
    from dataclasses import fields

    from desertseg.data.splits import write_split_file
    from desertseg.models.checkpoint import read_metadata
    from desertseg.training.config import TrainConfig
    from desertseg.training.fit import train

    done = run_dir / "last.safetensors"
    if done.is_file():
        return done
    split = write_split_file(run_dir.with_name(run_dir.name + "-split.json"), samples, data, "train")
    recipe = {k: v for k, v in read_metadata(path)["config"].items() if k in {f.name for f in fields(TrainConfig)}}
    config = TrainConfig(**{**recipe, **changes, "train_split": str(split), "val_split": "none"})
    with contextlib.redirect_stdout(sys.stderr):  # stdout carries the JSON only
        train(config, data, run_dir, resume=run_dir.exists(), progress=False)
    return done


def finetuned(path: Path, samples, data: Path, run_dir: Path, steps: int) -> Path:
    """The model file of ``path`` fine-tuned on the labelled ``samples`` with its own recipe
    (``init``) for about ``steps`` optimiser steps."""
    from desertseg.models.checkpoint import read_metadata

    batch = read_metadata(path)["config"].get("batch_size", 8)
    per_epoch = len(samples) // batch if len(samples) > batch else 1  # training drops a last partial batch
    return retrained(path, samples, data, run_dir, init=str(path), epochs=-(-steps // per_epoch))


def score_fold(fold_dir: Path, held_out: str, data: Path, methods: list[str], tent_steps: int, label_steps: int = 60) -> dict:
    """Each method's cross-fitted scores on the held-out environment of one trained fold."""
    from desertseg.data.splits import make_splits
    from desertseg.evaluation.loop import evaluate
    from desertseg.inference.predict import Predictor
    from desertseg.metrics import summarize
    from desertseg.models.checkpoint import load_model, read_metadata

    path = fold_dir / "run" / "last.safetensors"
    meta = read_metadata(path)
    splits = make_splits(data, [held_out])[0]
    frames = sorted(splits["val"], key=lambda s: s.name)
    halves = [frames[: len(frames) // 2], frames[len(frames) // 2 :]]
    inputs = [_inputs(meta, h) for h in halves]
    out = {}
    for method in methods:
        cm = 0
        for k in (0, 1):  # adapt on one half, score the other
            if method.startswith("labels"):
                labelled = labelled_frames(halves[1 - k], int(method[6:] or 0))
                model, meta = load_model(finetuned(path, labelled, data, fold_dir / f"{method}-{label_steps}steps-half{1 - k}", label_steps))
            elif method == "joint":
                model, meta = load_model(retrained(path, splits["train"] + halves[1 - k], data, fold_dir / f"joint-half{1 - k}"))
            else:
                model, meta = adapted(path, method, inputs[1 - k], tent_steps)
            predictor = Predictor(model, {**meta, "path": str(path)}, device="cpu", backend="torch")
            cm = cm + np.asarray(evaluate(predictor, halves[k], progress=False, keep_per_image=False)["confusion_matrix"])
        s = summarize(cm)
        out[method] = {"miou_all": round(s["miou_all"], 4), "miou_present": round(s["miou_present"], 4)}
        print(f"{fold_dir.name} {method}: {out[method]}", file=sys.stderr)
        out[method]["per_class_iou"] = {c["class"]: None if c["iou"] is None else round(c["iou"], 4) for c in s["per_class"]}
    return out


def _spread(values: list[float]) -> dict:
    return {"mean": round(statistics.fmean(values), 4), "std": round(statistics.stdev(values), 4) if len(values) > 1 else None, "n": len(values)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=Path, required=True, help="a generalisation.py results folder (holds <fold>-seed<N>/run)")
    ap.add_argument("--methods", default="none,bn,bn0.5,tent")
    ap.add_argument("--folds", default="cc,mt0,mt1,w0")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--data", type=Path, default=SHARED)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tent-steps", type=int, default=20)
    ap.add_argument("--label-steps", type=int, default=60, help="optimiser steps of the labels methods' fine-tuning")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    methods, folds, seeds = args.methods.split(","), args.folds.split(","), [int(s) for s in args.seeds.split(",")]
    scores = {
        (f, s): score_fold(args.runs / f"{f}-seed{s}", f, args.data, methods, args.tent_steps, args.label_steps)
        for s in seeds
        for f in folds
        if (args.runs / f"{f}-seed{s}" / "run" / "last.safetensors").is_file()
    }
    seeds = [s for s in seeds if all((f, s) in scores for f in folds)]
    result = {
        "runs": str(args.runs),
        "halves": "first / second half of the sorted frames, each scored after adapting on the other",
        "tent_steps": args.tent_steps,
        "label_steps": args.label_steps,
        "methods": {},
    }
    for m in methods:
        per_seed = {s: {k: statistics.fmean(scores[f, s][m][k] for f in folds) for k in ("miou_all", "miou_present")} for s in seeds}
        gain = [per_seed[s]["miou_all"] - statistics.fmean(scores[f, s]["none"]["miou_all"] for f in folds) for s in seeds] if "none" in methods else []
        result["methods"][m] = {
            "per_fold": {f: {str(s): scores[f, s][m] for s in seeds} for f in folds},
            "per_fold_mean_all": {f: _spread([scores[f, s][m]["miou_all"] for s in seeds]) for f in folds} if seeds else None,
            "mean_over_folds": {k: _spread([v[k] for v in per_seed.values()]) for k in ("miou_all", "miou_present")} if seeds else None,
            "gain_over_none_all": _spread(gain) if gain else None,
        }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
