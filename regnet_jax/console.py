"""A quiet console: the command-line tools show their own lines, warnings and errors, and not
the libraries' routine chatter. Each source is silenced where it speaks, and only its known
routine messages: anything else, warnings and errors included, still shows."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from types import ModuleType

# Routine messages, by the file that logs them: (path fragment, message pattern, up to level).
_ROUTINE = (
    ("orbax", r"", logging.INFO),  # a line per checkpoint save
    ("orbax", r"read.?only|Metadata file does not exist", logging.WARNING),  # evaluation
    ("tensorflow_datasets", r"", logging.INFO),  # dataset info loaded, datasets constructed
    # A dataset not prepared yet: the caller says so, with what to do.
    ("tensorflow_datasets", r"has no dataset_info\.json", logging.WARNING),
    ("xla_bridge", r"Unable to initialize backend", logging.INFO),  # libtpu absent on a CPU
)

# Routine lines TensorFlow's native libraries write to stderr while it is imported, whatever
# TF_CPP_MIN_LOG_LEVEL says: absl's notice that logging is not initialised yet, and (on CPUs
# with AVX-512 and the like) oneDNN's "custom operations are on".
_ROUTINE_NATIVE = re.compile(r"All log messages before absl::InitializeLog\(\) is called|"
                             r"^I\d{4} [\d:. ]+\d+ port\.cc:\d+\] oneDNN custom operations are on")


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


def import_tensorflow() -> ModuleType:
  """Imports and returns TensorFlow, on its first import with its routine native start-up
  lines kept off stderr; any other line it writes there, warnings and errors included, is
  passed on."""
  if "tensorflow" not in sys.modules:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # C++ INFO lines (most) off
    with _filtered_stderr(_ROUTINE_NATIVE):
      import tensorflow  # noqa: F401
  return sys.modules["tensorflow"]


@contextlib.contextmanager
def _filtered_stderr(routine_line: re.Pattern) -> Iterator[None]:
  """Captures what is written to file descriptor 2 (native code included) meanwhile, then
  writes back the lines that ``routine_line`` does not match."""
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as captured:
    os.dup2(captured.fileno(), 2)
    try:
      yield
    finally:
      os.dup2(saved, 2)
      os.close(saved)
      captured.seek(0)
      for line in captured.read().decode(errors="replace").splitlines(keepends=True):
        if not routine_line.search(line):
          sys.stderr.write(line)
      sys.stderr.flush()
