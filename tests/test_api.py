"""The public API at the package top: stable names, imported on first use."""

import subprocess
import sys

import pytest


def test_public_names_resolve_lazily_to_the_real_objects():
    code = (
        "import sys, desertseg\n"
        "assert 'torch' not in sys.modules, 'import desertseg must stay light'\n"
        "from desertseg import Predictor, evaluate, load_model, train, export_int8, CLASS_NAMES\n"
        "import desertseg.training.fit, desertseg.evaluation.loop, desertseg.inference.predict\n"
        "assert Predictor is desertseg.inference.predict.Predictor and callable(evaluate) and callable(train)\n"
        "assert evaluate is desertseg.evaluation.loop.evaluate and train is desertseg.training.fit.train\n"
        "assert len(CLASS_NAMES) == 10 and sorted(dir(desertseg)) == sorted(desertseg.__all__)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr


def test_every_listed_name_exists_and_unknown_names_fail_clearly():
    import desertseg

    for name in desertseg.__all__:
        assert getattr(desertseg, name) is not None, name
    with pytest.raises(AttributeError, match="has no attribute 'Predicter'"):
        desertseg.Predicter  # noqa: B018
