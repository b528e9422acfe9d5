"""The dashboard's sidebar: which model (bundled, ``--checkpoint``, the models folder or an
upload), loaded once per file per process, and how results are drawn (opacity, classes, coarse
view). Laid out by :mod:`desertseg.app.page`.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import streamlit as st

from desertseg.app import logic
from desertseg.app import models_dir as model_folder
from desertseg.classes import CLASSES
from desertseg.models.checkpoint import default_model_path

BUNDLED, START, FOLDER, UPLOAD = "Bundled default model", "Model chosen at start (--checkpoint)", "Model file from the models folder", "Upload a model file"


@st.cache_resource(show_spinner="Loading model ...", max_entries=4)
def load_predictor(path: str, mtime: float):
    """One :class:`~desertseg.inference.predict.Predictor` per model file (and version) per process."""
    from desertseg.inference.predict import Predictor

    return Predictor.from_checkpoint(path)


def upload_cap_mb() -> int:
    """The server's upload cap (``desertseg app --max-upload-mb``), as Streamlit enforces it."""
    return int(st.get_option("server.maxUploadSize"))


def folder_model(models_dir: Path):
    """Sidebar: pick or type a model file inside the models folder. Returns ``(path, name)`` or ``None``."""
    names = model_folder.list_model_files(models_dir)
    picked = st.sidebar.selectbox("Model file", names, key="model_pick") if names else None
    typed = st.sidebar.text_input("Or type its path inside the models folder", key="model_path", placeholder="run/best.safetensors or model.onnx").strip()
    name = typed or picked
    if not name:
        st.info("The models folder holds no .safetensors or .onnx file yet; add one, or choose another model source in the sidebar.")
        return None
    try:
        return model_folder.resolve_model_path(models_dir, name), name
    except model_folder.ModelPathError as e:
        st.error(str(e))
        return None


def uploaded_model():
    """Sidebar: a model file uploaded by the user, stored under its content hash. Returns ``(path, name)`` or ``None``."""
    up = st.sidebar.file_uploader("Model file", type=["safetensors", "onnx"], key="model_upload", help=f"Up to {upload_cap_mb()} MB.")
    if up is None:
        st.info(f"Upload a model file (.safetensors or .onnx, up to {upload_cap_mb()} MB) in the sidebar.")
        return None
    data = up.getvalue()
    folder = Path(tempfile.gettempdir()) / "desertseg-app-models"
    folder.mkdir(exist_ok=True)
    path = folder / (hashlib.sha1(data).hexdigest()[:16] + Path(up.name).suffix.lower())
    if not path.exists():
        path.write_bytes(data)
    return path, up.name


def chosen_model(source: str, checkpoint: str, models_dir: Path | None):
    """The model file of ``source`` as ``(path, name shown on the page)``, or ``None`` after a message."""
    if source == FOLDER:
        return folder_model(models_dir)
    if source == UPLOAD:
        return uploaded_model()
    path = Path(checkpoint) if source == START else default_model_path()
    if source == BUNDLED and not path.is_file():
        st.error(
            f"The bundled default model is not installed ({path} is missing). Start the dashboard with `desertseg app --checkpoint FILE` or `--models-dir DIR`, or upload a model file in the sidebar."
        )
        return None
    if not path.is_file():
        st.error(f"Model file not found: {path.name}")
        return None
    return path, path.name


def model_panel():
    """Sidebar: choose a model, load it (cached) and show its card. Returns ``(predictor, key)``.

    Typed paths exist only with ``--models-dir``, and then reach only files inside that folder.
    """
    st.sidebar.header("Model")
    checkpoint = os.environ.get(model_folder.CHECKPOINT_ENV, "")
    models_dir = model_folder.models_dir_setting()
    sources = [BUNDLED] + [START] * bool(checkpoint) + [FOLDER] * bool(models_dir) + [UPLOAD]
    source = st.sidebar.radio("Model source", sources, index=sources.index(START) if checkpoint else 0, key="model_source")
    chosen = chosen_model(source, checkpoint, models_dir)
    if chosen is None:
        return None, None
    p, name = Path(chosen[0]).resolve(), chosen[1]
    try:
        mtime = p.stat().st_mtime
        predictor = load_predictor(str(p), mtime)
    except Exception as e:  # any failure to load is shown, never raised; the server's paths are not
        st.error(f"{name}: cannot load the model ({str(e).replace(str(p), name)})")
        return None, None
    card = logic.model_card({**predictor.metadata, "path": name})
    st.sidebar.success(f"{card['model']} · input {card['input size (W x H)']} · {logic.device_name(predictor)}")
    with st.sidebar.expander("Model card"):
        st.json(card, expanded=1)
    return predictor, f"{p.resolve()}:{mtime}"


def display_panel():
    """Sidebar: opacity and the classes drawn, beside a colour legend."""
    from desertseg.evaluation.visualize import legend_image

    st.sidebar.header("Display")
    opacity = st.sidebar.slider("Overlay opacity", 0.0, 1.0, 0.5, 0.05, key="opacity")
    st.sidebar.image(legend_image(), caption="Class colours (raw id in the masks)")
    visible = [c.index for c in CLASSES if st.sidebar.checkbox(f"Show {c.name}", value=True, key=f"show_{c.index}")]
    robot = st.sidebar.checkbox(
        "Coarse groups and traversability cost", value=False, key="robot_view", help="What a robot cares about: sky, vegetation, traversable ground, obstacles, and a cost per pixel."
    )
    return opacity, visible, robot
