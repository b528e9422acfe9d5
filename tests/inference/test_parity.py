"""The int8 parity guard on real labelled frames: agreement and mIoU drops are what the masks say."""

import numpy as np
import pytest

from desertseg.inference.parity import MAX_MIOU_DROP, MIN_AGREEMENT, CheckSet, guard, read_check_sets


@pytest.fixture(scope="module")
def val_set(duality_root):
    sets, errors = read_check_sets([duality_root / "val"])
    assert not errors and [s.name for s in sets] == ["val"] and len(sets[0].pairs) == 24
    return CheckSet("val", sets[0].pairs[:4])


def _flip_rows(masks, rows):
    """Copies of ``masks`` with the first ``rows`` rows set to another class."""
    out = [m.copy() for m in masks]
    for m in out:
        m[:rows] = (m[:rows] + 1) % 10
    return out


def test_guard_measures_agreement_and_drop_against_the_float_masks(val_set):
    # "float32" predicts the ground truth itself (ignored pixels as class 0); "int8" differs on a band of rows.
    reference = [np.where(t == 255, 0, t).astype(np.uint8) for _, t in val_set.pairs]
    h = reference[0].shape[0]
    same = guard({"val": reference}, {"val": [m.copy() for m in reference]}, [val_set])
    s = same.sets["val"]
    assert s["images"] == 4 and s["agreement"] == 1.0 and s["miou_all_drop"] == 0 and s["miou_present_drop"] == 0
    assert same.ok and same.worst_agreement == 1.0

    rows = max(1, h // 20)  # 5% of every image's pixels differ
    worse = guard({"val": reference}, {"val": _flip_rows(reference, rows)}, [val_set])
    w = worse.sets["val"]
    assert w["agreement"] == pytest.approx(1 - rows / h, abs=1e-5)
    assert w["agreement"] < MIN_AGREEMENT and not worse.ok
    assert w["miou_all_float32"] > w["miou_all_int8"] and w["miou_all_drop"] == pytest.approx(w["miou_all_float32"] - w["miou_all_int8"], abs=1e-4)
    assert "needs >= 99%" in worse.describe() and f"allowed {MAX_MIOU_DROP}" in worse.describe()


def test_guard_takes_the_worst_set(val_set):
    reference = [np.where(t == 255, 0, t).astype(np.uint8) for _, t in val_set.pairs]
    other = CheckSet("other", val_set.pairs)
    result = guard({"val": reference, "other": reference}, {"val": reference, "other": _flip_rows(reference, 40)}, [val_set, other])
    assert result.worst_agreement == result.sets["other"]["agreement"] < result.sets["val"]["agreement"] == 1.0
    assert result.worst_drop == max(result.sets["other"]["miou_all_drop"], result.sets["other"]["miou_present_drop"]) > 0
