"""The training loop: the data source, checkpoints, metrics, evaluation and stopping around
the train step (:mod:`regnet_jax.train.steps`).

Whatever the source (``config.input``: the tfds pipeline, or CIFAR resident on the devices),
the loop resumes from the newest checkpoint, logs the first step's metrics and then every
``log_every_steps``, evaluates (also with precise BN if asked), checks that the loss and the
parameters are finite, saves checkpoints, and stops cleanly, with a checkpoint, on SIGTERM or
SIGINT and at an optional deadline.
"""

from __future__ import annotations

import json
import math
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers, periodic_actions

from regnet_jax import data
from regnet_jax.models import counts
from regnet_jax.train import checkpoint, evaluate, steps

# A loss this many times its first logged value (or more) means training diverged.
DIVERGENCE_FACTOR = 4.0


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError with one clear line for a config that cannot run."""
  # Bad model args fail here, before any data is read.
  steps.build_model(config, data.get_spec(config.dataset).num_classes)
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
  if config.get("input_sharding", "process") not in data.SHARDINGS:
    raise ValueError(f"input_sharding={config.input_sharding!r} is not valid; choose one of "
                     f"{', '.join(data.SHARDINGS)}")
  if config.get("input", "tfds") not in data.INPUTS:
    raise ValueError(f"input={config.input!r} is not valid; choose one of "
                     f"{', '.join(data.INPUTS)}")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       devices: list | None = None, deadline_s: float | None = None,
                       source: Any = None) -> steps.TrainState:
  """Trains ``config`` in ``workdir``, resuming from its newest checkpoint if there is one.

  Writes TensorBoard events, ``config.json`` and orbax checkpoints to ``workdir``.

  Args:
    config: the run's config (see ``configs/default.py``).
    workdir: where the run lives.
    devices: the devices to train on (default: all of them).
    deadline_s: stop (with a checkpoint) after the first step that ends this many seconds
      after the call; a rerun resumes.
    source: the data source (default: the one ``config.input`` names).
  Returns:
    The final train state.
  """
  start_time = time.perf_counter()
  validate_config(config)
  trainer = steps.Trainer(devices)
  trainer.check_batch_size(config.batch_size)
  source = source or data.create_source(config, trainer.data_sharding)
  spec = data.get_spec(config.dataset)
  model = steps.build_model(config, spec.num_classes)
  steps_per_epoch = source.steps_per_epoch
  num_steps = (config.num_train_steps if config.num_train_steps > 0
               else math.ceil(config.num_epochs * steps_per_epoch))

  schedule = steps.learning_rate_schedule(config, steps_per_epoch, num_steps)
  state = steps.create_train_state(
      model, steps.create_optimizer(config, schedule), config.seed, spec.image_size)
  checkpoint.check_workdir(workdir, sum(x.nbytes for x in jax.tree.leaves(state)),
                           config.keep_checkpoints)
  ckpt = checkpoint.Checkpointer(workdir, config.keep_checkpoints)
  state = trainer.replicate(ckpt.restore_latest(state, trainer.replicated) or state)
  checkpoint.write_config(workdir, config)
  reference = steps.build_model(config, spec.num_classes, reference=True)  # what counts read
  checkpoint.record_start(workdir, trainer.devices, {
      "steps_per_epoch": steps_per_epoch, "num_train_steps": num_steps,
      "params": counts.count_params(reference, spec.image_size),
      "macs": counts.count_macs(reference, spec.image_size)})
  start = int(state.step)
  if start:
    logging.info("Resuming from the checkpoint of step %d in %s", start, workdir)

  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  if start == 0:
    writer.write_hparams(_flat_hparams(config))
  p_train, p_eval = trainer.compile_steps(config, schedule)
  recompute = (steps.precise_bn(trainer, model, spec) if config.eval_precise_bn_batches > 0
               else None)

  def run_evaluation(step: int, stop: StopOnSignal) -> None:
    """Evaluates and logs; abandoned (nothing logged) when a stop is requested meanwhile."""
    logging.info("Evaluating at step %d%s...", step, " (also with precise BN)" if recompute else "")
    stopping = stop.requested
    result = evaluate.evaluate(p_eval, state, trainer, source.eval_batches(), stopping)
    if result is not None:
      writer.write_scalars(step, result)
    if recompute is not None and not stopping():  # the same weights, BN statistics recomputed
      stats = recompute({"params": state.params, "batch_stats": state.batch_stats},
                        source.train_batches(0), config.eval_precise_bn_batches)
      result = evaluate.evaluate(p_eval, state.replace(batch_stats=stats), trainer,
                                 source.eval_batches(), stopping)
      if result is not None:
        writer.write_scalars(step, {"precise_bn_" + k: v for k, v in result.items()})
    if stopping():
      logging.warning("Evaluation at step %d abandoned: stopping (%s)", step, stop.reason)

  every = lambda n: n if n > 0 else steps_per_epoch
  log_every, eval_every, ckpt_every = (every(config.log_every_steps),
                                       every(config.eval_every_steps),
                                       every(config.checkpoint_every_steps))
  report = periodic_actions.ReportProgress(num_train_steps=num_steps, writer=writer)
  batches = trainer.prefetch(source.train_batches(start), config.prefetch_batches)

  pending: list[dict[str, jax.Array]] = []
  first_loss = None
  timer, timed_steps = time.perf_counter(), 0  # the steps since the timer started
  try:
    with StopOnSignal(trainer) as stop:
      for step in range(start + 1, num_steps + 1):
        if step == start + 1:
          logging.info("Compiling the train step...")
        state, metrics = p_train(state, next(batches))
        if step == start + 1:
          jax.block_until_ready(metrics)
          logging.info("Compiled the train step and ran step %d in %.1f s", step,
                       time.perf_counter() - timer)
        if pending:  # one step in flight: a stop request is served within a step or two
          jax.block_until_ready(pending[-1])
        pending.append(metrics)
        timed_steps += 1
        report(step)
        if deadline_s is not None and time.perf_counter() - start_time > deadline_s:
          stop.request("the deadline")
        last = stop.requested() or step == num_steps
        if step % log_every == 0 or step == start + 1 or last:
          summary = _mean_finite(pending, step, workdir)
          first_loss = summary["train_loss"] if first_loss is None else first_loss
          _check_divergence(summary["train_loss"], first_loss, step, config.learning_rate)
          elapsed, timer = time.perf_counter() - timer, time.perf_counter()
          summary["train_images_per_sec"] = timed_steps * config.batch_size / elapsed
          timed_steps = 0
          writer.write_scalars(step, summary)
          pending = []
        if step % eval_every == 0 or step == num_steps:
          run_evaluation(step, stop)
          timer, timed_steps = time.perf_counter(), 0  # the rate leaves evaluation out
        if step % ckpt_every == 0 or last or stop.reason is not None:  # (stop: during eval)
          if pending:  # never save parameters that produced a non-finite loss
            _mean_finite(pending, step, workdir)
          if not _all_finite(state.params):
            raise FloatingPointError(f"non-finite parameters after step {step}; the last good "
                                     f"checkpoint in {workdir} is kept (lower the learning rate?)")
          ckpt.save(step, state)
        if stop.reason is not None:
          ckpt.wait()  # raises if the checkpoint did not land
          logging.warning("Stopped by %s at step %d; checkpoint saved in %s. Run the same "
                          "command to resume.", stop.reason, step, workdir)
          break
  finally:
    ckpt.wait()  # an in-flight save completes (and is checked) even when stopping on an error
  writer.flush()
  if int(state.step) == num_steps:
    logging.info("Finished: %d steps; checkpoints and TensorBoard events in %s", num_steps,
                 workdir)
  return state


class StopOnSignal:
  """Turns SIGTERM and SIGINT (preemption, Ctrl-C) and :meth:`request` (the deadline) into a
  stop after the current step or evaluation batch: the loop then saves a checkpoint and
  returns. Signals are caught in the main thread only.

  In a multi-process run a signal may reach only some processes, and deadlines pass at
  different steps, but every process must stop at the same step (their steps and checkpoint
  saves are collective). So there :meth:`requested` gathers every process's request with a
  small collective and answers from the previous call's gathering: each process gets the same
  answers, one call later.
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)
  REASONS = ("SIGTERM", "SIGINT", "the deadline")  # what a request can be, coded 1, 2, 3

  def __init__(self, trainer: steps.Trainer | None = None):
    multi = trainer is not None and jax.process_count() > 1
    self._gather = _gather_codes(trainer) if multi else None
    self._devices = trainer.devices if multi else []

  def __enter__(self) -> StopOnSignal:
    self.signal: str | None = None  # this process's request
    self.reason: str | None = None  # the agreed one, once :meth:`requested` says True
    self._gathering: jax.Array | None = None
    self._previous = {}
    if threading.current_thread() is threading.main_thread():
      self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
    return self

  def request(self, reason: str) -> None:
    """Asks the loop to stop, for ``reason`` (one of :attr:`REASONS`)."""
    self.signal = self.signal or reason

  def requested(self) -> bool:
    """Whether to stop now (then :attr:`reason` says why); in a multi-process run, the same
    answer on every process at the same call."""
    if self.reason is None and self._gather is None:
      self.reason = self.signal
    elif self.reason is None:
      previous = self._gathering
      self._gathering = self._gather(self.REASONS.index(self.signal) + 1 if self.signal else 0)
      codes = np.asarray(previous.addressable_data(0)) if previous is not None else np.zeros(1)
      if codes.any():  # [devices]: each one's process's code
        first = int(np.flatnonzero(codes)[0])
        self.reason = (f"{self.REASONS[codes[first] - 1]} on process "
                       f"{self._devices[first].process_index}")
    return self.reason is not None

  def _handle(self, signum: int, frame: Any) -> None:
    del frame
    self.request(signal.Signals(signum).name)

  def __exit__(self, *exc_info: Any) -> None:
    for s, handler in self._previous.items():
      signal.signal(s, handler)


def _gather_codes(trainer: steps.Trainer) -> Callable[[int], jax.Array]:
  """``gather(code)``, called by every process: the ``[devices]`` array of each device's
  process's ``code`` (in ``trainer.devices``' order), replicated: an all-gather."""
  local = sum(d.process_index == jax.process_index() for d in trainer.devices)
  replicate = jax.jit(lambda codes: codes, out_shardings=trainer.replicated)

  def gather(code: int) -> jax.Array:
    codes = np.full((local,), code, np.int32)
    return replicate(jax.make_array_from_process_local_data(trainer.data_sharding, codes))

  return gather


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


def _check_divergence(loss: float, first_loss: float, step: int, learning_rate: float) -> None:
  """Warns once per call when the loss has grown to :data:`DIVERGENCE_FACTOR` times its first
  logged value: training is diverging (a non-finite loss stops the run)."""
  if loss > DIVERGENCE_FACTOR * first_loss:
    logging.warning("The training loss at step %d is %.3g, %.0fx its first value (%.3g): "
                    "training is diverging; lower the learning rate (now %g, "
                    "--config.learning_rate).", step, loss, loss / first_loss, first_loss,
                    learning_rate)


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
