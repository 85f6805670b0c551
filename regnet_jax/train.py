"""Train state, data-parallel train/eval steps, and the training loop.

Data parallelism is ``jax.jit`` over a one-axis device mesh (``'data'``): every batch is
sharded along its first axis over all devices of all processes, the train state is replicated,
and XLA inserts the gradient all-reduce (pmap's semantics, written with ``NamedSharding``).
BatchNorm statistics are computed over the *global* batch (XLA all-reduces the moments), i.e.
synchronised BatchNorm: results do not depend on the device count.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from clu import metric_writers, periodic_actions
from flax.training import train_state
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from regnet_jax import checkpoint, input_pipeline, models


class TrainState(train_state.TrainState):
  """Step, params, optimizer state and BatchNorm statistics."""

  batch_stats: Any = None


@dataclasses.dataclass(frozen=True)
class Setup:
  """What a run derives from its config and dataset."""

  model: models._Network
  spec: input_pipeline.DatasetSpec
  steps_per_epoch: int
  num_steps: int


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


def setup(config: ml_collections.ConfigDict, builder: Any) -> Setup:
  spec = input_pipeline.get_spec(config.dataset)
  model = build_model(config, spec.num_classes)
  steps = input_pipeline.steps_per_epoch(builder, spec, config.batch_size)
  num_steps = (config.num_train_steps if config.num_train_steps > 0
               else math.ceil(config.num_epochs * steps))
  return Setup(model, spec, steps, num_steps)


def evaluate(trainer: Trainer, p_eval: Callable, state: TrainState, builder: Any,
             spec: input_pipeline.DatasetSpec, batch_size: int) -> dict[str, float]:
  """Top-1/top-5 error and loss over every example of the eval split."""
  sums = None
  for batch in trainer.prefetch(input_pipeline.eval_batches(builder, spec, batch_size), 2):
    out = p_eval(state, batch)
    sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
  sums = jax.device_get(sums)
  count = float(sums["count"])
  return {"eval_loss": float(sums["loss"]) / count,
          "eval_top1_error": 1.0 - float(sums["top1"]) / count,
          "eval_top5_error": 1.0 - float(sums["top5"]) / count,
          "eval_examples": count}


def precise_batch_stats(trainer: Trainer, model: models._Network, variables: dict[str, Any],
                        batches: Iterator[dict[str, np.ndarray]], num_batches: int) -> Any:
  """BatchNorm statistics recomputed for the current weights ("precise BN", as in pycls):
  every BN layer's mean and variance averaged over ``num_batches`` training batches, in place
  of the running averages, which lag behind weights that change fast."""
  per_batch = model.clone(bn_momentum=0.0)  # the "running" update is then the batch's own

  @functools.partial(jax.jit, in_shardings=(trainer.replicated, trainer.data_sharding),
                     out_shardings=trainer.replicated)
  def stats(variables, images):
    _, updates = per_batch.apply(variables, images, train=True, mutable=["batch_stats"])
    return updates["batch_stats"]

  total = None
  for _, batch in zip(range(num_batches), batches, strict=False):
    s = stats(variables, trainer.shard({"image": batch["image"]})["image"])
    total = s if total is None else jax.tree.map(jnp.add, total, s)
  return jax.tree.map(lambda t: t / num_batches, total)


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError with one clear line for a config that cannot run."""
  build_model(config, input_pipeline.get_spec(config.dataset).num_classes)  # bad model args
  for field in ("batch_size", "learning_rate"):
    if not config[field] > 0:
      raise ValueError(f"{field} must be positive, got {config[field]!r}")
  if config.num_train_steps <= 0 and not config.num_epochs > 0:
    raise ValueError(f"num_epochs must be positive (or set num_train_steps), got "
                     f"{config.num_epochs!r}")
  if config.lr_schedule not in ("step", "cosine"):
    raise ValueError(f"lr_schedule={config.lr_schedule!r} is not valid; choose step or cosine")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       devices: list | None = None) -> TrainState:
  """Trains ``config`` in ``workdir``, resuming from its newest checkpoint if there is one.

  Writes TensorBoard events, ``config.json`` and orbax checkpoints to ``workdir``.
  """
  validate_config(config)
  trainer = Trainer(devices)
  trainer.check_batch_size(config.batch_size)
  builder = input_pipeline.get_builder(config.dataset, config.data_dir)
  run = setup(config, builder)

  schedule = learning_rate_schedule(config, run.steps_per_epoch, run.num_steps)
  state = create_train_state(run.model, create_optimizer(config, schedule), config.seed,
                             run.spec.image_size)
  checkpoint.check_workdir(workdir, sum(x.nbytes for x in jax.tree.leaves(state)),
                           config.keep_checkpoints)
  ckpt = checkpoint.Checkpointer(workdir, config.keep_checkpoints)
  state = trainer.replicate(ckpt.restore_latest(state, trainer.replicated) or state)
  checkpoint.write_config(workdir, config)
  start = int(state.step)

  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  if start == 0:
    writer.write_hparams(_flat_hparams(config))
  p_train, p_eval = trainer.compile_steps(config, schedule)
  every = lambda n: n if n > 0 else run.steps_per_epoch
  log_every, eval_every, ckpt_every = (every(config.log_every_steps),
                                       every(config.eval_every_steps),
                                       every(config.checkpoint_every_steps))
  report = periodic_actions.ReportProgress(num_train_steps=run.num_steps, writer=writer)
  batches = trainer.prefetch(input_pipeline.train_batches(
      builder, run.spec, config.batch_size, config.seed, start, config.shuffle_buffer,
      config.skip_bad_images),
      config.prefetch_batches)

  pending = []
  timer = time.perf_counter()
  try:
    with StopOnSignal() as stop:
      for step in range(start + 1, run.num_steps + 1):
        state, metrics = p_train(state, next(batches))
        pending.append(metrics)
        report(step)
        last = step == run.num_steps or stop.signal is not None
        if step % log_every == 0 or last:
          summary = _mean_finite(pending, step, workdir)
          elapsed, timer = time.perf_counter() - timer, time.perf_counter()
          summary["train_images_per_sec"] = len(pending) * config.batch_size / elapsed
          writer.write_scalars(step, summary)
          pending = []
        if step % eval_every == 0 or step == run.num_steps:
          writer.write_scalars(step, evaluate(trainer, p_eval, state, builder, run.spec,
                                              config.batch_size))
          timer = time.perf_counter()
        if step % ckpt_every == 0 or last:
          if pending:  # never save parameters that produced a non-finite loss
            _mean_finite(pending, step, workdir)
          if not _all_finite(state.params):
            raise FloatingPointError(f"non-finite parameters after step {step}; the last good "
                                     f"checkpoint in {workdir} is kept (lower the learning rate?)")
          ckpt.save(step, state)
        if stop.signal is not None:
          logging.warning("Stopped by %s at step %d; checkpoint saved in %s. Run the same "
                          "command to resume.", stop.signal, step, workdir)
          break
  finally:
    ckpt.wait()  # an in-flight save completes even when stopping on an error
  writer.flush()
  return state


class StopOnSignal:
  """Turns SIGTERM and SIGINT (preemption, Ctrl-C) into a request to stop after the current
  step: the loop then saves a checkpoint and returns. Only in the main thread."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __enter__(self) -> StopOnSignal:
    self.signal: str | None = None
    self._previous = {}
    if threading.current_thread() is threading.main_thread():
      self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
    return self

  def _handle(self, signum: int, frame: Any) -> None:
    del frame
    self.signal = signal.Signals(signum).name

  def __exit__(self, *exc_info: Any) -> None:
    for s, handler in self._previous.items():
      signal.signal(s, handler)


@jax.jit
def _all_finite(tree: Any) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def _mean_finite(pending: list[dict], step: int, workdir: str) -> dict[str, float]:
  """Mean of the pending steps' metrics; FloatingPointError naming the steps if the loss
  is not finite (the newest checkpoint in ``workdir``, saved before them, is kept)."""
  summary = {k: float(np.mean([m[k] for m in jax.device_get(pending)])) for k in pending[0]}
  if not np.isfinite(summary["train_loss"]):
    raise FloatingPointError(
        f"non-finite training loss ({summary['train_loss']}) in steps {step - len(pending) + 1}"
        f"-{step}; the last good checkpoint in {workdir} is kept (lower the learning rate?)")
  return summary


def _flat_hparams(config: ml_collections.ConfigDict) -> dict[str, Any]:
  flat = {}

  def walk(prefix, node):
    for k, v in node.items():
      if isinstance(v, dict):
        walk(f"{prefix}{k}.", v)
      else:
        flat[prefix + k] = v if isinstance(v, int | float | str | bool) else json.dumps(v)
  walk("", config.to_dict())
  return flat

