"""Data commands: download, check-data, split and import-model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from .common import app, fail


@app.command()
def download(
    dest: Path = typer.Option(Path("data"), help="Folder for the zips and the unpacked dataset."),
    parts: str = typer.Option("train,test", help="Comma-separated parts: train, test, scripts."),
    base_url: Optional[str] = typer.Option(None, help="Mirror base URL (or set DESERTSEG_BASE_URL); Duality's public storage by default."),
    retries: int = typer.Option(5, help="Retries per file, with exponential backoff; a partial file is resumed."),
) -> None:
    """Download Duality AI's desert dataset zips (resumable), unzip them safely and check the data."""
    from ..data.check import check_data, format_report
    from ..data.download import download as run_download
    from ..data.samples import find_split_dirs

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
    from ..data.check import check_data, format_report

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
    from ..data.splits import describe_split, make_splits, write_split_file

    def envs(text: Optional[str]) -> Optional[list[str]]:
        return [e.strip().lower() for e in text.split(",") if e.strip()] if text else None

    splits, problems = make_splits(data, envs(val_envs) or [], envs(train_envs))
    for p in problems:
        typer.echo(f"warning: {p}", err=True)
    paths = {name: out / f"split_{name}.json" for name in splits}
    existing = [str(p) for p in paths.values() if p.exists()]
    if existing and not overwrite:
        fail(f"{', '.join(existing)} already exist; pass --overwrite to replace them")
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

    from ..data.decoding import parse_size
    from ..models.importer import PickleTrustWarning, import_model, parse_normalisation

    if out.exists() and not overwrite:
        fail(f"{out} already exists; pass --overwrite to replace it")
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
