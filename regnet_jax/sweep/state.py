"""Where a sweep's run stands, read from its workdir: its newest checkpoint, its length, its
final evaluations, its wall time, and the sweep's own record of its attempts (``sweep.jsonl``:
a line when a run starts, a line when it ends, with the error of one that failed).

A run is done when its newest checkpoint is its last step and that step's evaluations are
logged (with the running BatchNorm averages, and with precise BN where the config asks for
it). A run stopped during its final evaluation has the checkpoint without them; the sweep then
evaluates that checkpoint with ``main.py --mode=eval``, which logs the same numbers.
"""

from __future__ import annotations

import dataclasses
import datetime
import fcntl
import functools
import json
import math
import os
from typing import TYPE_CHECKING, Any

from regnet_jax.train import checkpoint

if TYPE_CHECKING:
  import ml_collections

SWEEP_RECORD = "sweep.jsonl"  # the sweep's record of the run's attempts, in its workdir
SWEEP_LOG = "sweep.log"  # the output of the run's processes that the sweep started
LOCK = "sweep.lock"  # held (flock) while a sweep trains the run


@dataclasses.dataclass(frozen=True)
class State:
  """A run's progress as its workdir has it."""

  step: int  # the newest checkpoint's step (0: none)
  num_steps: int | None  # the run's length (None: unknown until its dataset can be read)
  missing_evals: tuple[int, ...]  # at the last step: precise-BN batches of each evaluation
  #                                  not logged (0: the running averages); () elsewhere
  error: str | None  # why the newest attempt failed, if it did
  running: bool  # a sweep holds the run's lock now
  started: bool  # the workdir exists with a checkpoint or an attempt

  @property
  def done(self) -> bool:
    return (self.num_steps is not None and self.step >= self.num_steps
            and not self.missing_evals)


def checkpoint_step(workdir: str) -> int:
  """The newest complete checkpoint's step (orbax writes a step's folder under a temporary
  name until it is complete); 0 for none."""
  folder = os.path.join(workdir, "checkpoints")
  steps = [int(n) for n in os.listdir(folder) if n.isdigit()] if os.path.isdir(folder) else []
  return max(steps, default=0)


def _steps_per_epoch(config: ml_collections.ConfigDict) -> int | None:
  """Training's steps per epoch, from the dataset's metadata (None where it is not here)."""
  return _steps_per_epoch_of(config.to_json())


@functools.cache
def _steps_per_epoch_of(config_json: str) -> int | None:
  import ml_collections

  from regnet_jax import data
  from regnet_jax.data import pipeline

  config = ml_collections.ConfigDict(json.loads(config_json))
  try:
    dataset = pipeline.open_data(config, download=False)
    return pipeline.steps_per_epoch(dataset, data.get_spec(config), config.batch_size,
                                    processes=1)
  except (pipeline.DatasetNotFoundError, ValueError):
    return None


def num_steps(workdir: str, config: ml_collections.ConfigDict) -> int | None:
  """The run's length in steps: what training recorded in ``runs.jsonl`` when it started,
  else ``config.num_train_steps``, else its epochs times the dataset's steps per epoch."""
  for run in reversed(checkpoint.read_runs(workdir)):
    for key in ("num_steps", "num_train_steps"):
      if key in run:
        return int(run[key])
  if config.num_train_steps > 0:
    return int(config.num_train_steps)
  per_epoch = _steps_per_epoch(config)
  return None if per_epoch is None else math.ceil(config.num_epochs * per_epoch)


def scalars(workdir: str) -> dict[str, list[tuple[int, float, float]]]:
  """The workdir's logged scalars, training's and ``--mode=eval``'s: ``{tag: [(step, value,
  wall_time), ...]}`` (a step logged by both keeps ``--mode=eval``'s)."""
  from regnet_jax.analysis import events
  from regnet_jax.train import evaluate

  return events.read_scalars(events.event_files(workdir) + events.event_files(
      os.path.join(workdir, evaluate.EVAL_EVENTS_DIR)))


def hours(workdir: str) -> float:
  """Wall-clock hours of the run's training processes (time between them not counted)."""
  from regnet_jax.analysis import events

  return events.training_hours(workdir)


def missing_evals(workdir: str, step: int, precise_bn_batches: int) -> tuple[int, ...]:
  """The evaluations of ``step`` not in the workdir's events: 0 for the running averages'
  and ``precise_bn_batches`` for precise BN's (when > 0)."""
  logged = scalars(workdir)
  wanted = [(0, "eval_top1_error")]
  if precise_bn_batches > 0:
    wanted.append((precise_bn_batches, "precise_bn_eval_top1_error"))
  return tuple(batches for batches, tag in wanted
               if not any(s == step for s, _, _ in logged.get(tag, [])))


def read(workdir: str, config: ml_collections.ConfigDict) -> State:
  """The state of the run of ``config`` in ``workdir`` (which need not exist)."""
  step = checkpoint_step(workdir)
  length = num_steps(workdir, config)
  missing = (missing_evals(workdir, step, config.eval_precise_bn_batches)
             if length is not None and step >= length else ())
  attempts = read_record(workdir)
  last = attempts[-1] if attempts else {}
  error = last.get("error") if last.get("outcome") == "failed" else None
  return State(step, length, missing, error, locked(workdir), bool(step or attempts))


def read_record(workdir: str) -> list[dict[str, Any]]:
  """The sweep's records of the run (``sweep.jsonl``), oldest first."""
  path = os.path.join(workdir, SWEEP_RECORD)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def record(workdir: str, **fields: Any) -> None:
  """Appends a line to the run's ``sweep.jsonl``, with the UTC time."""
  now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
  with open(os.path.join(workdir, SWEEP_RECORD), "a") as f:
    f.write(json.dumps({"time": now, **fields}) + "\n")


def lock(workdir: str) -> int | None:
  """Takes the run's lock (its workdir made if needed): an open file descriptor that holds it
  until it is closed (by this process and by any process it was passed to), or None when
  another sweep holds it."""
  os.makedirs(workdir, exist_ok=True)
  fd = os.open(os.path.join(workdir, LOCK), os.O_RDWR | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    os.close(fd)
    return None
  return fd


def locked(workdir: str) -> bool:
  """Whether a sweep holds the run's lock now (never creates anything)."""
  path = os.path.join(workdir, LOCK)
  if not os.path.exists(path):
    return False
  fd = os.open(path, os.O_RDONLY)
  try:
    fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    return False
  except BlockingIOError:
    return True
  finally:
    os.close(fd)
