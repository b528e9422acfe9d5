"""A GPU check of the whole tool on the shared data: train 2 epochs with bf16 on CUDA, resume
for a third, evaluate at full resolution, export to ONNX and benchmark the CUDA path (fp32 and
bf16, batch 1 and 8). Prints one JSON document; every step reports its own status, so a failed
step does not hide the others (the exit code is 1 if any failed).

    python benchmarks/gpu_check.py                     # on a machine with CUDA
    python benchmarks/gpu_check.py --device cpu        # the same steps on CPU (a smoke run)

Nothing in CI depends on it; run it when a GPU machine is at hand and record the JSON in the
README.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "duality_sample" / "Offroad_Segmentation_Training_Dataset"


def step(report: dict, name: str, fn):
    """Run one step; record its result or its error and traceback, and its seconds."""
    t0 = time.perf_counter()
    try:
        report[name] = {"ok": True, **fn()}
    except Exception as e:  # a check script reports every failure and goes on
        report[name] = {"ok": False, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(limit=6)}
    report[name]["seconds"] = round(time.perf_counter() - t0, 2)
    return report[name]


def main() -> None:
    import torch

    from desertseg.inference.runtime import describe_device
    from desertseg.training.config import load_config

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA, help="dataset root with train/ and val/")
    ap.add_argument("--device", default="cuda", help="cuda (the check) or cpu (a smoke run)")
    ap.add_argument("--out", type=Path, help="run folder (default: a temporary one)")
    ap.add_argument("--size", default="480x270", help="training size WIDTHxHEIGHT")
    args = ap.parse_args()
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here; pass --device cpu for a smoke run")
    out = args.out or Path(tempfile.mkdtemp(prefix="desertseg-gpu-check-")) / "run"
    report: dict = {"device": describe_device(torch.device(args.device)), "torch": torch.__version__, "run": str(out)}
    precision = "bf16-mixed" if cuda and torch.cuda.is_bf16_supported() else "32-true"
    config = load_config("default", {"epochs": 2, "size": args.size, "precision": precision, "val_split": "val"})
    launch = {"accelerator": "gpu" if cuda else "cpu", "devices": 1, "progress": False}

    def train_two():
        from desertseg.training.fit import train

        result = train(config, args.data, out, **launch)
        return {"precision": precision, "result": result}

    def resume_third():
        from desertseg.training.fit import train

        # Extend the finished run by one epoch: the resume path continues from last.ckpt.
        saved = out / "config.json"
        doc = json.loads(saved.read_text())
        doc["epochs"] = 3
        saved.write_text(json.dumps(doc, indent=2))
        result = train(config, args.data, out, resume=True, **launch)
        if result.get("last", {}).get("epoch") != 2:
            raise RuntimeError(f"resumed run ended at epoch {result.get('last', {}).get('epoch')}, expected 2")
        return {"result": result}

    def evaluate_val():
        from desertseg.data.samples import find_samples
        from desertseg.evaluation.loop import evaluate
        from desertseg.inference.predict import Predictor

        predictor = Predictor.from_checkpoint(out / "last.safetensors", device=args.device, backend="torch")
        samples, _ = find_samples(args.data, "val")
        r = evaluate(predictor, samples, progress=False, keep_per_image=False)
        return {"images": r["images"], "miou_all": round(r["miou_all"], 4), "miou_present": round(r["miou_present"], 4), "latency_ms": r["latency_ms"]}

    def export():
        from desertseg.data.decoding import read_image
        from desertseg.data.samples import find_samples
        from desertseg.inference.export import export_onnx

        samples, _ = find_samples(args.data, "val")
        path, parity, exporter = export_onnx(out / "last.safetensors", out / "last.onnx", check_images=[read_image(s.image) for s in samples[:2]])
        return {"file": str(path), "exporter": exporter, "parity": None if parity is None else vars(parity)}

    def benchmark():
        from desertseg.data.samples import find_samples
        from desertseg.inference.benchmark import run_benchmark

        paths = [s.image for s in find_samples(args.data, "val")[0][:16]]
        runs = {}
        for bf16 in (False, True) if cuda else (False,):
            r = run_benchmark(out / "last.safetensors", paths, backends=("torch",), batch_sizes=(1, 8), images=16, device=args.device, bf16=bf16)
            runs["bf16" if bf16 else "fp32"] = r["results"]
        return {"runs": runs}

    for name, fn in (("train_2_epochs", train_two), ("resume_to_3", resume_third), ("evaluate_val", evaluate_val), ("export_onnx", export), ("benchmark", benchmark)):
        print(f"gpu_check: {name} ...", file=sys.stderr)
        step(report, name, fn)
    report["ok"] = all(v["ok"] for v in report.values() if isinstance(v, dict) and "ok" in v)
    print(json.dumps(report, indent=1, default=str))
    sys.exit(0 if report["ok"] else 1)


if __name__ == "__main__":
    main()
