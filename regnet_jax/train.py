"""The training loop: data, checkpoints, metrics, evaluation and stopping around the steps.

The train state and the data-parallel train/eval steps it runs are in
``regnet_jax.train_steps``.
"""

from __future__ import annotations

import dataclasses
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
from absl import logging
from clu import metric_writers, periodic_actions

from regnet_jax import checkpoint, datasets, input_pipeline, models, train_steps


@dataclasses.dataclass(frozen=True)
class Setup:
  """What a run derives from its config and dataset."""

  model: models._Network
  spec: datasets.DatasetSpec
  steps_per_epoch: int
  num_steps: int



def setup(config: ml_collections.ConfigDict, builder: Any) -> Setup:
  spec = datasets.get_spec(config.dataset)
  model = train_steps.build_model(config, spec.num_classes)
  steps = input_pipeline.steps_per_epoch(builder, spec, config.batch_size)
  num_steps = (config.num_train_steps if config.num_train_steps > 0
               else math.ceil(config.num_epochs * steps))
  return Setup(model, spec, steps, num_steps)


def evaluate(trainer: train_steps.Trainer, p_eval: Callable, state: train_steps.TrainState,
             builder: Any, spec: datasets.DatasetSpec, batch_size: int) -> dict[str, float]:
  """Top-1/top-5 error and loss over every example of the eval split."""
  sums = None
  for batch in trainer.prefetch(input_pipeline.eval_batches(builder, spec, batch_size), 2):
    out = p_eval(state, batch)
    sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
  sums = jax.device_get(sums)
  return {**train_steps.eval_summary(sums), "eval_examples": float(sums["count"])}


def precise_bn_batches(builder: Any, spec: datasets.DatasetSpec,
                       config: ml_collections.ConfigDict) -> Iterator[dict[str, np.ndarray]]:
  """The batches precise BN averages over: the run's own first training batches (its seed,
  from step 0), so every recomputation for a run sees the same images."""
  return input_pipeline.train_batches(builder, spec, config.batch_size, config.seed,
                                      shuffle_buffer=config.shuffle_buffer,
                                      skip_bad_images=config.get("skip_bad_images", False))


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError with one clear line for a config that cannot run."""
  # Bad model args fail here, before any data is read.
  train_steps.build_model(config, datasets.get_spec(config.dataset).num_classes)
  for field in ("batch_size", "learning_rate"):
    if not config[field] > 0:
      raise ValueError(f"{field} must be positive, got {config[field]!r}")
  if config.num_train_steps <= 0 and not config.num_epochs > 0:
    raise ValueError(f"num_epochs must be positive (or set num_train_steps), got "
                     f"{config.num_epochs!r}")
  if config.eval_precise_bn_batches < 0:
    raise ValueError(f"eval_precise_bn_batches must be >= 0 (0: off), got "
                     f"{config.eval_precise_bn_batches!r}")
  if config.lr_schedule not in ("step", "cosine"):
    raise ValueError(f"lr_schedule={config.lr_schedule!r} is not valid; choose step or cosine")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       devices: list | None = None) -> train_steps.TrainState:
  """Trains ``config`` in ``workdir``, resuming from its newest checkpoint if there is one.

  Writes TensorBoard events, ``config.json`` and orbax checkpoints to ``workdir``.
  """
  validate_config(config)
  trainer = train_steps.Trainer(devices)
  trainer.check_batch_size(config.batch_size)
  builder = input_pipeline.get_builder(config.dataset, config.data_dir)
  run = setup(config, builder)

  schedule = train_steps.learning_rate_schedule(config, run.steps_per_epoch, run.num_steps)
  state = train_steps.create_train_state(
      run.model, train_steps.create_optimizer(config, schedule), config.seed, run.spec.image_size)
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
  recompute = (train_steps.precise_bn(trainer, run.model) if config.eval_precise_bn_batches > 0
               else None)
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
  timer, timed_steps = time.perf_counter(), 0  # the steps since the timer started
  try:
    with StopOnSignal() as stop:
      for step in range(start + 1, run.num_steps + 1):
        state, metrics = p_train(state, next(batches))
        pending.append(metrics)
        timed_steps += 1
        report(step)
        last = step == run.num_steps or stop.signal is not None
        if step % log_every == 0 or last:
          summary = _mean_finite(pending, step, workdir)
          elapsed, timer = time.perf_counter() - timer, time.perf_counter()
          summary["train_images_per_sec"] = timed_steps * config.batch_size / elapsed
          timed_steps = 0
          writer.write_scalars(step, summary)
          pending = []
        if step % eval_every == 0 or step == run.num_steps:
          writer.write_scalars(step, evaluate(trainer, p_eval, state, builder, run.spec,
                                              config.batch_size))
          if recompute is not None:  # the same weights, BN statistics recomputed
            stats = recompute({"params": state.params, "batch_stats": state.batch_stats},
                              precise_bn_batches(builder, run.spec, config),
                              config.eval_precise_bn_batches)
            result = evaluate(trainer, p_eval, state.replace(batch_stats=stats), builder,
                              run.spec, config.batch_size)
            writer.write_scalars(step, {"precise_bn_" + k: v for k, v in result.items()})
          timer, timed_steps = time.perf_counter(), 0  # the rate leaves evaluation out
        if step % ckpt_every == 0 or last:
          if pending:  # never save parameters that produced a non-finite loss
            _mean_finite(pending, step, workdir)
          if not _all_finite(state.params):
            raise FloatingPointError(f"non-finite parameters after step {step}; the last good "
                                     f"checkpoint in {workdir} is kept (lower the learning rate?)")
          ckpt.save(step, state)
        if stop.signal is not None:
          ckpt.wait()  # raises if the checkpoint did not land
          logging.warning("Stopped by %s at step %d; checkpoint saved in %s. Run the same "
                          "command to resume.", stop.signal, step, workdir)
          break
  finally:
    ckpt.wait()  # an in-flight save completes (and is checked) even when stopping on an error
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

