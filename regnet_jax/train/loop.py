"""The training loop: the data source, checkpoints, metrics, evaluation and stopping around
the train step (:mod:`regnet_jax.train.steps`).

Whatever the source (``config.input``: the tfds pipeline, or CIFAR resident on the devices),
the loop resumes from the newest checkpoint (with the recipe it was started with:
:mod:`regnet_jax.train.resume`) or, at the first start, initialises the model at random or
from a trained run (``config.init_from``: :mod:`regnet_jax.train.init_from`), logs the first
step's metrics and then every ``log_every_steps``, evaluates (also with precise BN if asked),
checks that the loss and the parameters are finite, saves checkpoints, and stops cleanly, with
a checkpoint, on SIGTERM or SIGINT and at an optional deadline.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
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
from regnet_jax.train import checkpoint, evaluate, factory, init_from, optim, resume, steps
from regnet_jax.train.mesh import DataParallel
from regnet_jax.train.validate import validate_config

# A loss this many times its first logged value (or more) means training diverged.
DIVERGENCE_FACTOR = 4.0


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       devices: list | None = None, deadline_s: float | None = None,
                       source: Any = None, allow_config_change: bool = False
                       ) -> steps.TrainState:
  """Trains ``config`` in ``workdir``, resuming from its newest checkpoint if there is one.

  Writes TensorBoard events, ``config.json``, ``runs.jsonl`` and orbax checkpoints to
  ``workdir``.

  Args:
    config: the run's config (see ``configs/default.py``).
    workdir: where the run lives.
    devices: the devices to train on (default: all of them).
    deadline_s: stop (with a checkpoint) after the first step that ends this many seconds
      after the call; a rerun resumes.
    source: the data source (default: the one ``config.input`` names).
    allow_config_change: resume a run whose config differs from ``config`` in fields that
      change the result (:mod:`regnet_jax.train.resume`), recording the changes.
  Returns:
    The final train state.
  """
  start_time = time.perf_counter()
  validate_config(config)
  changes = resume.check_resume(workdir, config, allow_config_change)
  dp = DataParallel(devices)
  dp.check_batch_size(config.batch_size)
  spec = data.get_spec(config)
  model = factory.build_model(config, spec.num_classes)  # the run's one model
  logging.info("Opening %s (input=%s)...", config.dataset, config.input)
  source = source or data.create_source(config, dp.data_sharding)
  num_steps = (config.num_train_steps if config.num_train_steps > 0
               else math.ceil(config.num_epochs * source.steps_per_epoch))
  run = _Run(config, workdir, dp, spec, model, source, num_steps,
             optim.learning_rate_schedule(config, source.steps_per_epoch, num_steps))
  state = run.start(changes)
  return run.train(state, start_time, deadline_s)


@dataclasses.dataclass
class _Run:
  """One training run's pieces, and its three phases: start, evaluate, train."""

  config: ml_collections.ConfigDict
  workdir: str
  dp: DataParallel
  spec: data.DatasetSpec
  model: Any
  source: Any
  num_steps: int
  schedule: Any

  def start(self, changes: dict[str, tuple[Any, Any]]) -> steps.TrainState:
    """The state to train from (restored, or initial), with the workdir, writer and compiled
    steps set up."""
    config, workdir = self.config, self.workdir
    logging.info("Initialising %s and looking for a checkpoint in %s...", config.model, workdir)
    fresh = steps.create_train_state(self.model, optim.create_optimizer(config, self.schedule),
                                     config.seed, self.spec.image_size)
    # Fine-tuning's source is read at the first start only, before anything is written.
    initial, origin = fresh, None
    init = lambda: init_from.initial_state(fresh, self.model.num_classes,
                                           config.init_from, self.dp)
    resuming = checkpoint.has_checkpoints(workdir)
    if config.get("init_from") and not resuming:
      initial, origin = init()
    checkpoint.check_workdir(workdir, sum(x.nbytes for x in jax.tree.leaves(fresh)),
                             config.keep_checkpoints)
    self.ckpt = checkpoint.Checkpointer(workdir, config.keep_checkpoints)
    restored = self.ckpt.restore_latest(fresh, self.dp.replicated)
    if restored is None and resuming and config.get("init_from"):  # every checkpoint damaged
      initial, origin = init()
    state = self.dp.replicate(restored or initial)
    checkpoint.write_config(workdir, config)
    extra = {"config_changes": {k: list(v) for k, v in changes.items()}} if changes else {}
    if origin is not None:
      extra["init_from"] = origin
    reference = factory.build_model(config, self.spec.num_classes, reference=True)  # to count
    checkpoint.record_start(
        workdir, self.dp.devices, steps_per_epoch=self.source.steps_per_epoch,
        num_train_steps=self.num_steps,
        params=counts.count_params(reference, self.spec.image_size),
        macs=counts.count_macs(reference, self.spec.image_size), **extra)
    if int(state.step):
      logging.info("Resuming from the checkpoint of step %d in %s", int(state.step), workdir)
    for field, (old, new) in changes.items():
      logging.warning("Resuming with %s changed from %r to %r (--allow_config_change)",
                      field, old, new)
    self.writer = metric_writers.create_default_writer(
        workdir, just_logging=jax.process_index() > 0)
    if not int(state.step):
      self.writer.write_hparams(_resolved_hparams(config))
    self.p_train = steps.compile_train_step(self.dp, self.spec, config.label_smoothing,
                                            self.schedule)
    self.p_eval = evaluate.compile_eval_step(self.dp, self.model, self.spec)
    self.recompute = (evaluate.precise_bn(self.dp, self.model, self.spec)
                      if config.eval_precise_bn_batches > 0 else None)
    return state

  def evaluate(self, step: int, state: steps.TrainState, stop: StopOnSignal) -> None:
    """Evaluates and logs; abandoned (nothing logged) when a stop is requested meanwhile."""
    logging.info("Evaluating at step %d%s...", step,
                 " (also with precise BN)" if self.recompute else "")
    stopping = stop.requested
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    result = evaluate.evaluate(self.p_eval, variables, self.dp, self.source.eval_batches(),
                               stopping)
    if result is not None:
      self.writer.write_scalars(step, result)
    if self.recompute is not None and not stopping():  # the same weights, BN recomputed
      stats = self.recompute(variables, self.source.train_batches(0),
                             self.config.eval_precise_bn_batches)
      result = evaluate.evaluate(self.p_eval, {**variables, "batch_stats": stats}, self.dp,
                                 self.source.eval_batches(), stopping)
      if result is not None:
        self.writer.write_scalars(step, {"precise_bn_" + k: v for k, v in result.items()})
    if stopping():
      logging.warning("Evaluation at step %d abandoned: stopping (%s)", step, stop.reason)

  def train(self, state: steps.TrainState, start_time: float, deadline_s: float | None
            ) -> steps.TrainState:
    """Trains from ``state`` to the last step or a stop; returns the final state."""
    config, start = self.config, int(state.step)
    every = lambda n: n if n > 0 else self.source.steps_per_epoch
    log_every, eval_every, ckpt_every = (every(config.log_every_steps),
                                         every(config.eval_every_steps),
                                         every(config.checkpoint_every_steps))
    progress = periodic_actions.ReportProgress(num_train_steps=self.num_steps)  # ETA lines
    batches = self.dp.prefetch(self.source.train_batches(start), config.prefetch_batches)
    metrics_log = _MetricsLog(self.writer, config, self.workdir)
    try:
      with StopOnSignal(self.dp) as stop:
        for step in range(start + 1, self.num_steps + 1):
          if step == start + 1:
            logging.info("Compiling the train step...")
          state, metrics = self.p_train(state, next(batches))
          metrics_log.add(step, metrics, first=step == start + 1)
          progress(step)
          if deadline_s is not None and time.perf_counter() - start_time > deadline_s:
            stop.request("the deadline")
          last = stop.requested() or step == self.num_steps
          if step % log_every == 0 or step == start + 1 or last:
            metrics_log.write(step)
          if step % eval_every == 0 or step == self.num_steps:
            self.evaluate(step, state, stop)
            metrics_log.restart_timer()  # the rate leaves evaluation out
          if step % ckpt_every == 0 or last or stop.reason is not None:  # (stop: during eval)
            self.save(step, state, metrics_log)
          if stop.reason is not None:
            self.ckpt.wait()  # raises if the checkpoint did not land
            logging.warning("Stopped by %s at step %d; checkpoint saved in %s. Run the same "
                            "command to resume.", stop.reason, step, self.workdir)
            break
    finally:
      self.ckpt.wait()  # an in-flight save completes (and is checked) even on an error
    self.writer.flush()
    if int(state.step) == self.num_steps:
      logging.info("Finished: %d steps; checkpoints and TensorBoard events in %s",
                   self.num_steps, self.workdir)
    return state

  def save(self, step: int, state: steps.TrainState, metrics_log: _MetricsLog) -> None:
    """Saves a checkpoint of ``state``, never of parameters that produced a non-finite loss."""
    metrics_log.check_pending(step)
    if not _all_finite(state.params):
      raise FloatingPointError(f"non-finite parameters after step {step}; the last good "
                               f"checkpoint in {self.workdir} is kept (lower the learning "
                               "rate?)")
    self.ckpt.save(step, state)


class _MetricsLog:
  """The train metrics of the steps since the last write, their mean written every
  ``log_every_steps``, and the training rate, which leaves out compilation (the first step
  of a start, logged as ``compile_seconds``) and evaluation."""

  def __init__(self, writer: Any, config: ml_collections.ConfigDict, workdir: str):
    self.writer, self.config, self.workdir = writer, config, workdir
    self.pending: list[dict[str, jax.Array]] = []
    self.first_loss: float | None = None
    self.compile_seconds: float | None = None
    self.restart_timer()

  def restart_timer(self) -> None:
    self.timer, self.timed_steps = time.perf_counter(), 0

  def add(self, step: int, metrics: dict[str, jax.Array], first: bool) -> None:
    """Keeps a step's metrics; waits for the step before (one step in flight, so a stop
    request is served within a step or two), or for this one if it is the first."""
    if first:
      jax.block_until_ready(metrics)
      self.compile_seconds = time.perf_counter() - self.timer
      logging.info("Compiled the train step and ran step %d in %.1f s", step,
                   self.compile_seconds)
      self.restart_timer()
    else:
      if self.pending:
        jax.block_until_ready(self.pending[-1])
      self.timed_steps += 1
    self.pending.append(metrics)

  def check_pending(self, step: int) -> None:
    """FloatingPointError if a pending step's loss is not finite."""
    if self.pending:
      _mean_finite(self.pending, step, self.workdir)

  def write(self, step: int) -> None:
    """Writes the pending steps' mean metrics and the training rate since the last write."""
    summary = _mean_finite(self.pending, step, self.workdir)  # (waits for every pending step)
    self.first_loss = summary["train_loss"] if self.first_loss is None else self.first_loss
    _check_divergence(summary["train_loss"], self.first_loss, step, self.config.learning_rate)
    if self.compile_seconds is not None:
      summary["compile_seconds"], self.compile_seconds = self.compile_seconds, None
    elif self.timed_steps:
      summary["train_images_per_sec"] = (self.timed_steps * self.config.batch_size
                                         / (time.perf_counter() - self.timer))
      self.restart_timer()
    self.writer.write_scalars(step, summary)
    self.pending = []


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

  def __init__(self, dp: DataParallel | None = None):
    multi = dp is not None and jax.process_count() > 1
    self._gather = _gather_codes(dp) if multi else None
    self._devices = dp.devices if multi else []

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


def _gather_codes(dp: DataParallel) -> Callable[[int], jax.Array]:
  """``gather(code)``, called by every process: the ``[devices]`` array of each device's
  process's ``code`` (in ``dp.devices``' order), replicated: an all-gather."""
  local = sum(d.process_index == jax.process_index() for d in dp.devices)
  replicate = jax.jit(lambda codes: codes, out_shardings=dp.replicated)

  def gather(code: int) -> jax.Array:
    codes = np.full((local,), code, np.int32)
    return replicate(jax.make_array_from_process_local_data(dp.data_sharding, codes))

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


def _resolved_hparams(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The config as TensorBoard's hyperparameters: flat (``model_args.cell``), JSON for
  sequences, and defaults resolved: the data_dir tfds reads, "all" regulated stages."""
  config = config.to_dict()
  config["data_dir"] = config.get("data_dir") or os.environ.get(
      "TFDS_DATA_DIR", os.path.join("~", "tensorflow_datasets"))
  if not config.get("model_args", {}).get("regulated_stages", True):
    config["model_args"]["regulated_stages"] = "all"
  flat = {}

  def walk(prefix, node):
    for k, v in node.items():
      if isinstance(v, dict):
        walk(f"{prefix}{k}.", v)
      else:
        flat[prefix + k] = v if isinstance(v, int | float | str | bool) else json.dumps(v)
  walk("", config)
  return flat
