"""Train state and data-parallel train/eval steps: what one step of training computes.

Data parallelism is ``jax.jit`` over a one-axis device mesh (``'data'``): every batch is
sharded along its first axis over all devices of all processes, the train state is replicated,
and XLA inserts the gradient all-reduce (pmap's semantics, written with ``NamedSharding``).
BatchNorm statistics are computed over the *global* batch (XLA all-reduces the moments), i.e.
synchronised BatchNorm: results do not depend on the device count.

Needs neither TensorFlow nor clu: the loop around these steps is in ``regnet_jax.train``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax.training import train_state
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from regnet_jax import models


class TrainState(train_state.TrainState):
  """Step, params, optimizer state and BatchNorm statistics."""

  batch_stats: Any = None



def build_model(config: ml_collections.ConfigDict, num_classes: int) -> models._Network:
  """The config's model, with bfloat16 compute if ``half_precision``."""
  args = dict(config.model_args.to_dict()) if "model_args" in config else {}
  args = {k: tuple(v) if isinstance(v, list) else v for k, v in args.items()}
  dtype = jnp.bfloat16 if config.half_precision else jnp.float32
  return models.create_model(config.model, num_classes, dtype=dtype, **args)


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
  if config.lr_schedule == "cosine":
    main = optax.cosine_decay_schedule(config.learning_rate, max(num_steps - warmup, 1))
  elif config.lr_schedule == "step":
    main = optax.piecewise_constant_schedule(config.learning_rate, {
        int(e * steps_per_epoch) - warmup: config.lr_decay for e in config.lr_boundaries})
  else:
    raise ValueError(f"lr_schedule={config.lr_schedule!r} is not valid; choose step or cosine")
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


def create_train_state(model: models._Network, tx: optax.GradientTransformation, seed: int,
                       image_size: int) -> TrainState:
  """Initial state (on the default device; shard it with :func:`replicate`)."""
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


def train_step(state: TrainState, batch: dict[str, jax.Array], label_smoothing: float,
               schedule: optax.Schedule) -> tuple[TrainState, dict[str, jax.Array]]:
  """One SGD step on a global batch; returns the new state and the batch's mean metrics."""
  def loss_fn(params):
    logits, updates = state.apply_fn({"params": params, "batch_stats": state.batch_stats},
                                     batch["image"], train=True, mutable=["batch_stats"])
    loss = cross_entropy(logits, batch["label"], logits.shape[-1], label_smoothing).mean()
    return loss, (logits, updates["batch_stats"])

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
  metrics = {"train_loss": loss,
             "train_accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"]),
             "learning_rate": schedule(state.step - 1)}
  return state, metrics


def eval_step(state: TrainState, batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """Sums over the real (mask == 1) examples of a global batch: loss, top-1/5 hits, count."""
  logits = state.apply_fn({"params": state.params, "batch_stats": state.batch_stats},
                          batch["image"], train=False)
  mask = batch["mask"]
  top5 = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
  return {
      "loss": jnp.sum(cross_entropy(logits, batch["label"], logits.shape[-1]) * mask),
      "top1": jnp.sum((top5[:, 0] == batch["label"]) * mask),
      "top5": jnp.sum(jnp.any(top5 == batch["label"][:, None], axis=-1) * mask),
      "count": jnp.sum(mask),
  }


def eval_summary(sums: dict[str, Any]) -> dict[str, float]:
  """``eval_step`` sums -> mean loss and top-1/top-5 error."""
  count = float(sums["count"])
  return {"eval_loss": float(sums["loss"]) / count,
          "eval_top1_error": 1.0 - float(sums["top1"]) / count,
          "eval_top5_error": 1.0 - float(sums["top5"]) / count}


class Trainer:
  """Compiled, data-parallel steps over a mesh of ``devices``."""

  def __init__(self, devices: list | None = None):
    self.devices = list(devices or jax.devices())
    self.mesh = Mesh(np.asarray(self.devices), ("data",))
    self.data_sharding = NamedSharding(self.mesh, PartitionSpec("data"))
    self.replicated = NamedSharding(self.mesh, PartitionSpec())

  def check_batch_size(self, global_batch: int) -> None:
    n = len(self.devices)
    if global_batch <= 0 or global_batch % n:
      raise ValueError(f"batch_size={global_batch} must be a positive multiple of the device "
                       f"count ({n}); e.g. --config.batch_size={max(n, global_batch // n * n)}")

  def replicate(self, tree: Any) -> Any:
    return jax.device_put(tree, self.replicated)

  def shard(self, batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """This process's slice of a global batch -> global arrays sharded along 'data'."""
    return {k: jax.make_array_from_process_local_data(self.data_sharding, v)
            for k, v in batch.items()}

  def prefetch(self, batches: Iterator[dict], size: int) -> Iterator[dict[str, jax.Array]]:
    """Places up to ``size`` batches on the devices ahead of their use."""
    queue = []
    for batch in batches:
      queue.append(self.shard(batch))
      if len(queue) > size:
        yield queue.pop(0)
    yield from queue

  def compile_steps(self, config: ml_collections.ConfigDict, schedule: optax.Schedule
                    ) -> tuple[Callable, Callable]:
    step = functools.partial(train_step, label_smoothing=config.label_smoothing,
                             schedule=schedule)
    p_train = jax.jit(step, in_shardings=(self.replicated, self.data_sharding),
                      out_shardings=(self.replicated, self.replicated), donate_argnums=0)
    p_eval = jax.jit(eval_step, in_shardings=(self.replicated, self.data_sharding),
                     out_shardings=self.replicated)
    return p_train, p_eval


PreciseBN = Callable[[dict[str, Any], Iterator[dict[str, np.ndarray]], int], Any]


def precise_bn(trainer: Trainer, model: models._Network) -> PreciseBN:
  """``recompute(variables, batches, num_batches) -> batch_stats``: BatchNorm statistics
  recomputed for the current weights ("precise BN", as in pycls), every BN layer's mean and
  variance averaged over ``num_batches`` training batches, in place of the running averages,
  which lag behind weights that change fast. Compiled once, however often it is called."""
  per_batch = model.clone(bn_momentum=0.0)  # the "running" update is then the batch's own

  @functools.partial(jax.jit, in_shardings=(trainer.replicated, trainer.data_sharding),
                     out_shardings=trainer.replicated)
  def stats(variables, images):
    _, updates = per_batch.apply(variables, images, train=True, mutable=["batch_stats"])
    return updates["batch_stats"]

  def recompute(variables: dict[str, Any], batches: Iterator[dict[str, np.ndarray]],
                num_batches: int) -> Any:
    total, count = None, 0
    for _, batch in zip(range(num_batches), batches, strict=False):
      s = stats(variables, trainer.shard({"image": batch["image"]})["image"])
      total, count = (s if total is None else jax.tree.map(jnp.add, total, s)), count + 1
    if not count:
      raise ValueError("precise BN needs at least one training batch")
    return jax.tree.map(lambda t: t / count, total)

  return recompute
