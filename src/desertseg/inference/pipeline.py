"""A folder run as a pipeline: the next images decode and the last outputs are written in
background threads while the model runs on the current batch. Decoding (pyspng, simplejpeg,
zlib) and PNG encoding release the GIL, so on a CPU the stages overlap for real.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data.decoding import DataError, read_image


class Pipeline:
    """Decoding ahead and writing behind the model, each in its own thread (``workers`` >= 1),
    so a folder runs at nearly the model's own rate; with 0 workers every step runs in turn.

    Images are decoded in order, at most ``lookahead`` ahead; at most two batches of outputs
    wait to be written, so memory stays bounded on any folder. A write that fails raises here,
    in the caller's thread, as it would without the pipeline.
    """

    def __init__(self, workers: int):
        from concurrent.futures import ThreadPoolExecutor

        self.reader = ThreadPoolExecutor(1, "desertseg-read") if workers > 0 else None
        self.writer = ThreadPoolExecutor(1, "desertseg-write") if workers > 0 else None
        self.writes: list = []

    def __enter__(self) -> "Pipeline":
        return self

    def __exit__(self, *exc) -> None:
        try:
            for future, done, batch in self.writes:
                future.result()
                done(batch)
        finally:
            for pool in (self.reader, self.writer):
                if pool is not None:
                    pool.shutdown(wait=True, cancel_futures=True)

    @staticmethod
    def _read(path: Path) -> np.ndarray | DataError:
        try:
            return read_image(path)
        except DataError as e:
            return e

    def decoded(self, todo: list[tuple[Path, str]], lookahead: int):
        """``(name, image or the DataError that reading it raised)`` in order."""
        if self.reader is None:
            yield from ((name, self._read(path)) for path, name in todo)
            return
        from collections import deque

        queue: deque = deque()
        for path, name in todo:
            queue.append((name, self.reader.submit(self._read, path)))
            if len(queue) > lookahead:
                name0, future = queue.popleft()
                yield name0, future.result()
        while queue:
            name0, future = queue.popleft()
            yield name0, future.result()

    def write(self, fn, batch, preds, done) -> None:
        if self.writer is None:
            fn(batch, preds)
            done(batch)
            return
        self.writes.append((self.writer.submit(fn, batch, preds), done, batch))
        while len(self.writes) > 2 or (self.writes and self.writes[0][0].done()):
            future, finished, written = self.writes.pop(0)
            future.result()
            finished(written)
