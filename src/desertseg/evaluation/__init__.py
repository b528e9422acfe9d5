"""Evaluation and pictures: one scoring loop for every dataset format (``loop.evaluate``), the
coarse-group tables (``coarse_eval``), overlays and galleries (``visualize``) and HTML reports
with confusion matrices and training curves (``report``). Metrics know label maps only.

May import: the package top, ``data``, ``models`` and ``inference`` (the Predictor).
"""
