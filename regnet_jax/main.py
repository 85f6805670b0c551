"""Trains or evaluates a RegNet / ResNet: the command line of ``main.py`` and of
``python -m regnet_jax.main`` (the same flags; the latter works wherever the package is
installed, with config files given by path).

    python main.py --config=configs/imagenet_regnet50.py --workdir=DIR
    python main.py --config=configs/cifar.py:regnet20_gru,cifar100 --workdir=DIR
    python main.py --workdir=DIR --mode=eval [--step=N]

Config files are Python code and are executed: only use configs you trust.
"""

from __future__ import annotations

import os
import re
import sys
from typing import TYPE_CHECKING

from absl import app, flags, logging
from ml_collections import config_flags

from regnet_jax import console

if TYPE_CHECKING:
  import ml_collections

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training configuration file.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints and TensorBoard events.")
flags.DEFINE_enum("mode", "train", ["train", "eval"], "Train (resuming) or evaluate.")
flags.DEFINE_integer("step", None, "Eval: checkpoint step to evaluate (default: newest).")
flags.DEFINE_float("deadline_s", None, "Train: stop, with a checkpoint, after the first step "
                   "that ends this many seconds after the start; the same command resumes.")
flags.DEFINE_bool("allow_config_change", False, "Train: resume a run although the config "
                  "changes fields that change its result (refused otherwise); the changes are "
                  "recorded in the workdir's runs.jsonl.")
flags.DEFINE_integer("precise_bn", 0, "Eval: first recompute BatchNorm statistics over this "
                     "many training batches (0: the running averages).")
flags.DEFINE_string("compilation_cache", os.path.join("~", ".cache", "regnet_jax", "xla"),
                    "XLA's persistent compilation cache: a restart reuses the compiled steps "
                    "(empty: off; $JAX_COMPILATION_CACHE_DIR, where set, wins).")
flags.DEFINE_string("coordinator_address", None, "Multi-process: host:port of process 0 "
                    "(default: none, or detected from a SLURM / Open MPI launch).")
flags.DEFINE_integer("num_processes", None, "Multi-process: number of processes.")
flags.DEFINE_integer("process_id", None, "Multi-process: this process's index.")
flags.mark_flags_as_required(["workdir"])


def _config_file(argv: list[str]) -> str | None:
  """The config file named by ``--config=PATH[:ARG]`` (or ``--config PATH``) in ``argv``."""
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      return arg.split("=", 1)[1].split(":", 1)[0]
    if arg == "--config" and i + 1 < len(argv):
      return argv[i + 1].split(":", 1)[0]
  return None


def _config_error(error: Exception, argv: list[str]) -> str:
  """The one line that says what is wrong with the config flags ``argv`` that ``error`` (raised
  while parsing them) rejected: a flag error, an override of a field the config does not have
  (with the nearest field), or a value that does not fit its field."""
  if isinstance(error, flags.Error):
    return f"error: {error}\nPass --help to see the flags."
  if isinstance(error, AttributeError | KeyError):
    # ml_collections nests a KeyError whose text is "'name'" plus, for a close match,
    # '\nDid you mean "other" instead of "name"?'.
    inner: object = error
    while isinstance(inner, BaseException) and inner.args:
      inner = inner.args[0]
    text = str(inner)
    name = re.match(r"'?([^'\n]*)", text).group(1)
    field = next((a for a in argv if a.startswith("--config.")
                  and a.split("=")[0].split(".")[-1] == name), "--config")
    close = re.search(r'Did you mean "([^"]+)"', text)
    hint = f" (did you mean {close.group(1)!r}?)" if close else ""
    return (f"error: {field}: the config has no field {name!r}{hint}; the config file lists "
            "every field")
  field = next((a for a in argv if a.startswith("--config.")), "--config")
  return f"error: {field} does not fit the config: {error}"


_CONFIG_ERRORS = (flags.Error, AttributeError, KeyError, TypeError, ValueError)


def _missing_config_file(argv: list[str]) -> str | None:
  """The line that says the config file named in ``argv`` does not exist, or None."""
  path = _config_file(argv)
  if path is not None and not os.path.isfile(path):
    return (f"config file {path} not found; the configs are in configs/ (e.g. "
            "--config=configs/cifar10_regnet20.py)")
  return None


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with a missing config file and config overrides that do not fit the
  config (an unknown field, a value of the wrong type) reported in one line."""
  missing = _missing_config_file(argv[1:])
  if missing:
    sys.exit(f"error: {missing}")
  try:
    return FLAGS(argv)
  except _CONFIG_ERRORS as e:
    sys.exit(_config_error(e, argv[1:]))


def parse_config(args: list[str]) -> ml_collections.ConfigDict:
  """The config that ``main.py`` builds from its config flags ``args`` (``--config=PATH[:ARG]``
  and ``--config.FIELD=VALUE`` overrides, as typed on its command line), parsed by the same
  parser without touching this process's own flags.

  Raises:
    ValueError: the one line :func:`parse_flags` prints for them (a missing config file, an
      unknown field, a value that does not fit, a config file that fails).
  """
  missing = _missing_config_file(args)
  if missing:
    raise ValueError(missing)
  argv = ["main.py", *args]
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "Training configuration file.",
                                  flag_values=flag_values, lock_config=True, sys_argv=argv)
  try:
    flag_values(argv)
  except _CONFIG_ERRORS as e:
    raise ValueError(_config_error(e, args).removeprefix("error: ").split("\n")[0]) from None
  return flag_values.config


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  console.quiet()
  logging.info("Starting (%s): loading JAX and the data pipeline...", FLAGS.mode)
  if FLAGS.compilation_cache and not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    import jax
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(FLAGS.compilation_cache))
  from regnet_jax.train import distributed
  distributed.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes,
                                     FLAGS.process_id)
  from regnet_jax.data import pipeline
  from regnet_jax.train import checkpoint, evaluate, loop

  try:
    if FLAGS.mode == "eval":
      evaluate.evaluate_workdir(FLAGS.workdir, FLAGS.step, FLAGS.precise_bn)
    elif FLAGS.config is None:
      raise ValueError("--config is required for training (e.g. --config=configs/default.py)")
    else:
      loop.train_and_evaluate(FLAGS.config, FLAGS.workdir, deadline_s=FLAGS.deadline_s,
                              allow_config_change=FLAGS.allow_config_change)
    distributed.finished()
  except (ValueError, FileNotFoundError, FloatingPointError, OSError,
          pipeline.DatasetNotFoundError, checkpoint.CorruptCheckpointError) as e:
    sys.exit(f"error: {e}")


def run() -> None:
  """The command: the CPU backend's process settings, then the flags and :func:`main`."""
  from regnet_jax.cpu import process

  process.reexec_with_cpu_settings()  # CPU backend only: huge pages, XLA:CPU's convolutions
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  run()
