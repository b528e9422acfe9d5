"""Image decoders available as wheels, on the shared real files: time per file and whether the
result is exactly Pillow's (the reference: desertseg trained on Pillow-decoded images). Prints JSON.

    python benchmarks/decoders.py --threads 2 --repeat 3

Files: the 960x540 RGB PNGs and 16-bit mask PNGs of the unseen Duality split, and YCOR's
JPEG photos. Decoders: Pillow, OpenCV (``cv2.imdecode``), pyspng (PNG) and simplejpeg
(JPEG), each when installed. A decoder that is faster but not exact on every file is not
used: a different pixel is a different input to the model.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path

import numpy as np

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def pillow(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB") if im.mode not in ("I;16", "I", "L") else im)


def opencv(data: bytes) -> np.ndarray:
    import cv2

    out = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    return out[..., ::-1] if out.ndim == 3 else out  # BGR -> RGB


def pyspng_decode(data: bytes) -> np.ndarray:
    import pyspng

    return pyspng.load(data)


def simplejpeg_decode(data: bytes) -> np.ndarray:
    import simplejpeg

    return simplejpeg.decode_jpeg(data, colorspace="RGB")


DECODERS = {"pillow": (pillow, "PIL"), "opencv": (opencv, "cv2"), "pyspng": (pyspng_decode, "pyspng"), "simplejpeg": (simplejpeg_decode, "simplejpeg")}
KINDS = {"png_rgb": ("pillow", "opencv", "pyspng"), "png_mask16": ("pillow", "opencv", "pyspng"), "jpeg": ("pillow", "opencv", "simplejpeg")}


def installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--files", type=int, default=30, help="files per kind")
    args = ap.parse_args()
    if installed("cv2"):
        import cv2

        cv2.setNumThreads(args.threads)
    unseen = SHARED / "duality_sample" / "Offroad_Segmentation_testImages"
    files = {
        "png_rgb": sorted((unseen / "Color_Images").glob("*.png"))[: args.files],
        "png_mask16": sorted((unseen / "Segmentation").glob("*.png"))[: args.files],
        "jpeg": sorted((SHARED / "ycor_sample" / "images").glob("*.jpg"))[: args.files],
    }
    report = {"threads": args.threads, "repeat": args.repeat, "kinds": {}}
    for kind, names in KINDS.items():
        blobs = [p.read_bytes() for p in files[kind]]
        if not blobs:
            continue
        reference = [pillow(b) for b in blobs]
        rows = {}
        for name in names:
            decode, module = DECODERS[name]
            if not installed(module):
                rows[name] = {"installed": False}
                continue
            try:
                outs = [decode(b) for b in blobs]
            except Exception as e:  # a decoder that cannot read the kind at all
                rows[name] = {"installed": True, "error": f"{type(e).__name__}: {e}"[:200]}
                continue
            exact = all(o.shape == r.shape and o.dtype == r.dtype and np.array_equal(o, r) for o, r in zip(outs, reference))
            seconds = []
            for _ in range(args.repeat):  # interleaved repeats, median per file
                for b in blobs:
                    t0 = time.perf_counter()
                    decode(b)
                    seconds.append(time.perf_counter() - t0)
            rows[name] = {"installed": True, "exact_vs_pillow": exact, "p50_ms": round(1000 * float(np.median(seconds)), 2), "dtype": str(outs[0].dtype), "shape": list(outs[0].shape)}
        base = rows["pillow"]["p50_ms"]
        for r in rows.values():
            if "p50_ms" in r:
                r["speedup_vs_pillow"] = round(base / r["p50_ms"], 2)
        report["kinds"][kind] = {"files": len(blobs), "decoders": rows}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
