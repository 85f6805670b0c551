"""The one validation pass over a training config: every rule once, each a clear line.

It reads and builds nothing, so a config that cannot run fails at once. The model's own
arguments and the implementation choices are checked where the model is built, once, right
after (:func:`regnet_jax.train.factory.build_model`), still before any data is read.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from regnet_jax import data, models
from regnet_jax.checks import check_choice
from regnet_jax.train.optim import LR_SCHEDULES

if TYPE_CHECKING:
  import ml_collections


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError with one clear line for a config that cannot run."""
  models.get_spec(config.model)
  data.check_config(config)
  check_choice("input", config.input, data.INPUTS)
  check_choice("input_sharding", config.input_sharding, data.SHARDINGS)
  check_choice("lr_schedule", config.lr_schedule, LR_SCHEDULES)
  for field in ("batch_size", "learning_rate"):
    if not config[field] > 0:
      raise ValueError(f"{field} must be positive, got {config[field]!r}")
  if config.num_train_steps <= 0 and not config.num_epochs > 0:
    raise ValueError(f"num_epochs must be positive (or set num_train_steps), got "
                     f"{config.num_epochs!r}")
  if config.eval_precise_bn_batches < 0:
    raise ValueError(f"eval_precise_bn_batches must be >= 0 (0: off), got "
                     f"{config.eval_precise_bn_batches!r}")
