"""The train state and the train step: what one step of training computes.

The step is compiled for a :class:`~regnet_jax.train.mesh.DataParallel` mesh: the state
replicated, the global batch sharded over every device (synchronised BatchNorm, results
independent of the device count). Batches hold pixels on the 0-255 scale; the step normalises
them on the device (:func:`regnet_jax.data.normalize`). Needs neither TensorFlow,
clu nor ml_collections: the loop around the step is in :mod:`regnet_jax.train.loop`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax.training import train_state

from regnet_jax import models
from regnet_jax.data import datasets
from regnet_jax.train.mesh import DataParallel


class TrainState(train_state.TrainState):
  """Step, params, optimizer state and BatchNorm statistics."""

  batch_stats: Any = None


def create_train_state(model: models.Network, tx: optax.GradientTransformation, seed: int,
                       image_size: int) -> TrainState:
  """The initial state (on the default device; place it with
  :meth:`DataParallel.replicate`)."""
  @jax.jit
  def init(rng):
    variables = model.init(rng, jnp.zeros((1, image_size, image_size, 3)), train=False)
    return TrainState.create(apply_fn=model.apply, params=variables["params"], tx=tx,
                             batch_stats=variables["batch_stats"])
  return init(jax.random.PRNGKey(seed))


def cross_entropy(logits: jax.Array, labels: jax.Array, num_classes: int,
                  smoothing: float = 0.0) -> jax.Array:
  """Per-example cross-entropy with optional label smoothing. ``[B, C], [B] -> [B]``."""
  targets = optax.smooth_labels(jax.nn.one_hot(labels, num_classes), smoothing)
  return optax.softmax_cross_entropy(logits, targets)


def train_step(state: TrainState, batch: dict[str, jax.Array], spec: datasets.DatasetSpec,
               label_smoothing: float, schedule: optax.Schedule
               ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One SGD step on a global batch (``image [B, S, S, 3]`` pixels of dataset ``spec``,
  ``label [B]``); returns the new state and the batch's mean metrics."""
  images = datasets.normalize(batch["image"], spec)

  def loss_fn(params):
    logits, updates = state.apply_fn({"params": params, "batch_stats": state.batch_stats},
                                     images, train=True, mutable=["batch_stats"])
    loss = cross_entropy(logits, batch["label"], logits.shape[-1], label_smoothing).mean()
    return loss, (logits, updates["batch_stats"])

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
  metrics = {"train_loss": loss,
             "train_accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"]),
             "learning_rate": schedule(state.step - 1)}
  return state, metrics


def compile_train_step(dp: DataParallel, spec: datasets.DatasetSpec, label_smoothing: float,
                       schedule: optax.Schedule) -> Callable:
  """``train_step`` jitted over ``dp``'s mesh: ``(state, batch) -> (state, metrics)``, the
  state replicated (and donated), the batch sharded."""
  step = functools.partial(train_step, spec=spec, label_smoothing=label_smoothing,
                           schedule=schedule)
  return jax.jit(step, in_shardings=(dp.replicated, dp.data_sharding),
                 out_shardings=(dp.replicated, dp.replicated), donate_argnums=0)
