"""Video in, overlay video out: every frame segmented, same frame rate and size, plus a CSV of
per-frame class pixel shares (for example to plot how much of a drive is sky or rocks).

OpenCV (the ``video`` extra) is imported only here, inside the functions, so the rest of the
package works without it.

Shape: frames are ``(H, W, 3)`` uint8 (OpenCV decodes BGR; the predictor gets RGB); the output
video is ``W x H`` at the input's frame rate.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from ..classes import CLASS_NAMES
from ..data.decoding import DataError
from ..errors import MissingExtra
from ..io import atomic_write

# Four-character codecs by output container; mp4v is available in every OpenCV build with FFmpeg.
FOURCC = {".mp4": "mp4v", ".mov": "mp4v", ".avi": "MJPG", ".mkv": "mp4v"}
# A container may announce a frame or two more than an intact file decodes to (a count estimated
# from the duration, frames skipped at the start), so a video counts as truncated only when more
# are missing.
FRAME_COUNT_SLACK = 2


def _cv2():
    try:
        import cv2
    except ImportError:
        raise MissingExtra("video needs OpenCV: pip install 'desertseg[video]'") from None
    return cv2


def open_video(path: Path | str):
    """Open a video for reading; returns ``(capture, fps, (width, height), frame_count_estimate)``."""
    cv2 = _cv2()
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "video file not found" if not path.exists() else "not a regular file")
    if path.stat().st_size == 0:
        raise DataError(path, "video file is empty (0 bytes)")
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise DataError(path, "cannot open video (unknown or corrupt format)")
    fps = cap.get(cv2.CAP_PROP_FPS)
    size = (int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT)))
    count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    if not fps or not np.isfinite(fps) or fps <= 0 or size[0] <= 0 or size[1] <= 0:
        cap.release()
        raise DataError(path, f"video has no usable frame rate or size (fps {fps}, {size[0]}x{size[1]}); it is probably corrupt")
    return cap, float(fps), size, max(count, 0)


def _write_overlay(predictor, cap, video_path: Path, out_path: Path, tmp: Path, fps: float, size: tuple[int, int], estimate: int, rows: list, opacity: float, batch_size: int, progress: bool) -> None:
    """Decode ``cap`` frame by frame, write overlays to ``tmp`` (renamed to ``out_path`` later) and one row of class
    shares per frame to ``rows`` (filled as frames are written, so a caller sees how far a
    damaged video got)."""
    from tqdm import tqdm

    from ..evaluation.visualize import class_shares, overlay

    cv2 = _cv2()
    width, height = size
    codec = FOURCC.get(out_path.suffix.lower(), "mp4v")
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*codec), fps, (width, height))
    if not writer.isOpened():
        raise OSError(f"{out_path}: cannot write video (codec {codec} unavailable in this OpenCV build)")

    def flush(frames: list[np.ndarray]) -> None:
        preds = predictor.predict_batch(frames)
        for rgb, pred in zip(frames, preds):
            writer.write(cv2.cvtColor(overlay(rgb, pred.mask, opacity), cv2.COLOR_RGB2BGR))
            i = len(rows)
            rows.append([i, round(i / fps, 4), *(f"{s:.6f}" for s in class_shares(pred.mask))])

    batch: list[np.ndarray] = []
    try:
        with tqdm(total=estimate or None, desc=video_path.name, unit="frame", disable=not progress) as bar:
            while True:
                ok, frame = cap.read()
                if not ok:
                    break
                if frame.shape[:2] != (height, width):
                    raise DataError(video_path, f"frame {len(rows) + len(batch)} is {frame.shape[1]}x{frame.shape[0]}, not {width}x{height}")
                batch.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
                if len(batch) == batch_size:
                    flush(batch)
                    bar.update(len(batch))
                    batch = []
            if batch:
                flush(batch)
                bar.update(len(batch))
        if not rows:
            raise DataError(video_path, "no frame could be decoded; the video is empty or corrupt")
    finally:
        writer.release()


def predict_video(
    predictor,
    video_path: Path | str,
    out_path: Path | str,
    csv_path: Path | str | None = None,
    opacity: float = 0.5,
    batch_size: int = 4,
    progress: bool = True,
) -> dict:
    """Write an overlay video of ``video_path`` to ``out_path`` (and class shares to ``csv_path``).

    The CSV has one row per frame: ``frame``, ``time_s``, then one column per class name with
    the share of that frame's pixels predicted as the class. Raises :class:`DataError` naming
    the file when the video cannot be opened or no frame can be decoded, and when decoding
    stops well before the frame count its container announces (a file cut off part-way, e.g.
    by an interrupted copy): that error comes after both outputs are written up to the last
    decoded frame, so the part that was there is kept, and says how far it got.

    Returns ``{"frames", "fps", "size": (width, height), "video", "csv"}``.
    """
    video_path, out_path = Path(video_path), Path(out_path)
    cap, fps, (width, height), estimate = open_video(video_path)
    rows: list[list] = []
    try:
        # The writer picks the container from the file name, so the temp name keeps the suffix.
        atomic_write(
            out_path, lambda tmp: _write_overlay(predictor, cap, video_path, out_path, tmp, fps, (width, height), estimate, rows, opacity, batch_size, progress), suffix=out_path.suffix or ".mp4"
        )
    finally:
        cap.release()

    if csv_path is not None:
        csv_path = Path(csv_path)

        def write_csv(tmp_csv: Path) -> None:
            with open(tmp_csv, "w", newline="") as f:
                w = csv.writer(f)
                w.writerow(["frame", "time_s", *CLASS_NAMES])
                w.writerows(rows)

        atomic_write(csv_path, write_csv)
    if estimate and len(rows) < estimate - FRAME_COUNT_SLACK:
        kept = ", ".join(str(p) for p in (out_path, csv_path) if p is not None)
        raise DataError(
            video_path, f"video is truncated or damaged: only {len(rows)} of the {estimate} frames its container announces could be decoded; the outputs of those {len(rows)} were written ({kept})"
        )
    return {"frames": len(rows), "fps": fps, "size": (width, height), "video": out_path, "csv": csv_path}
