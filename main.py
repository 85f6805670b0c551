"""Trains or evaluates a RegNet / ResNet.

    python main.py --config=configs/imagenet_regnet50.py --workdir=DIR
    python main.py --config=configs/cifar.py:regnet20_gru,cifar100 --workdir=DIR
    python main.py --workdir=DIR --mode=eval [--step=N]

Config files are Python code and are executed: only use configs you trust.
"""

import os
import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from regnet_jax import console

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


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with a missing config file and config overrides that do not fit the
  config (an unknown field, a value of the wrong type) reported in one line."""
  path = _config_file(argv[1:])
  if path is not None and not os.path.isfile(path):
    sys.exit(f"error: config file {path} not found; the configs are in configs/ (e.g. "
             "--config=configs/cifar10_regnet20.py)")
  try:
    return FLAGS(argv)
  except flags.Error as e:
    sys.exit(f"error: {e}\nPass --help to see the flags.")
  except (AttributeError, KeyError) as e:
    # ml_collections nests a KeyError whose text is "'name'" plus, for a close match,
    # '\nDid you mean "other" instead of "name"?'.
    inner: object = e
    while isinstance(inner, BaseException) and inner.args:
      inner = inner.args[0]
    text = str(inner)
    name = re.match(r"'?([^'\n]*)", text).group(1)
    field = next((a for a in argv[1:] if a.startswith("--config.")
                  and a.split("=")[0].split(".")[-1] == name), "--config")
    close = re.search(r'Did you mean "([^"]+)"', text)
    hint = f" (did you mean {close.group(1)!r}?)" if close else ""
    sys.exit(f"error: {field}: the config has no field {name!r}{hint}; the config file lists "
             "every field")
  except (TypeError, ValueError) as e:
    field = next((a for a in argv[1:] if a.startswith("--config.")), "--config")
    sys.exit(f"error: {field} does not fit the config: {e}")


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


if __name__ == "__main__":
  from regnet_jax.cpu import process

  process.reexec_with_cpu_settings()  # CPU backend only: huge pages, XLA:CPU's convolutions
  app.run(main, flags_parser=parse_flags)
