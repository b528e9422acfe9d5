"""benchmarks/adaptation.py: BatchNorm re-estimation and Tent on a real trained model and real
frames of an environment it never saw (w0)."""

import importlib.util
from pathlib import Path

import torch

from desertseg.data.samples import list_samples
from desertseg.models.checkpoint import load_model, read_metadata

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "adaptation.py"
spec = importlib.util.spec_from_file_location("adaptation_benchmark", SCRIPT)
adaptation = importlib.util.module_from_spec(spec)
spec.loader.exec_module(adaptation)


def _setup(tiny_run, unseen_dir, n=4):
    path = tiny_run / "best.safetensors"
    samples = list_samples(unseen_dir)[0][:n]
    return path, adaptation._inputs(read_metadata(path), samples)


def _first_bn_input(model, x):
    """What the first BatchNorm sees for ``x`` (eval mode, so nothing is updated)."""
    bn = adaptation._batch_norms(model)[0]
    seen = []
    handle = bn.register_forward_hook(lambda m, inp, out: seen.append(inp[0].detach()))
    with torch.no_grad():
        model.eval()(x)
    handle.remove()
    return bn, seen[0]


def test_bn_statistics_come_from_the_target_frames(tiny_run, unseen_dir):
    path, x = _setup(tiny_run, unseen_dir)
    model, _ = load_model(path)
    bn, feats = _first_bn_input(model, x)
    source = bn.running_mean.clone()
    adaptation.adapt_bn(model, x, alpha=1.0, batch_size=len(x))
    target = feats.mean((0, 2, 3))
    assert torch.allclose(bn.running_mean, target, atol=1e-4)
    assert not torch.allclose(source, target, atol=1e-3)  # w0 differs from what it trained on
    assert not bn.training  # left ready for inference


def test_alpha_mixes_source_and_target(tiny_run, unseen_dir):
    path, x = _setup(tiny_run, unseen_dir)
    source_model, _ = load_model(path)
    full, _ = load_model(path)
    half, _ = load_model(path)
    adaptation.adapt_bn(full, x, alpha=1.0)
    adaptation.adapt_bn(half, x, alpha=0.5)
    for s, f, h in zip(*(adaptation._batch_norms(m) for m in (source_model, full, half))):
        assert torch.allclose(h.running_mean, (s.running_mean + f.running_mean) / 2, atol=1e-5)
        assert torch.allclose(h.running_var, (s.running_var + f.running_var) / 2, atol=1e-5)


def test_tent_changes_only_batch_norm_affine_parameters(tiny_run, unseen_dir):
    path, x = _setup(tiny_run, unseen_dir)
    before, _ = load_model(path)
    after, _ = load_model(path)
    adaptation.adapt_tent(after, x, steps=3, batch_size=2)
    affine = {id(p) for m in adaptation._batch_norms(after) for p in (m.weight, m.bias)}
    changed = {name for (name, p), q in zip(after.named_parameters(), before.parameters()) if not torch.equal(p, q)}
    assert changed, "Tent left every parameter as it was"
    assert all(id(dict(after.named_parameters())[n]) in affine for n in changed)


def test_labelled_frames_spread_over_the_half(unseen_dir):
    half = list_samples(unseen_dir)[0][:15]
    four = adaptation.labelled_frames(half, 4)
    assert [s.name for s in four] == [half[i].name for i in (0, 5, 9, 14)]
    assert adaptation.labelled_frames(half, 0) == half and adaptation.labelled_frames(half, 40) == half


def test_labels_method_fine_tunes_the_fold_model_on_the_other_half(tiny_run, unseen_dir, tmp_path):
    """The ``labels`` method trains through the real engine from the fold's model file, on
    exactly the labelled frames given, for about the steps asked."""
    import json

    from desertseg.evaluation.report import read_metrics_csv

    frames = list_samples(unseen_dir)[0][:3]
    path = tiny_run / "last.safetensors"
    tuned = adaptation.finetuned(path, frames, unseen_dir, tmp_path / "labels-half0", steps=2)
    config = read_metadata(tuned)["config"]
    assert config["init"] == str(path) and config["val_split"] == "none" and config["size"] == read_metadata(path)["config"]["size"]
    split = json.loads(open(config["train_split"]).read())
    assert [s["name"] for s in split["samples"]] == [s.name for s in frames]
    assert len([r for r in read_metrics_csv(tmp_path / "labels-half0" / "metrics.csv") if "train_loss" in r]) == 2  # 3 frames at batch 2: one step an epoch (the partial batch is dropped)
    assert not all(torch.equal(a, b) for a, b in zip(load_model(tuned)[0].state_dict().values(), load_model(path)[0].state_dict().values()))
    assert adaptation.finetuned(path, frames, unseen_dir, tmp_path / "labels-half0", steps=2) == tuned  # kept, not trained again


def test_retrained_keeps_the_fold_recipe_but_not_its_weights(tiny_run, unseen_dir, tmp_path):
    """``joint`` retrains the fold's recipe from its usual start (no ``init``) on the samples
    given, here the target frames alone."""
    import json

    frames = list_samples(unseen_dir)[0][:2]
    path = tiny_run / "last.safetensors"
    model_file = adaptation.retrained(path, frames, unseen_dir, tmp_path / "joint-half0", epochs=1)
    config, recipe = read_metadata(model_file)["config"], read_metadata(path)["config"]
    assert config.get("init") is None and config["epochs"] == 1 and config["val_split"] == "none"
    assert {k: config[k] for k in ("model", "size", "loss", "seed")} == {k: recipe[k] for k in ("model", "size", "loss", "seed")}
    assert [s["name"] for s in json.loads(open(config["train_split"]).read())["samples"]] == [s.name for s in frames]
