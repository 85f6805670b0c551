"""Train state and data-parallel train/eval steps: what one step of training computes.

Data parallelism is ``jax.jit`` over a one-axis device mesh (``'data'``): every batch is
sharded along its first axis over all devices of all processes, the train state is replicated,
and XLA inserts the gradient all-reduce (pmap's semantics, written with ``NamedSharding``).
BatchNorm statistics are computed over the *global* batch (XLA all-reduces the moments), i.e.
synchronised BatchNorm: results do not depend on the device count.

Batches hold pixels on the 0-255 scale; the steps normalise them on the device
(:func:`regnet_jax.data.normalize`). Needs neither TensorFlow, clu nor ml_collections (only
annotations name ``ConfigDict``): the loop around these steps is in :mod:`regnet_jax.train.loop`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from regnet_jax import cpu, models
from regnet_jax.data import datasets

if TYPE_CHECKING:  # annotations only: the steps also run where ml_collections is missing
  import ml_collections


class TrainState(train_state.TrainState):
  """Step, params, optimizer state and BatchNorm statistics."""

  batch_stats: Any = None



def make_model(name: str, num_classes: int, dtype: Any = jnp.float32, cell_impl: str = "auto",
               conv_grad: str = "auto", **model_args: Any) -> models.Network:
  """:func:`regnet_jax.models.create_model` with the implementation that ``cell_impl`` and
  ``conv_grad`` choose (:func:`regnet_jax.cpu.implementations`: the CPU kernels only where
  the backend is the CPU), chosen here, once, before anything is traced."""
  model = models.create_model(name, num_classes, dtype=dtype, **model_args)
  return model.clone(**cpu.implementations(cell_impl, conv_grad, dtype, model.cell_conv))


def compute_dtype(half_precision: bool | None) -> Any:
  """bfloat16 if ``half_precision``; for None, bfloat16 on GPUs and TPUs and float32 on CPUs
  (where bfloat16 is slow)."""
  if half_precision is None:
    half_precision = jax.default_backend() in ("gpu", "tpu")
  return jnp.bfloat16 if half_precision else jnp.float32


def build_model(config: ml_collections.ConfigDict, num_classes: int,
                reference: bool = False) -> models.Network:
  """The config's model (:func:`make_model` of ``config.model_args``) in the compute dtype of
  ``half_precision`` (:func:`compute_dtype`); ``reference``: the pure-JAX implementation on
  every backend (what parameter and MAC counts read)."""
  args = dict(config.model_args.to_dict()) if "model_args" in config else {}
  args = {k: tuple(v) if isinstance(v, list) else v for k, v in args.items()}
  if reference:
    args.update(cell_impl="reference", conv_grad="reference")
  dtype = compute_dtype(config.half_precision)
  return make_model(config.model, num_classes, dtype, **args)


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


def create_train_state(model: models.Network, tx: optax.GradientTransformation, seed: int,
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


def eval_step(state: TrainState, batch: dict[str, jax.Array], spec: datasets.DatasetSpec
              ) -> dict[str, jax.Array]:
  """Sums over the real (``mask == 1``) examples of a global batch (``image``, ``label``,
  ``mask``): loss, top-1 and top-5 hits, count."""
  logits = state.apply_fn({"params": state.params, "batch_stats": state.batch_stats},
                          datasets.normalize(batch["image"], spec), train=False)
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

  def shard(self, batch: dict[str, Any]) -> dict[str, jax.Array]:
    """This process's slice of a global batch (numpy) -> global arrays sharded along 'data';
    global arrays already on the devices stay as they are."""
    return {k: v if isinstance(v, jax.Array) else
            jax.make_array_from_process_local_data(self.data_sharding, v)
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
    """The jitted train and eval steps of ``config``: state replicated, batches sharded."""
    spec = datasets.get_spec(config.dataset)
    step = functools.partial(train_step, spec=spec, label_smoothing=config.label_smoothing,
                             schedule=schedule)
    p_train = jax.jit(step, in_shardings=(self.replicated, self.data_sharding),
                      out_shardings=(self.replicated, self.replicated), donate_argnums=0)
    p_eval = jax.jit(functools.partial(eval_step, spec=spec),
                     in_shardings=(self.replicated, self.data_sharding),
                     out_shardings=self.replicated)
    return p_train, p_eval


PreciseBN = Callable[[dict[str, Any], Iterator[dict[str, Any]], int], Any]


def precise_bn(trainer: Trainer, model: models.Network, spec: datasets.DatasetSpec
               ) -> PreciseBN:
  """``recompute(variables, batches, num_batches) -> batch_stats``: BatchNorm statistics
  recomputed for the current weights ("precise BN", as in pycls), every BN layer's mean and
  variance averaged over ``num_batches`` training batches, in place of the running averages,
  which lag behind weights that change fast. Compiled once, however often it is called."""
  per_batch = model.clone(bn_momentum=0.0)  # the "running" update is then the batch's own

  @functools.partial(jax.jit, in_shardings=(trainer.replicated, trainer.data_sharding),
                     out_shardings=trainer.replicated)
  def stats(variables, images):
    _, updates = per_batch.apply(variables, datasets.normalize(images, spec), train=True,
                                 mutable=["batch_stats"])
    return updates["batch_stats"]

  def recompute(variables: dict[str, Any], batches: Iterator[dict[str, Any]],
                num_batches: int) -> Any:
    total, count = None, 0
    for _, batch in zip(range(num_batches), batches, strict=False):
      s = stats(variables, trainer.shard({"image": batch["image"]})["image"])
      total, count = (s if total is None else jax.tree.map(jnp.add, total, s)), count + 1
    if not count:
      raise ValueError("precise BN needs at least one training batch")
    return jax.tree.map(lambda t: t / count, total)

  return recompute
