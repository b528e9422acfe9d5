"""Inference commands: predict (images, folders, videos), export (ONNX float32 / int8, PT2E calibration), compile (PT2E for this CPU) and benchmark."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from .common import BACKEND_HELP, app, fail, make_predictor, parse_csv


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
        help=BACKEND_HELP,
    ),
    cost_map: bool = typer.Option(False, help="Also write an 8-bit traversability cost map per image (0 free ... 254 lethal, 255 unknown; costs per class in desertseg.data.coarse)."),
    recursive: bool = typer.Option(False, help="Search folders recursively; outputs keep the sub-folders (index/day1/a.png, index/day2/a.png)."),
    resume: bool = typer.Option(
        False, help="Continue an interrupted run into the same --out: skip images whose requested outputs all exist, remove temporary files the interruption left (videos are segmented again)."
    ),
    workers: int = typer.Option(1, min=0, help="Background threads that decode the next images and write the last outputs while the model runs (0: one step at a time)."),
) -> None:
    """Segment images and videos: class-index, raw-id, colour, overlay and confidence masks at each image's own size, overlay videos with per-frame class shares."""
    from ..inference.outputs import check_out_dir, predict_paths

    check_out_dir(out, overwrite or resume)
    predictor = make_predictor(checkpoint, device, flip, scales, sliding_window, backend, pipelined=workers > 0)
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
    engine: str = typer.Option(
        "onnxruntime",
        help="int8: onnxruntime (an .int8.onnx graph, the default CPU path) or pt2e (a .pt2e calibration for PyTorch's PT2E flow, run with --backend pt2e; needs the pt2e extra and a C++ compiler).",
    ),
    opset: int = typer.Option(18, min=17, help="ONNX opset version (>= 17)."),
    no_check: bool = typer.Option(False, "--no-check", help="float32: skip the parity check (not recommended)."),
) -> None:
    """Export a model to ONNX (dynamic batch/height/width, normalisation inside, class metadata in metadata_props), checked against PyTorch on real images; with --precision int8, quantized and kept only if it passes the parity guard."""
    from ..data.decoding import read_image
    from ..inference.export import export_onnx
    from ..inference.inputs import image_paths
    from ..models.checkpoint import default_model_path

    if format.lower() != "onnx":
        fail(f"unsupported --format {format!r}; only onnx is supported")
    if precision not in ("float32", "int8"):
        fail(f"unsupported --precision {precision!r}; choose float32 or int8")
    checkpoint = checkpoint or default_model_path()
    if engine not in ("onnxruntime", "pt2e"):
        fail(f"unsupported --engine {engine!r}; choose onnxruntime or pt2e")
    if precision == "int8":
        return _export_int8(checkpoint, out, calibration_images, calibration_count, check_data, engine)
    if not check_images and not no_check:
        fail("the parity check needs real images: pass --check-images FOLDER (e.g. a Color_Images folder) or --no-check to skip it")
    out = out or checkpoint.with_suffix(".onnx")
    images = [read_image(p) for p in image_paths(check_images, check_count)] if not no_check else None
    typer.echo(f"Exporting {checkpoint} to ONNX (opset {opset}) ...", err=True)
    path, parity, exporter = export_onnx(checkpoint, out, images, opset=opset)
    typer.echo(f"Wrote {path} ({path.stat().st_size / 2**20:.1f} MB, {exporter} exporter, opset {opset})")
    if parity is not None:
        sizes = ", ".join(f"{w}x{h}" for h, w in parity.sizes)
        typer.echo(f"Parity with PyTorch on {parity.images} real images at {sizes}: max |logit difference| {parity.max_abs_logit_diff:.3g}, argmax agreement {parity.argmax_agreement:.4%} (OK)")


def _export_int8(checkpoint: Path, out: Optional[Path], calibration_images: List[str], count: int, check_data: List[Path], engine: str = "onnxruntime") -> None:
    from ..data.decoding import read_image
    from ..inference.inputs import image_paths
    from ..inference.parity import read_check_sets
    from ..inference.quantize import export_int8
    from ..inference.runtime import EXPORT_SUFFIXES

    if not calibration_images or not check_data:
        fail("int8 export needs --calibration-images (training images) and --check-data (labelled splits, e.g. val and an unseen environment) for the parity guard")
    paths = image_paths(calibration_images)
    paths = paths[:: max(1, len(paths) // count)][:count]
    check_sets, errors = read_check_sets(check_data)
    for e in errors:
        typer.echo(f"warning: skipped {e}", err=True)
    typer.echo(f"Quantizing {checkpoint} to int8 ({engine}), calibrated on {len(paths)} images; guard on {', '.join(f'{c.name} ({len(c.pairs)} pairs)' for c in check_sets)} ...", err=True)
    log = lambda m: typer.echo(m, err=True)  # noqa: E731
    images = [read_image(p) for p in paths]
    if engine == "pt2e":
        from ..inference.pt2e import SUFFIX
        from ..inference.pt2e_export import export_pt2e, onnx_ranking

        ranking, first = onnx_ranking(checkpoint)
        path, q = export_pt2e(checkpoint, out or checkpoint.with_name(checkpoint.stem + SUFFIX), images, check_sets, ranking, first=first, log=log)
    else:
        path, q = export_int8(checkpoint, out or checkpoint.with_name(checkpoint.stem + EXPORT_SUFFIXES["int8"]), images, check_sets, log=log)
    kept = ", ".join(b["block"] for b in q["float_blocks"]) or "none"
    typer.echo(f"Wrote {path} ({path.stat().st_size / 2**20:.1f} MB); blocks kept float ({len(q['float_blocks'])}): {kept}")
    for name, r in q["guard"]["sets"].items():
        typer.echo(
            f"  {name}: agreement {r['agreement']:.2%}, mIoU all {r['miou_all_float32']:.4f} -> {r['miou_all_int8']:.4f}, present {r['miou_present_float32']:.4f} -> {r['miou_present_int8']:.4f}"
        )
    if errors:
        raise typer.Exit(1)


@app.command(name="compile")
def compile_int8(
    checkpoint: Optional[Path] = typer.Option(None, help="Model file (.safetensors) with a .pt2e calibration beside it; the bundled default model when omitted."),
    threads: Optional[int] = typer.Option(None, min=1, help="CPU threads the compiled graph is built for (default: torch's); a run with another count does not use it."),
) -> None:
    """Compile the model's PT2E int8 graph for this CPU, once (half a minute or so), and time it against the onnxruntime int8 file: from then on `auto` runs whichever was faster here. Kept in the user's cache folder."""
    import time

    import torch

    from ..inference.benchmark import time_int8_paths
    from ..inference.pt2e import compiled_path, find, load, write_speed
    from ..models.checkpoint import default_model_path

    checkpoint = checkpoint or default_model_path()
    if threads:
        torch.set_num_threads(threads)
    found = find(checkpoint)
    if found is None:
        fail(f"{checkpoint}: no PT2E calibration of this file beside it; write one with `desertseg export --precision int8 --engine pt2e --checkpoint {checkpoint} ...`")
    start, was = time.perf_counter(), compiled_path(found).is_file()
    load(checkpoint, found, log=lambda m: typer.echo(m, err=True))
    state = "already compiled" if was else f"compiled in {time.perf_counter() - start:.0f} s"
    typer.echo(f"{found.name}: {state} for this CPU at {torch.get_num_threads()} threads: {compiled_path(found)}")
    speed = time_int8_paths(checkpoint)
    write_speed(found, speed)
    if speed["int8_ms"] is None:
        typer.echo(f"model time {speed['pt2e_ms']:.1f} ms per image; no onnxruntime int8 path beside it: `auto` runs PT2E")
    else:
        winner = "PT2E" if speed["pt2e_ms"] < speed["int8_ms"] else "onnxruntime int8"
        typer.echo(f"model time per image here: PT2E {speed['pt2e_ms']:.1f} ms, onnxruntime int8 {speed['int8_ms']:.1f} ms: `auto` runs {winner}")


@app.command()
def benchmark(
    checkpoint: Optional[Path] = typer.Option(None, help="Model file (.safetensors or .onnx); the bundled default model when omitted."),
    backend: str = typer.Option("auto", help="Backends to compare, comma-separated: auto, torch, onnx, int8, pt2e."),
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
    from ..data.decoding import parse_size
    from ..inference.benchmark import format_benchmark, run_benchmark
    from ..inference.runtime import check_backend
    from ..io import atomic_write

    backends = [check_backend(b) for b in parse_csv(backend, str, "backend")]
    batches = parse_csv(batch, int, "batch")
    if any(b < 1 for b in batches):
        fail(f"--batch sizes must be >= 1, got {batch!r}")
    paths, samples = _benchmark_inputs(data, miou_data)
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
    typer.echo(format_benchmark(report))
    typer.echo(text)
    if json_out is not None:
        atomic_write(json_out, lambda tmp: tmp.write_text(text))
        typer.echo(f"Wrote {json_out}", err=True)


def _benchmark_inputs(data: list[str], miou_data: Optional[Path]) -> tuple[list[Path], list | None]:
    """The images to time (default: the shared unseen environment) and the labelled samples to score, if any."""
    from ..inference.benchmark import default_images_dir
    from ..inference.inputs import image_paths

    if not data:
        found = default_images_dir()
        if found is None:
            fail("no images to benchmark: pass --data FOLDER (e.g. a Color_Images folder of 960x540 PNGs)")
        data = [str(found)]
    if miou_data is None:
        return image_paths(data), None
    from ..data.samples import find_samples

    samples, problems = find_samples(miou_data)
    for p in problems:
        typer.echo(f"warning: {p}", err=True)
    return image_paths(data), samples
