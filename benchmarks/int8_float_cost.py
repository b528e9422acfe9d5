"""What the float blocks of the shipped int8 model cost (issue 15): is keeping the sensitive
blocks float where the int8 path's time goes?

Times the model alone (onnxruntime, one 480x270 training image, p50 of rounds that take the
graphs in turn) for the float32 graph, the shipped int8 graph (its float blocks as its
metadata names them), the same model with every block int8 (which fails the parity guard),
and with each shipped float block alone kept float. All int8 graphs are quantized here from
the bundled float model, calibrated like the export on 32 training images (every third one; which
images does not change the timing). Prints JSON.

    python benchmarks/int8_float_cost.py --threads 2
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT.parent / "shared" / "data" / "duality_sample" / "Offroad_Segmentation_Training_Dataset" / "train" / "Color_Images"
WEIGHTS = ROOT / "src" / "desertseg" / "weights"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    import torch

    from desertseg.data.decoding import read_image, resize_image
    from desertseg.inference.quantize import _input, blocks, prepare_graph, quantize_graph
    from desertseg.inference.runtime import onnx_session, session_metadata
    from desertseg.models.checkpoint import load_model

    torch.set_num_threads(args.threads)
    model, meta = load_model(WEIGHTS / "default.safetensors")
    calib = [resize_image(read_image(p), tuple(meta["input_size"])) for p in sorted(TRAIN.iterdir())[::3][:32]]
    shipped = WEIGHTS / "default.int8.onnx"
    kept = [b["block"] for b in session_metadata(onnx_session(shipped), shipped)["quantization"]["float_blocks"]]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        f32 = prepare_graph(model, meta, work / "float32.onnx")
        parts, cache = dict(blocks(f32)), work / "calibration.json"

        def int8(float_blocks: list[str], name: str) -> Path:
            return quantize_graph(f32, work / f"{name}.onnx", calib, cache, exclude=[n for b in float_blocks for n in parts[b]])

        graphs = {"float32": f32, f"int8 shipped ({len(kept)} blocks float)": shipped, "int8, every block": int8([], "all")}
        graphs.update({f"int8, only {b} float": int8([b], b) for b in kept})
        sessions = {name: onnx_session(path, threads=args.threads) for name, path in graphs.items()}
        x = _input(calib[0])
        times: dict[str, list[float]] = {name: [] for name in sessions}
        for s in sessions.values():
            s.run(None, x)  # warm-up
        for _ in range(args.rounds):
            for name, s in sessions.items():
                t = time.perf_counter()
                s.run(None, x)
                times[name].append(time.perf_counter() - t)
    result = {"threads": args.threads, "input_size": meta["input_size"], "rounds": args.rounds, "model_p50_ms": {k: round(1000 * float(np.median(v)), 1) for k, v in times.items()}}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
