"""An uploaded video on the dashboard: checked against the page's caps, segmented frame by
frame with progress, and re-encoded for browser playback."""

from __future__ import annotations

import os
import time
from pathlib import Path

from ..data.decoding import DataError
from .logic import app_max_pixels

# Videos longer than this many frames are refused (the page is for short clips; use `desertseg predict`).
DEFAULT_APP_MAX_FRAMES = 1800


class _CountingPredictor:
    """Wraps a predictor so each batch of video frames reports progress (``callback(frames_done)``)."""

    def __init__(self, predictor, callback):
        self._predictor, self._callback, self.done = predictor, callback, 0

    def predict_batch(self, frames, return_probs: bool = False):
        out = self._predictor.predict_batch(frames, return_probs)
        self.done += len(frames)
        self._callback(self.done)
        return out

    def __getattr__(self, name):
        return getattr(self._predictor, name)


def app_max_frames() -> int:
    try:
        return max(1, int(os.environ.get("DESERTSEG_APP_MAX_FRAMES", DEFAULT_APP_MAX_FRAMES)))
    except ValueError:
        return DEFAULT_APP_MAX_FRAMES


def video_overlay(predictor, data: bytes, name: str, work_dir: Path, opacity: float = 0.5, progress=None) -> dict:
    """Segment an uploaded video with :func:`desertseg.inference.video.predict_video`.

    ``progress(done, total)`` is called after each batch of frames (``total`` is the container's
    frame count estimate, 0 when unknown). Returns ``{"frames", "fps", "size", "mp4", "webm",
    "csv", "seconds"}``: the MP4 (mp4v) is for download, the WebM (VP8) for playback in browsers,
    which cannot play mp4v.
    """
    from ..inference.video import open_video, predict_video

    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    if not data:
        raise DataError(name, "file is empty (0 bytes)")
    src = work_dir / ("input" + (Path(name).suffix.lower() or ".mp4"))
    src.write_bytes(data)
    try:
        cap, fps, (w, h), total = open_video(src)
        cap.release()
        if total > app_max_frames():
            raise DataError(src, f"video has {total:,} frames, over this dashboard's cap of {app_max_frames():,}; trim it or use `desertseg predict`")
        if w * h > app_max_pixels():
            raise DataError(src, f"frames are {w}x{h} = {w * h:,} pixels, over this dashboard's cap of {app_max_pixels():,}")
        counting = _CountingPredictor(predictor, lambda done: progress(done, total) if progress else None)
        t0 = time.perf_counter()
        result = predict_video(counting, src, work_dir / "overlay.mp4", work_dir / "class_shares.csv", opacity=opacity, progress=False)
    except DataError as e:
        raise DataError(name, e.problem) from None
    result["seconds"] = time.perf_counter() - t0
    result["mp4"] = result.pop("video")
    result["webm"] = to_webm(result["mp4"], work_dir / "overlay.webm", result["fps"])
    return result


def to_webm(src: Path, dst: Path, fps: float) -> Path | None:
    """Re-encode a video as VP8 WebM for browser playback; ``None`` when OpenCV cannot write VP8."""
    import cv2

    cap = cv2.VideoCapture(str(src))
    writer = None
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            if writer is None:
                writer = cv2.VideoWriter(str(dst), cv2.VideoWriter_fourcc(*"VP80"), fps, (frame.shape[1], frame.shape[0]))
                if not writer.isOpened():
                    return None
            writer.write(frame)
    finally:
        cap.release()
        if writer is not None:
            writer.release()
    return dst if writer is not None and dst.is_file() and dst.stat().st_size > 0 else None
