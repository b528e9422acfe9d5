"""Whether a backend's model call lets other Python threads run: a folder `predict` decodes
and writes in threads beside the model, so a backend that holds the GIL gains nothing from
that pipeline. Prints JSON: iterations per second of a pure-Python loop in a second thread
while the main thread sleeps, and while it runs the bundled model with each backend.

    python benchmarks/pt2e_gil.py --threads 2 --backends pt2e,int8,torch

pt2e must have been compiled for this machine at that thread count (`desertseg compile`).
"""

from __future__ import annotations

import argparse
import json
import threading
import time


def loop_rate(work) -> float:
    """Iterations per second of a Python counting loop in another thread while ``work()`` runs."""
    stop, counts = threading.Event(), []

    def count():
        n = 0
        while not stop.is_set():
            n += 1
        counts.append(n)

    thread = threading.Thread(target=count)
    thread.start()
    t0 = time.perf_counter()
    work()
    seconds = time.perf_counter() - t0
    stop.set()
    thread.join()
    return counts[0] / seconds


def main() -> None:
    import torch

    from desertseg.inference.predict import Predictor

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backends", default="pt2e,int8,torch")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=8, help="model calls per measurement")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    idle = loop_rate(lambda: time.sleep(0.5))
    rows = []
    for backend in args.backends.split(","):
        predictor = Predictor.from_checkpoint(backend=backend, device="cpu")
        x = torch.rand(1, 3, *predictor.input_size)
        predictor.runner(x)  # warm-up
        rate = loop_rate(lambda run=predictor.runner, x=x: [run(x) for _ in range(args.runs)])
        rows.append({"backend": predictor.backend, "loop_per_s": round(rate), "share_of_idle": round(rate / idle, 3)})
    print(json.dumps({"threads": args.threads, "idle_loop_per_s": round(idle), "results": rows}, indent=2))


if __name__ == "__main__":
    main()
