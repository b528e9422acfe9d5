"""The ``desertseg`` command line: thin commands (parse, call the library, print), one module
per group (models, inference, data, dashboard), over the library packages; nothing in the
library imports it."""

from .common import app

# Importing a command module registers its commands; `desertseg --help` lists them in this order.
# isort: off
from . import model_commands, predict_commands, serve, data_commands  # noqa: E402, F401

# isort: on
from .main import main  # noqa: E402

__all__ = ["app", "main"]
