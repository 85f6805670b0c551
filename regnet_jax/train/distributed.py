"""Joining a multi-process (multi-host) run: one process per host, all devices in one mesh."""

from __future__ import annotations

import os

import jax

# Environment variables holding the process count of a cluster launch JAX can auto-detect.
_CLUSTER_SIZE_VARS = ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None) -> bool:
  """Joins a multi-process run via ``jax.distributed.initialize``; returns whether it did.

  With ``coordinator_address`` (``host:port`` of process 0), the given process count and id
  are used. Without it, a cluster launch of more than one process (SLURM's ``srun``, Open
  MPI's ``mpirun``) is joined with JAX's own detection of its environment. Otherwise this is
  a single-process run and nothing happens. Call it before anything touches a JAX device.
  """
  if coordinator_address:
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
    return True
  if max(int(os.environ.get(var, "1") or 1) for var in _CLUSTER_SIZE_VARS) > 1:
    jax.distributed.initialize()
    return True
  return False
