import numpy as np

from desertseg.classes import raw_to_index
from desertseg.data.decoding import read_image, read_mask
from desertseg.data.samples import list_samples
from desertseg.evaluation.loop import evaluate, write_results
from desertseg.inference.predict import Predictor
from desertseg.metrics import confusion_matrix


def test_evaluate_is_one_confusion_matrix_at_full_resolution(tiny_run, duality_root, tmp_path):
    samples, _ = list_samples(duality_root / "val")
    predictor = Predictor.from_checkpoint(tiny_run / "best.safetensors", device="cpu")
    result = evaluate(predictor, samples[:3], progress=False)
    assert result["images"] == 3
    # Recompute by hand: predictions at 960x540, summed into one matrix.
    cm = np.zeros((10, 10), np.int64)
    for s in samples[:3]:
        pred = predictor.predict(read_image(s.image)).mask
        assert pred.shape == (540, 960)
        cm += confusion_matrix(pred, raw_to_index(read_mask(s.mask)))
    assert result["confusion_matrix"] == cm.tolist()
    assert result["pixels"] == 3 * 540 * 960  # no unknown ids in these files
    assert 0 <= result["miou_all"] <= result["miou_present"] <= 1
    assert result["latency_ms"]["end_to_end_mean"] > result["latency_ms"]["model_mean"] > 0
    js, md = write_results(result, tmp_path)
    assert "mIoU, all 10 classes" in md.read_text() and js.exists()
