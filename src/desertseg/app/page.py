"""The desertseg dashboard, a Streamlit page: ``desertseg app [--checkpoint FILE] [--models-dir DIR]`` starts it.

Upload photos (and optionally their 16-bit ground-truth masks) to see the segmentation, its
confidence, class shares and, with ground truth, the same scores ``desertseg evaluate`` gives;
upload a short video for an overlay video. The sidebar (model and display choices) is
:mod:`desertseg.app.sidebar`; all computing lives in :mod:`desertseg.app.logic` (images,
scores), :mod:`~desertseg.app.models_dir` and :mod:`~desertseg.app.video_upload`; this file only
lays out the page.

Safe to share: models load once per process (``st.cache_resource``) and are shared, but
uploads and their results live in each browser session's own ``st.session_state``, never in a
process-wide cache; model files are loaded by name only from the ``--models-dir`` folder.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import streamlit as st

from desertseg.app import logic, sidebar, video_upload
from desertseg.classes import CLASSES, colorize
from desertseg.data.decoding import DataError
from desertseg.models.checkpoint import CheckpointError

ERRORS = (DataError, CheckpointError, OSError, ValueError, RuntimeError, KeyError)


def session_store() -> dict:
    """This browser session's decoded uploads and results (see :func:`desertseg.app.logic.remember`)."""
    return st.session_state.setdefault("results", {})


def segment(predictor, image, name: str):
    """Run the model on one image, with a spinner (only when it really runs: results are kept)."""
    with st.spinner(f"Segmenting {name} ..."):
        return logic.segment(predictor, image)


def image_key(name: str, digest: str) -> tuple:
    return ("image", name, digest, logic.app_max_pixels())


def read_uploads(files, gt_files, store: dict):
    """Decode uploads (once per session, kept in ``store``); bad files become messages.

    Returns ``[(name, digest, image, target|None)]``.
    """
    items = []
    for f in files:
        data = f.getvalue()
        digest = hashlib.sha1(data).hexdigest()
        try:
            image, notes = logic.remember(store, image_key(f.name, digest), logic.load_image, data, f.name)
        except DataError as e:
            st.error(str(e))
            continue
        for n in notes:
            st.warning(n)
        items.append([f.name, digest, image, None])
    gts = {g.name: g for g in gt_files}
    pairs, notes = logic.pair_masks([it[0] for it in items], list(gts))
    for n in notes:
        st.warning(n)
    for it in items:
        if it[0] in pairs:
            g = gts[pairs[it[0]]]
            try:
                it[3], mask_notes = logic.load_mask(g.getvalue(), g.name, it[2].shape[:2])
                for n in mask_notes:
                    st.warning(n)
            except DataError as e:
                st.error(str(e))
    return items


def colour_table(rows: list[dict]):
    """A table of per-class rows with a swatch of each class's colour in front."""
    import pandas as pd

    colours = {c.name: "rgb({}, {}, {})".format(*c.color) for c in CLASSES}
    df = pd.DataFrame(rows)
    df.insert(0, "colour", "")
    return df.style.apply(lambda col: [f"background-color: {colours[n]}" for n in df["class"]], subset=["colour"])


def show_image(name, image, seg, target, opacity, visible, robot=False):
    """Everything about one image: overlay, confidence, shares, downloads and ground-truth scores."""
    from desertseg.evaluation.visualize import confidence_image, error_map, overlay

    stem = Path(name).stem
    h, w = image.shape[:2]
    st.subheader(name)
    st.markdown(f"**Inference time: {seg.seconds * 1000:.0f} ms** on {seg.device} · {w}x{h} pixels")
    over = overlay(image, seg.mask, opacity, visible)
    c1, c2 = st.columns(2)
    c1.image(image, caption="Original", width="stretch")
    c2.image(over, caption=f"Overlay (opacity {opacity:.2f})", width="stretch")
    d1, d2, d3 = st.columns(3)
    d1.download_button("Raw-id mask (16-bit PNG)", lambda: logic.raw_mask_png(seg.mask), f"{stem}_mask_raw.png", "image/png", key=f"dl_raw_{name}", on_click="ignore")
    d2.download_button("Colour mask (PNG)", lambda: logic.color_mask_png(seg.mask), f"{stem}_mask_color.png", "image/png", key=f"dl_color_{name}", on_click="ignore")
    d3.download_button("Overlay (PNG)", lambda: logic.png_bytes(over), f"{stem}_overlay.png", "image/png", key=f"dl_overlay_{name}", on_click="ignore")
    c3, c4 = st.columns(2)
    c3.image(confidence_image(seg.confidence), caption=f"Confidence: probability of the predicted class, dark purple 0% to yellow 100% (mean {seg.confidence.mean():.1%})", width="stretch")
    with c4:
        st.markdown("**Predicted class shares**")
        st.table(colour_table(logic.share_rows(seg.mask)), hide_index=True)
    if robot:
        from desertseg.data.coarse import colorize_groups, cost_map, to_groups

        r1, r2 = st.columns(2)
        r1.image(colorize_groups(to_groups(seg.mask)), caption="Coarse groups: sky, tall vegetation, low vegetation, traversable ground, obstacle", width="stretch")
        r2.image(cost_map(seg.mask), caption="Traversability cost: black free (0) ... white lethal (254) or no information (255)", width="stretch", clamp=True)
    if target is None:
        st.caption("Upload this image's ground-truth mask (16-bit PNG, same file name) to see scores.")
        return
    s = logic.score(seg.mask, target)
    st.markdown("#### Against ground truth")
    m1, m2, m3 = st.columns(3)
    m1.metric("Pixel accuracy", f"{s['pixel_accuracy']:.2%}")
    m2.metric(f"mIoU, all {len(CLASSES)} classes", f"{s['miou_all']:.4f}")
    m3.metric(f"mIoU, {s['num_present']} classes present", f"{s['miou_present']:.4f}")
    c5, c6 = st.columns(2)
    c5.image(colorize(target), caption="Ground truth", width="stretch")
    c6.image(error_map(seg.mask, target), caption="Errors: green correct, red wrong, black ignored", width="stretch")
    st.markdown("**Per-class scores** (one confusion matrix over this image's pixels, as `desertseg evaluate`)")
    st.table(colour_table(logic.metrics_rows(s)), hide_index=True)


def images_tab(predictor, model_key, opacity, visible, robot=False):
    cap = f"up to {sidebar.upload_cap_mb()} MB and {logic.app_max_pixels():,} pixels each"
    files = st.file_uploader("Images (PNG or JPG)", type=["png", "jpg", "jpeg"], accept_multiple_files=True, key="images", help=f"Photos {cap}.")
    gt_files = st.file_uploader("Ground-truth masks, optional (16-bit PNG of raw class ids, same file names as the images)", type=["png"], accept_multiple_files=True, key="masks")
    store = session_store()
    if not files:
        store.clear()  # nothing uploaded: nothing of this session's kept in memory
        st.info(f"Upload one or more photos to segment them ({cap}).")
        return
    items = read_uploads(files, gt_files or [], store)
    results = []
    for name, digest, image, target in items:
        try:
            seg = logic.remember(store, ("segmentation", model_key, digest), segment, predictor, image, name)
            results.append((name, image, seg, target))
        except ERRORS as e:
            st.error(f"{name}: cannot segment ({e})")
    # Keep only what the current uploads need, so a session's memory does not grow with each upload.
    logic.forget_others(store, [image_key(name, digest) for name, digest, _, _ in items] + [("segmentation", model_key, digest) for _, digest, _, _ in items])
    if not results:
        return
    if len(results) > 1:
        rows = [
            {
                "image": n,
                "size": f"{im.shape[1]}x{im.shape[0]}",
                "inference ms": f"{sg.seconds * 1000:.0f}",
                "mIoU (present)": f"{logic.score(sg.mask, t)['miou_present']:.4f}" if t is not None else "-",
            }
            for n, im, sg, t in results
        ]
        st.table(rows, hide_index=True)
        choice = st.selectbox("Image to inspect", [r[0] for r in results], key="inspect")
        results = [r for r in results if r[0] == choice]
    name, image, seg, target = results[0]
    show_image(name, image, seg, target, opacity, visible, robot)


def video_tab(predictor, model_key, opacity):
    up = st.file_uploader("A short video (MP4, AVI, MOV, MKV or WebM)", type=["mp4", "avi", "mov", "mkv", "webm"], key="video")
    if up is None:
        st.info(f"Upload a short video (up to {sidebar.upload_cap_mb()} MB and {video_upload.app_max_frames():,} frames) to get an overlay video and per-frame class shares.")
        return
    data = up.getvalue()
    key = f"{model_key}:{hashlib.sha1(data).hexdigest()}:{opacity}"
    if st.button("Segment video", key="run_video"):
        bar = st.progress(0.0, text="Segmenting frames ...")

        def progress(done, total):
            bar.progress(min(1.0, done / total) if total else 0.0, text=f"Segmenting frames: {done}" + (f" of {total}" if total else ""))

        try:
            with tempfile.TemporaryDirectory(prefix="desertseg-video-") as tmp:
                r = video_upload.video_overlay(predictor, data, up.name, Path(tmp), opacity, progress)
                st.session_state["video_result"] = {
                    "key": key,
                    "frames": r["frames"],
                    "fps": r["fps"],
                    "seconds": r["seconds"],
                    "mp4": r["mp4"].read_bytes(),
                    "csv": r["csv"].read_bytes(),
                    "webm": r["webm"].read_bytes() if r["webm"] else None,
                }
        except ERRORS as e:
            st.error(str(e))
            return
    res = st.session_state.get("video_result")
    if not res or res["key"] != key:
        return
    st.success(f"{res['frames']} frames at {res['fps']:.1f} fps segmented in {res['seconds']:.1f} s")
    if res["webm"]:
        st.video(res["webm"], format="video/webm")
    stem = Path(up.name).stem
    v1, v2 = st.columns(2)
    v1.download_button("Overlay video (MP4)", res["mp4"], f"{stem}_overlay.mp4", "video/mp4", key="dl_video", on_click="ignore")
    v2.download_button("Class shares per frame (CSV)", res["csv"], f"{stem}_class_shares.csv", "text/csv", key="dl_csv", on_click="ignore")


def main() -> None:
    st.set_page_config(page_title="desertseg", layout="wide")
    st.title("desertseg: off-road desert terrain segmentation")
    predictor, model_key = sidebar.model_panel()
    opacity, visible, robot = sidebar.display_panel()
    if predictor is None:
        return
    tab_images, tab_video = st.tabs(["Images", "Video"])
    with tab_images:
        images_tab(predictor, model_key, opacity, visible, robot)
    with tab_video:
        video_tab(predictor, model_key, opacity)


if __name__ == "__main__":
    main()
