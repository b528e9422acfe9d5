import numpy as np
import pytest

from desertseg.classes import IGNORE_INDEX
from desertseg.metrics import confusion_matrix, summarize


def test_confusion_matrix_by_hand_with_ignored_pixels():
    target = np.array([[0, 0, 1, 1], [2, 2, 255, 255]], dtype=np.uint8)
    pred = np.array([[0, 1, 1, 1], [2, 0, 3, 4]], dtype=np.uint8)
    cm = confusion_matrix(pred, target, num_classes=5)
    expected = np.zeros((5, 5), int)
    expected[0, 0] = 1
    expected[0, 1] = 1
    expected[1, 1] = 2
    expected[2, 2] = 1
    expected[2, 0] = 1
    assert (cm == expected).all()
    assert cm.sum() == 6  # the two ignored pixels never count


def test_summarize_hand_computed_with_absent_class():
    # 3 classes; class 2 absent from ground truth but predicted once.
    cm = np.array([[3, 1, 0], [0, 2, 1], [0, 0, 0]])
    m = summarize(cm, class_names=("a", "b", "c"))
    iou_a, iou_b = 3 / 4, 2 / 4
    assert m["per_class"][0]["iou"] == pytest.approx(iou_a)
    assert m["per_class"][1]["iou"] == pytest.approx(iou_b)
    assert m["per_class"][2]["iou"] == 0.0  # predicted but never present: 0/1
    assert m["per_class"][2]["present"] is False
    assert m["miou_all"] == pytest.approx((iou_a + iou_b + 0) / 3)
    assert m["miou_present"] == pytest.approx((iou_a + iou_b) / 2)
    assert m["pixel_accuracy"] == pytest.approx(5 / 7)
    assert m["per_class"][0]["precision"] == pytest.approx(1.0)
    assert m["per_class"][1]["recall"] == pytest.approx(2 / 3)
    assert m["mean_class_accuracy"] == pytest.approx((3 / 4 + 2 / 3) / 2)
    assert m["share_iou_ge_0.5"] == pytest.approx(2 / 3)


def test_class_absent_everywhere_is_undefined_and_counts_zero_in_all_class_miou():
    cm = np.array([[5, 0], [0, 0]])
    m = summarize(cm, class_names=("a", "b"))
    assert m["per_class"][1]["iou"] is None
    assert m["miou_present"] == 1.0 and m["miou_all"] == 0.5


def test_shapes_must_match():
    with pytest.raises(ValueError):
        confusion_matrix(np.zeros((2, 2)), np.zeros((2, 3)))
    assert IGNORE_INDEX == 255
