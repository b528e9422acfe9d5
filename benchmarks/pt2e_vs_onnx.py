"""PyTorch's PT2E int8 flow (torchao, X86InductorQuantizer, AOTInductor) against the shipped
onnxruntime QDQ int8 file, on the same model, images and threads (issue 15: "whichever measures
better here"). Prints JSON: each path's model-only p50 latency at the model's input size
(paths alternating image by image) and, at full resolution, its pixel agreement with float32
and its mIoU on the shared val and w0 splits; then end to end (file to full-resolution mask) the
published path, our default path and the PT2E model, alternating image by image.

    pip install "desertseg[pt2e]"
    python benchmarks/pt2e_vs_onnx.py --threads 2

PT2E as the ``pt2e`` backend builds it (:mod:`desertseg.inference.pt2e`): ``torch.export`` of
the float32 model, the x86 quantizer's default static config (int8 per-channel weights, uint8
activations), calibrated on the first ``--calibration`` images of train/Color_Images, sorted
(the shipped files' export spreads its 32 over the split), converted, then compiled ahead of time with
AOTInductor (freezing on, into a temporary folder), which is where int8 kernels replace the
quantize/dequantize pairs. Two PT2E models: one keeps float the same blocks as the shipped
onnxruntime file (read from its metadata), one quantizes every block.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "duality_sample"
SPLITS = {"val": SHARED / "Offroad_Segmentation_Training_Dataset" / "val", "w0": SHARED / "Offroad_Segmentation_testImages"}


def _pixels(path: Path, size: tuple[int, int]) -> torch.Tensor:
    """An image file as every path's runner takes it: the Predictor's resize, [0, 1] floats."""
    from desertseg.data.decoding import read_image
    from desertseg.inference.predict import Predictor

    return Predictor._batch(Predictor.__new__(Predictor), [read_image(path)], size)


def main() -> None:
    from desertseg.data.samples import list_samples
    from desertseg.data.transforms import normalize
    from desertseg.inference.pt2e import Pt2eRunner, compile_package, example_input
    from desertseg.inference.pt2e_export import calibrate
    from desertseg.inference.runtime import OnnxRunner, TorchRunner, onnx_session, session_metadata, upsample_argmax
    from desertseg.metrics import confusion_matrix, summarize
    from desertseg.models.checkpoint import default_model_path, input_normalisation, load_model

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", type=Path, default=default_model_path())
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calibration", type=int, default=32)
    ap.add_argument("--images", type=int, default=30, help="timed images per path, end to end")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, meta = load_model(args.checkpoint)
    size, (mean, std) = tuple(meta["input_size"]), input_normalisation(meta, args.checkpoint)
    train_images = sorted((SHARED / "Offroad_Segmentation_Training_Dataset" / "train" / "Color_Images").iterdir())
    int8_file = args.checkpoint.with_name(args.checkpoint.stem + ".int8.onnx")
    session = onnx_session(int8_file, threads=args.threads)
    float_blocks = [b["block"] for b in session_metadata(session, int8_file)["quantization"]["float_blocks"]]
    calibration = [normalize(_pixels(p, size), mean, std) for p in train_images[: args.calibration]]
    work = Path(tempfile.mkdtemp(prefix="pt2e-vs-onnx-"))

    def build(blocks: list[str], name: str) -> Pt2eRunner:
        package = compile_package(calibrate(model, meta, calibration, blocks), example_input(meta), work / f"{name}.pt2")
        return Pt2eRunner(package, example_input(meta), mean, std)

    t0 = time.perf_counter()
    pt2e = build(float_blocks, "float-blocks")
    build_s = time.perf_counter() - t0
    pt2e_all = build([], "all-int8")
    float32 = TorchRunner(model, torch.device("cpu"), mean, std)
    # Every runner takes the Predictor's [0, 1] batch and normalises it as its model expects.
    paths = {
        "float32 (torch eager)": float32,
        "int8 onnxruntime (shipped)": OnnxRunner(session),
        "int8 PT2E (inductor), the shipped file's float blocks": pt2e,
        "int8 PT2E (inductor), every block int8": pt2e_all,
    }
    times = {k: [] for k in paths}
    cms = {(k, split): 0 for k in paths for split in SPLITS}
    agree = {(k, split): [0, 0] for k in paths for split in SPLITS}
    from desertseg.classes import raw_to_index
    from desertseg.data.decoding import read_mask

    with torch.no_grad():
        for split, folder in SPLITS.items():
            for sample in list_samples(folder)[0]:
                x, target = _pixels(sample.image, size), raw_to_index(read_mask(sample.mask))
                masks = {}
                for name, run in paths.items():
                    t = time.perf_counter()
                    logits = run(x)
                    times[name].append(time.perf_counter() - t)
                    masks[name] = upsample_argmax(logits[0], target.shape)
                    cms[name, split] = cms[name, split] + confusion_matrix(masks[name], target)
                for name in paths:
                    agree[name, split][0] += int((masks[name] == masks["float32 (torch eager)"]).sum())
                    agree[name, split][1] += masks[name].size
                print(f"{split} {sample.name}", file=sys.stderr)
    out = {"checkpoint": str(args.checkpoint), "threads": args.threads, "input_size": list(size), "pt2e_build_s": round(build_s, 1), "float_blocks": float_blocks, "paths": {}}
    for name in paths:
        out["paths"][name] = {
            "model_p50_ms": round(1000 * float(np.median(times[name][2:])), 1),
            **{
                split: {"agreement_with_float32": round(agree[name, split][0] / agree[name, split][1], 4), **{k: round(summarize(cms[name, split])[k], 4) for k in ("miou_all", "miou_present")}}
                for split in SPLITS
            },
        }
    out["end_to_end"] = end_to_end(args.checkpoint, pt2e, size, args.images)
    print(json.dumps(out, indent=1))


def end_to_end(checkpoint: Path, pt2e, size, count: int) -> dict:
    """p50 ms per w0 PNG from file to full-resolution mask, three paths alternating image by
    image: the published path, our default path (``Predictor.from_checkpoint``, the shipped
    int8 file) and the same steps as the Predictor's with the PT2E model in place of onnxruntime."""
    from desertseg.data.decoding import read_image
    from desertseg.data.samples import list_samples
    from desertseg.inference.benchmark import PublishedPath
    from desertseg.inference.predict import Predictor
    from desertseg.inference.runtime import upsample_argmax

    published, default = PublishedPath(), Predictor.from_checkpoint(checkpoint, device="cpu")

    def ours_pt2e(path: Path) -> np.ndarray:
        image = read_image(path)
        logits = pt2e(Predictor._batch(Predictor.__new__(Predictor), [image], size))
        return upsample_argmax(logits[0], image.shape[:2])

    paths = {
        "published (DeepLabV3-ResNet50 256x256, PIL)": lambda p: published.predict_batch([published.decode(p)])[0].mask,
        f"default path ({default.backend})": lambda p: default.predict(read_image(p)).mask,
        "int8 PT2E (inductor), the shipped file's float blocks": ours_pt2e,
    }
    files = [s.image for s in list_samples(SPLITS["w0"])[0]]
    files = [files[i % len(files)] for i in range(count + 2)]
    times = {k: [] for k in paths}
    for f in files:
        for name, run in paths.items():
            t = time.perf_counter()
            run(f)
            times[name].append(time.perf_counter() - t)
    p50 = {k: 1000 * float(np.median(v[2:])) for k, v in times.items()}  # the first two warm up
    base = p50[next(iter(p50))]
    return {k: {"p50_ms": round(v, 1), "x_published": round(base / v, 2)} for k, v in p50.items()}


if __name__ == "__main__":
    main()
