"""Orbax checkpoints of the train state, and the run's config beside them.

Layout of a workdir: ``config.json`` (the run's config), ``checkpoints/<step>/`` (orbax), and
TensorBoard event files. Checkpoints hold arrays only (no pickled objects).
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from flax import serialization


def write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Writes ``config.json`` (process 0 only)."""
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json(indent=2))


def read_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{workdir} has no config.json: not a training workdir")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


class CheckpointMismatchError(ValueError):
  """A checkpoint's parameters do not fit the model being restored."""


def _first_mismatch(message: str) -> str:
  """The first path (preferring model parameters) named in an orbax mismatch message."""
  paths = [line.strip()[:-1] for line in message.splitlines() if line.strip().endswith(":")]
  for prefix in ("params", "batch_stats", "opt_state", "step"):
    for path in paths:
      if path.split(".")[0] == prefix:
        return f"first difference at {path}"
  return message.splitlines()[0][:300] if message else "structure differs"


class Checkpointer:
  """Saves and restores a train state with an orbax ``CheckpointManager``."""

  def __init__(self, workdir: str, max_to_keep: int = 3):
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    self.manager = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                                             create=True))

  def save(self, step: int, state: Any) -> None:
    """Saves asynchronously; the step's folder appears only once it is complete."""
    self.manager.save(step, args=ocp.args.StandardSave(serialization.to_state_dict(state)))

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def restore(self, step: int, target: Any, sharding: Any) -> Any:
    """Restores checkpoint ``step`` into the structure of ``target``, placed with ``sharding``."""
    template = serialization.to_state_dict(target)
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), template)
    try:
      restored = self.manager.restore(step, args=ocp.args.StandardRestore(abstract))
    except ValueError as e:  # orbax: tree structure or shape mismatch
      raise CheckpointMismatchError(
          f"checkpoint {step} in {self.directory} does not match this config's model "
          f"({_first_mismatch(str(e))}); use another --workdir or the config it was trained "
          "with") from None
    return serialization.from_state_dict(target, restored)

  def restore_latest(self, target: Any, sharding: Any) -> Any | None:
    """The newest checkpoint restored like :meth:`restore`, or None if there is none."""
    step = self.latest_step()
    return None if step is None else self.restore(step, target, sharding)
