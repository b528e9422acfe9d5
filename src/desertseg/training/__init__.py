"""Training: presets and the run's configuration (``config``), losses, the LightningModule and
DataModule with their optimiser and scheduler registries (``lightning_module``), samplers,
resumable checkpoints and logging (``engine``), and ``fit.train``, which puts them together.

May import: the package top, ``data``, ``models`` and ``evaluation.report`` (training curves).
Running a trained model never imports this package (nor Lightning).
"""
