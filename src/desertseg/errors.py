"""Error types shared by several modules.

The command line prints an error whose class is defined in desertseg (these, and the modules'
own ``DataError``, ``CheckpointError``, ...) as one ``error: ...`` line: raising one says "the
user can fix this". Anything else is reported as a bug (see :func:`desertseg.cli.main`).
"""

from __future__ import annotations


class MissingExtra(RuntimeError):
    """An optional dependency (an extra such as ``[video]`` or ``[onnx]``) is not installed;
    the message says what to install."""


class UnknownName(KeyError):
    """A model, encoder or preset name that is not registered (a user's typo, not a bug: the
    CLI prints it as one line, unlike a plain ``KeyError``); the message lists the known names."""


class TooManyDamagedFiles(RuntimeError):
    """Training met more damaged image or mask files than ``max_bad_share`` of a split allows;
    the message says how many, names a few, and where the last checkpoint is kept."""
