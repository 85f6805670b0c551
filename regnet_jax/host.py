"""Process set-up before JAX starts: glibc's malloc for XLA:CPU, and joining a multi-process
(multi-host) run.

Memory: keep freed memory instead of returning it to the kernel.

XLA:CPU allocates each executable's temporary buffers afresh on every call. They are large
(about 2 GiB for a RegNet-20 train step at batch 128), so glibc serves them with ``mmap`` and
unmaps them on ``free``: every step then touches hundreds of thousands of fresh pages, each
a page fault that the kernel zero-fills. Measured on a 2-core VM (docs/performance.md): 0.55M
page faults and 0.8 s of system time per RegNet-20 step. Serving them from one heap that is
never trimmed removes the faults after the first step; the process keeps its peak memory.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

import jax

# mallopt(3) parameters.
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -2, -4, -8


def retain_freed_memory() -> bool:
  """Makes glibc's malloc keep freed memory for reuse; returns whether it was applied.

  Call it before JAX starts its backend (its thread pool's arenas are created then).
  A no-op returning False off Linux or without glibc.
  """
  if not sys.platform.startswith("linux"):
    return False
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    mallopt = libc.mallopt
  except (OSError, AttributeError):
    return False
  settings = (
      (_M_ARENA_MAX, 1),          # one heap for all threads, so memory freed by one is reused
      (_M_MMAP_MAX, 0),           # large blocks from the heap too, not from fresh mmaps
      (_M_TRIM_THRESHOLD, -1),    # never give the heap's free top back to the kernel
      (_M_TOP_PAD, 256 << 20),    # grow the heap 256 MiB at a time
  )
  return all(mallopt(param, value) == 1 for param, value in settings)


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
