"""Seconds from `Predictor.from_checkpoint()` to a predictor ready for its first image, in fresh
processes (as a user's command starts), for each backend in turn. Prints JSON.

    python benchmarks/load_time.py --threads 2 --backends int8,pt2e --runs 3

pt2e must have been compiled on this machine at that thread count (`desertseg compile`),
otherwise its first run includes the compile. `import_s` is importing torch and desertseg.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = """
import json, sys, time
t0 = time.perf_counter()
import torch
torch.set_num_threads(int(sys.argv[2]))
from desertseg.inference.predict import Predictor
t1 = time.perf_counter()
p = Predictor.from_checkpoint(device="cpu", backend=sys.argv[1])
print(json.dumps({"backend": p.backend, "import_s": round(t1 - t0, 2), "load_s": round(time.perf_counter() - t1, 2)}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backends", default="int8,pt2e")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3, help="fresh processes per backend, alternating")
    args = ap.parse_args()
    rows = []
    for _ in range(args.runs):
        for backend in args.backends.split(","):
            out = subprocess.run([sys.executable, "-c", CHILD, backend, str(args.threads)], capture_output=True, text=True, check=True).stdout
            rows.append(json.loads(out.strip().splitlines()[-1]))
    summary = {b: sorted(r["load_s"] for r in rows if r["backend"] == b) for b in {r["backend"] for r in rows}}
    print(json.dumps({"threads": args.threads, "runs": rows, "load_s_by_backend": summary}, indent=2))


if __name__ == "__main__":
    main()
