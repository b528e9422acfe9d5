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
    "Predictor": "predict",
    "Prediction": "predict",
    "load_model": "checkpoint",
    "save_model": "checkpoint",
    "read_metadata": "checkpoint",
    "read_image": "data",
    "read_mask": "data",
    "DataError": "data",
    "find_samples": "samples",
    "evaluate": "evaluation",
    "TrainConfig": "config",
    "load_config": "config",
    "train": "training",
    "build_model": "models",
    "export_onnx": "export",
    "export_int8": "quantize",
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
