"""The HTML evaluation report: one self-contained file with its images embedded, PNGs beside it."""

import base64
import re

from desertseg.classes import CLASS_NAMES
from desertseg.data.samples import list_samples
from desertseg.evaluation.loop import evaluate
from desertseg.evaluation.report import write_report
from desertseg.inference.predict import Predictor


def test_report_is_self_contained_with_pngs_and_class_names(tiny_run, duality_root, tmp_path):
    samples, _ = list_samples(duality_root / "val")
    predictor = Predictor.from_checkpoint(tiny_run / "best.safetensors", device="cpu")
    result = evaluate(predictor, samples[:3], progress=False)
    out = tmp_path / "report"
    html_path = write_report(result, out, predictor, run_dir=tiny_run, sample=2, worst=2)
    text = html_path.read_text()

    for name in ("confusion_matrix", "iou_per_class", "class_shares", "legend", "curves"):
        assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    panels = sorted(p.name for p in (out / "panels").iterdir())
    assert len([p for p in panels if p.startswith("sample_")]) == 2 and len([p for p in panels if p.startswith("worst_")]) == 2
    # Every image is embedded; nothing points at a file beside the HTML.
    srcs = re.findall(r'<img src="([^"]+)"', text)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert len(srcs) == 5 + 4  # 4 figures + curves, 2 sample + 2 worst panels
    assert base64.b64decode(srcs[0].split(",", 1)[1])[:4] == b"\x89PNG"
    for name in CLASS_NAMES:
        assert f"<td>{name}" in text  # the metrics table, as HTML
    # The worst gallery is ranked by per-image mIoU, lowest first.
    worst = sorted(result["per_image"], key=lambda e: e["miou_present"])[0]["name"]
    assert f"worst_01_{worst}.png" in panels


def test_report_without_predictor_or_run_still_has_the_figures(tiny_run, duality_root, tmp_path):
    samples, _ = list_samples(duality_root / "val")
    predictor = Predictor.from_checkpoint(tiny_run / "best.safetensors", device="cpu")
    result = evaluate(predictor, samples[:2], progress=False, keep_per_image=False)
    html_path = write_report(result, tmp_path)
    text = html_path.read_text()
    assert text.count("data:image/png;base64,") == 4 and "mIoU, all 10 classes" in text
    assert not (tmp_path / "panels").exists() and not (tmp_path / "curves.png").exists()


def test_evaluate_cli_writes_the_report(tiny_run, duality_root, tmp_path):
    import os
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    base = [sys.executable, "-m", "desertseg.cli", "evaluate", "--data", str(duality_root), "--split", "val", "--checkpoint", str(tiny_run / "best.safetensors"), "--limit", "2", "--device", "cpu"]
    r = subprocess.run(base + ["--report", str(tmp_path / "rep"), "--run", str(tiny_run)], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "rep" / "report.html").is_file() and (tmp_path / "rep" / "curves.png").is_file()
    r = subprocess.run(base + ["--run", str(tiny_run)], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 2 and "--report" in r.stderr
