"""Fine-tuning: a new run's first state from a trained run's weights (``config.init_from``).

``init_from`` is a training workdir (its newest checkpoint), ``WORKDIR:STEP``, or a weights
file of ``python -m regnet_jax.export``. The new run takes every parameter and BatchNorm
statistic from it, except the classifier (:data:`regnet_jax.models.CLASSIFIER`) when the class
counts differ, which keeps its random initialisation; any other difference of names or shapes
(another model, other model arguments) is refused, naming the parameter. The optimizer's state
is the fresh one (SGD's momentum: zeros), and the step 0.
"""

from __future__ import annotations

import os
from typing import Any

from absl import logging
from flax import traverse_util

from regnet_jax import models
from regnet_jax.train import checkpoint, weights
from regnet_jax.train.mesh import DataParallel
from regnet_jax.train.steps import TrainState


def parse(init_from: str) -> tuple[str, int | None]:
  """``'WORKDIR:STEP'`` -> ``(WORKDIR, STEP)``; a workdir or a file -> ``(it, None)``."""
  path, colon, step = init_from.rpartition(":")
  if colon and step.isdigit() and os.path.isdir(path):
    return path, int(step)
  return init_from, None


def transfer(source: weights.Variables, fresh: weights.Variables, source_classes: int,
             num_classes: int, init_from: str) -> weights.Variables:
  """``source``'s variables for the model whose initial variables are ``fresh``: all of
  them, but the classifier's (``fresh``'s) when ``source_classes != num_classes``.

  Raises:
    ValueError: another parameter is missing on one side or differs in shape, naming it.
  """
  src, new = (traverse_util.flatten_dict(v) for v in (source, fresh))
  # The classifier's kernel [features, classes] and bias [classes]: re-initialised when only
  # the class axis differs.
  head = {name for name in new if num_classes != source_classes
          and name[:2] == ("params", models.CLASSIFIER) and name in src
          and src[name].shape[:-1] == new[name].shape[:-1]}
  kept = {name: value for name, value in src.items() if name not in head}
  difference = checkpoint.first_difference(
      traverse_util.unflatten_dict(kept),
      traverse_util.unflatten_dict({k: v for k, v in new.items() if k not in head}),
      init_from, "this config's model")
  if difference is not None:
    raise ValueError(f"cannot initialise from {init_from}: {difference}; fine-tuning needs "
                     "the source's model and model_args (only the class count may differ)")
  return traverse_util.unflatten_dict({**kept, **{name: new[name] for name in head}})


def initial_state(fresh: TrainState, num_classes: int, init_from: str, dp: DataParallel
                  ) -> tuple[TrainState, dict[str, Any]]:
  """``fresh`` (a new run's initial state, for ``num_classes`` classes) with the parameters
  and BatchNorm statistics of ``init_from``, read onto ``dp``'s devices; and where they come
  from, for ``runs.jsonl``: the source's absolute path and :attr:`WeightsInfo.source`
  (workdir, step, code version, precise BN batches). Logs one line saying what was taken.

  Raises:
    FileNotFoundError: no such workdir, checkpoint or file.
    ValueError: not a weights file, or a model that does not fit (:func:`transfer`).
  """
  path, step = parse(init_from)
  try:
    if os.path.isdir(path):
      _, source, info = weights.load_workdir(path, step, dp=dp)
    else:
      _, source, info = weights.load_pretrained(path)
  except (FileNotFoundError, ValueError) as e:
    raise type(e)(f"init_from={init_from!r}: {e}") from None
  variables = transfer(source, {"params": fresh.params, "batch_stats": fresh.batch_stats},
                       info.num_classes, num_classes, init_from)
  reinitialised = (f" but the classifier ({models.CLASSIFIER}), re-initialised for {num_classes}"
                   f" classes (the source has {info.num_classes})"
                   if info.num_classes != num_classes else "")
  logging.info("Initialising from %s (step %d): every parameter and BatchNorm statistic%s; "
               "a fresh optimizer", init_from, info.source["step"], reinitialised)
  state = fresh.replace(params=variables["params"], batch_stats=variables["batch_stats"])
  return state, {"path": os.path.abspath(path), **info.source}
