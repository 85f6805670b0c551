"""Data parallelism over every device of every process: a one-axis mesh, and the placement of
batches and state on it.

Steps are ``jax.jit`` over the mesh (axis ``'data'``): every batch is sharded along its first
axis over all devices, the state is replicated, and XLA inserts the gradient all-reduce
(pmap's semantics, written with ``NamedSharding``). BatchNorm statistics are then computed
over the *global* batch (XLA all-reduces the moments), i.e. synchronised BatchNorm: results do
not depend on the device count.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from regnet_jax.checks import split_batch


class DataParallel:
  """The mesh of ``devices`` (default: all of them, of every process) and its two shardings:
  ``data_sharding`` (batches, along their first axis) and ``replicated`` (state)."""

  def __init__(self, devices: list | None = None):
    self.devices = list(devices or jax.devices())
    self.mesh = Mesh(np.asarray(self.devices), ("data",))
    self.data_sharding = NamedSharding(self.mesh, PartitionSpec("data"))
    self.replicated = NamedSharding(self.mesh, PartitionSpec())

  def check_batch_size(self, global_batch: int) -> None:
    """A ValueError unless ``global_batch`` splits evenly over the devices."""
    split_batch(global_batch, len(self.devices), "devices")

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
