"""The ``desertseg`` command line: thin commands (parse, call the library, print), one module
per group (models, inference, data, dashboard), over the library packages; nothing in the
library imports it."""

from .main import app, main

__all__ = ["app", "main"]
