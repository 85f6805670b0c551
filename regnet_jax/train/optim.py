"""The optimizer: SGD with momentum and weight decay, and the learning-rate schedule."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import jax
import optax

if TYPE_CHECKING:
  import ml_collections

LR_SCHEDULES = ("step", "cosine")


def weight_decay_mask(params: Any) -> Any:
  """True for kernels (conv, dense and cell gate weights); False for BN scales and biases.

  Decided by leaf name, so the extra leading axis that ``nn.scan`` gives stacked parameters
  does not matter."""
  decayed = {"kernel", "pointwise", "depthwise"}
  return jax.tree_util.tree_map_with_path(
      lambda path, _: getattr(path[-1], "key", None) in decayed, params)


def learning_rate_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int,
                           num_steps: int) -> optax.Schedule:
  """'step': ``lr * lr_decay**k`` after the k-th boundary epoch; 'cosine': cosine decay to 0.
  Both start with ``warmup_epochs`` of linear warm-up from 0."""
  warmup = int(config.warmup_epochs * steps_per_epoch)
  if config.lr_schedule == "cosine":  # (validated: 'cosine' or 'step')
    main = optax.cosine_decay_schedule(config.learning_rate, max(num_steps - warmup, 1))
  else:
    main = optax.piecewise_constant_schedule(config.learning_rate, {
        int(e * steps_per_epoch) - warmup: config.lr_decay for e in config.lr_boundaries})
  if warmup == 0:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, config.learning_rate, warmup), main],
                              [warmup])


def create_optimizer(config: ml_collections.ConfigDict, schedule: optax.Schedule
                     ) -> optax.GradientTransformation:
  """SGD with momentum; weight decay added to the gradient first, as PyTorch's SGD does."""
  return optax.chain(
      optax.add_decayed_weights(config.weight_decay, mask=weight_decay_mask),
      optax.sgd(schedule, momentum=config.momentum, nesterov=config.nesterov))
