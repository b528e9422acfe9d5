"""desertseg: semantic segmentation of off-road desert terrain.

The public API, stable across versions (each name is imported on first use, so
``import desertseg`` stays light and the command line starts fast)::

    from desertseg import Predictor, evaluate, load_model

    predictor = Predictor.from_checkpoint()  # the bundled model, its fastest checked path
    mask = predictor.predict(read_image("frame.png")).mask
"""

__version__ = "0.1.0"

# name -> module that defines it
_PUBLIC = {
    "CLASSES": "classes",
    "CLASS_NAMES": "classes",
    "NUM_CLASSES": "classes",
    "IGNORE_INDEX": "classes",
    "Predictor": "inference.predict",
    "Prediction": "inference.predict",
    "load_model": "models.checkpoint",
    "save_model": "models.checkpoint",
    "read_metadata": "models.checkpoint",
    "read_image": "data.decoding",
    "read_mask": "data.decoding",
    "DataError": "data.decoding",
    "find_samples": "data.samples",
    "evaluate": "evaluation.loop",
    "TrainConfig": "training.config",
    "load_config": "training.config",
    "train": "training.fit",
    "build_model": "models.registry",
    "export_onnx": "inference.export",
    "export_int8": "inference.quantize",
}
__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'desertseg' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
