"""What every command shares: the Typer application and the small argument helpers."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

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

BACKEND_HELP = (
    "Inference backend: auto (the fastest path that passes the parity guard: on a CPU the PT2E int8 graph once `desertseg compile` has compiled it on this machine and timed it faster than the int8 export, "
    "else the int8 export beside the model file when there is one, else PyTorch; onnxruntime for an .onnx file), torch, onnx or int8 (the float32 / int8 export of the "
    "same file lying beside it), or pt2e (the int8 PT2E calibration beside it, compiled for this CPU the first time, half a minute or so, then cached; needs the pt2e extra)."
)


def fail(message: str, code: int = 2) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def parse_scales(text: str) -> tuple[float, ...]:
    try:
        scales = tuple(float(s) for s in text.split(","))
    except ValueError:
        fail(f"--scales must be numbers separated by commas, e.g. 0.75,1,1.25; got {text!r}")
    if not scales or any(s <= 0 or s > 4 for s in scales):
        fail(f"--scales must lie in (0, 4]; got {text!r}")
    return scales


def make_predictor(checkpoint: Optional[Path], device: Optional[str], flip: bool, scales: str, sliding_window: bool, backend: str = "auto", pipelined: bool = False):
    from ..inference.predict import Predictor

    return Predictor.from_checkpoint(checkpoint, device=device, flip=flip, scales=parse_scales(scales), sliding_window=sliding_window, backend=backend, pipelined=pipelined)


def parse_csv(text: str, kind, name: str) -> list:
    try:
        values = [kind(v.strip()) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values:
        fail(f"--{name} must be a comma-separated list, got {text!r}")
    return values
