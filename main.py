"""Trains or evaluates a RegNet / ResNet.

    python main.py --config=configs/imagenet_regnet50.py --workdir=DIR
    python main.py --config=configs/cifar.py:regnet20_gru,cifar100 --workdir=DIR
    python main.py --workdir=DIR --mode=eval [--step=N]

Config files are Python code and are executed: only use configs you trust.
"""

import logging
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training configuration file.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints and TensorBoard events.")
flags.DEFINE_enum("mode", "train", ["train", "eval"], "Train (resuming) or evaluate.")
flags.DEFINE_integer("step", None, "Eval: checkpoint step to evaluate (default: newest).")
flags.DEFINE_integer("precise_bn", 0, "Eval: first recompute BatchNorm statistics over this "
                     "many training batches (0: the running averages).")
flags.DEFINE_string("coordinator_address", None, "Multi-process: host:port of process 0 "
                    "(default: none, or detected from a SLURM / Open MPI launch).")
flags.DEFINE_integer("num_processes", None, "Multi-process: number of processes.")
flags.DEFINE_integer("process_id", None, "Multi-process: this process's index.")
flags.mark_flags_as_required(["workdir"])


def _quiet_orbax(record: logging.LogRecord) -> bool:
  """Keeps orbax's per-save INFO lines off the console; warnings and errors still show."""
  return "orbax" not in record.pathname or record.levelno >= logging.WARNING


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with config overrides that do not fit the config (an unknown field,
  a value of the wrong type) reported in one line instead of a traceback."""
  try:
    return FLAGS(argv)
  except flags.Error as e:
    sys.exit(f"error: {e}\nPass --help to see the flags.")
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    field = next((a for a in argv[1:] if a.startswith("--config.")), "--config")
    sys.exit(f"error: {field} does not fit the config ({type(e).__name__}: {e}); the config "
             "file lists every field")


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  absl_logging.get_absl_handler().addFilter(_quiet_orbax)
  from regnet_jax import host
  host.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  from regnet_jax import checkpoint, evaluate, input_pipeline, train

  try:
    if FLAGS.mode == "eval":
      evaluate.evaluate_workdir(FLAGS.workdir, FLAGS.step, FLAGS.precise_bn)
    elif FLAGS.config is None:
      raise ValueError("--config is required for training (e.g. --config=configs/default.py)")
    else:
      train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except (ValueError, FileNotFoundError, FloatingPointError, OSError,
          input_pipeline.DatasetNotFoundError, checkpoint.CorruptCheckpointError) as e:
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  from regnet_jax import host

  host.reexec_with_cpu_settings()  # huge pages, XLA:CPU's own convolutions (regnet_jax/host.py)
  app.run(main, flags_parser=parse_flags)
