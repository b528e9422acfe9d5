"""Data: finding image/mask pairs and split files (``samples``, ``splits``), decoding files and
the torch Dataset (``decoding``), augmentation (``transforms``), caches, other datasets' formats
and the coarse class groups (``formats``, ``coarse``), ``desertseg check-data`` (``check``, one
file at a time in ``file_checks``) and downloads.

May import: the package top (``classes``, ``errors``, ``io``, ``metrics``). Nothing here knows
models, training or inference.
"""
