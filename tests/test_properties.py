"""Property-based tests (hypothesis) for the raw-id lookup and the dataset metrics."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from desertseg.classes import (
    CLASSES,
    IGNORE_INDEX,
    NUM_CLASSES,
    RAW_IDS,
    index_to_raw,
    raw_to_index,
)
from desertseg.metrics import confusion_matrix, summarize

FAST = settings(max_examples=50, deadline=None)
RAW_TO_CLASS = {c.raw_id: c.index for c in CLASSES}

# Raw masks: mostly real ids, some arbitrary 16-bit values (unknown ids).
raw_values = st.one_of(st.sampled_from(RAW_IDS), st.integers(0, 65535))
raw_masks = arrays(np.uint16, st.tuples(st.integers(1, 12), st.integers(1, 12)), elements=raw_values)
# Targets hold class indices and ignored pixels; predictions hold class indices only.
label = st.one_of(st.integers(0, NUM_CLASSES - 1), st.just(IGNORE_INDEX))


@st.composite
def batches(draw, max_images=4):
    n, h, w = draw(st.integers(1, max_images)), draw(st.integers(1, 8)), draw(st.integers(1, 8))
    target = draw(arrays(np.uint8, (n, h, w), elements=label))
    pred = draw(arrays(np.uint8, (n, h, w), elements=st.integers(0, NUM_CLASSES - 1)))
    return pred, target


@FAST
@given(raw_masks)
def test_raw_to_index_maps_known_ids_and_ignores_the_rest(raw):
    idx = raw_to_index(raw)
    assert idx.shape == raw.shape and idx.dtype == np.uint8
    expected = np.vectorize(lambda v: RAW_TO_CLASS.get(int(v), IGNORE_INDEX), otypes=[np.uint8])(raw)
    assert np.array_equal(idx, expected)
    # Round trip: known ids come back, unknown ones become 0 ("no class").
    back = index_to_raw(idx)
    assert np.array_equal(back, np.where(np.isin(raw, RAW_IDS), raw, 0))


@FAST
@given(raw_masks, st.sampled_from([np.int32, np.int64, np.uint32]))
def test_raw_to_index_does_not_depend_on_integer_dtype(raw, dtype):
    assert np.array_equal(raw_to_index(raw.astype(dtype)), raw_to_index(raw))


@FAST
@given(batches())
def test_confusion_total_is_number_of_non_ignored_pixels(batch):
    pred, target = batch
    cm = confusion_matrix(pred, target)
    assert cm.shape == (NUM_CLASSES, NUM_CLASSES) and (cm >= 0).all()
    assert cm.sum() == int((target != IGNORE_INDEX).sum())
    # Row sums are the ground-truth pixel counts per class.
    assert np.array_equal(cm.sum(1), np.bincount(target[target != IGNORE_INDEX], minlength=NUM_CLASSES))


@FAST
@given(batches())
def test_iou_and_scores_lie_in_unit_interval(batch):
    pred, target = batch
    m = summarize(confusion_matrix(pred, target))
    for c in m["per_class"]:
        for key in ("iou", "precision", "recall", "f1"):
            assert c[key] is None or 0.0 <= c[key] <= 1.0
    assert 0.0 <= m["miou_all"] <= 1.0 and 0.0 <= m["share_iou_ge_0.5"] <= 1.0
    if m["pixels"]:
        assert 0.0 <= m["miou_present"] <= 1.0 and 0.0 <= m["pixel_accuracy"] <= 1.0


@FAST
@given(batches())
def test_perfect_prediction_gives_iou_one_for_present_classes(batch):
    pred, target = batch
    perfect = np.where(target == IGNORE_INDEX, pred, target)  # whatever it says on ignored pixels
    m = summarize(confusion_matrix(perfect, target))
    present = set(np.unique(target[target != IGNORE_INDEX]).tolist())
    for i, c in enumerate(m["per_class"]):
        assert c["present"] == (i in present)
        if i in present:
            assert c["iou"] == 1.0
    if present:
        assert m["miou_present"] == 1.0 and m["pixel_accuracy"] == 1.0


@FAST
@given(batches(), st.randoms(use_true_random=False))
def test_permuting_images_does_not_change_dataset_matrix(batch, rnd):
    pred, target = batch
    order = list(range(len(pred)))
    rnd.shuffle(order)
    assert np.array_equal(confusion_matrix(pred[order], target[order]), confusion_matrix(pred, target))
    # One matrix over the dataset = the sum of the per-image matrices.
    assert np.array_equal(sum(confusion_matrix(p, t) for p, t in zip(pred, target)), confusion_matrix(pred, target))


@FAST
@given(batches(), st.data())
def test_ignored_pixels_never_count(batch, data):
    pred, target = batch
    other = data.draw(arrays(np.uint8, pred.shape, elements=st.integers(0, NUM_CLASSES - 1)))
    changed = np.where(target == IGNORE_INDEX, other, pred)  # change predictions only where ignored
    assert np.array_equal(confusion_matrix(changed, target), confusion_matrix(pred, target))
