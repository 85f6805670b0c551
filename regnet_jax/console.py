"""A quiet console: the command-line tools show their own lines, warnings and errors, and not
the libraries' routine chatter. Each source is silenced where it speaks, and only its known
routine messages: anything else, warnings and errors included, still shows."""

from __future__ import annotations

import logging
import os
import re

# Routine messages, by the file that logs them: (path fragment, message pattern, up to level).
_ROUTINE = (
    ("orbax", r"", logging.INFO),  # a line per checkpoint save
    ("orbax", r"read.?only|Metadata file does not exist", logging.WARNING),  # evaluation
    ("tensorflow_datasets", r"", logging.INFO),  # dataset info loaded, datasets constructed
    # A dataset not prepared yet: the caller says so, with what to do.
    ("tensorflow_datasets", r"has no dataset_info\.json", logging.WARNING),
    ("xla_bridge", r"Unable to initialize backend", logging.INFO),  # libtpu absent on a CPU
)


def routine(record: logging.LogRecord) -> bool:
  """Whether ``record`` is one of the libraries' routine messages."""
  return any(where in record.pathname and record.levelno <= level
             and re.search(pattern, record.getMessage())
             for where, pattern, level in _ROUTINE)


def quiet() -> None:
  """Keeps the libraries' routine messages off the console. Call it before TensorFlow is
  imported (TF's C++ INFO lines, such as oneDNN's, are read from the environment then)."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # C++ INFO only; warnings still show
  from absl import logging as absl_logging

  keep = lambda record: not routine(record)
  # On the loggers the libraries speak through, so that handlers added later (Python's
  # logging.basicConfig, absl's) are covered too; and on the handlers, for other loggers.
  for name in ("absl", "tensorflow", "jax._src.xla_bridge"):
    logging.getLogger(name).addFilter(keep)
  absl_logging.get_absl_handler().addFilter(keep)
  for handler in logging.getLogger().handlers:
    handler.addFilter(keep)
  logging.getLogger("matplotlib.font_manager").setLevel(logging.ERROR)  # "building the cache"
