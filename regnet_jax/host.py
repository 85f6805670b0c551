"""Process set-up before JAX starts: transparent huge pages for XLA:CPU's buffers, and joining
a multi-process (multi-host) run.

XLA:CPU allocates an executable's temporary buffers afresh on every call. They are large
(about 2 GiB for a RegNet-20 train step at batch 128), so glibc serves them with ``mmap`` and
unmaps them on ``free``: every step the kernel maps and zero-fills them again, one 4 KiB page
fault at a time (measured on a 2-core VM: 0.55M faults and 0.8 s of system time per RegNet-20
step; docs/performance.md). glibc's ``glibc.malloc.hugetlb=1`` tunable makes malloc ask for
transparent huge pages, cutting the faults ~100x while memory is still returned to the kernel.
Tunables are read at process start, so :func:`reexec_with_hugepages` restarts the process
once with the tunable set.

(Keeping freed memory instead, with ``mallopt``, removed the faults too but let the heap
fragment and grow without bound in a training process: 16.6 GiB and the OOM killer within
25 minutes of a RegNet-20 run. Do not do that.)
"""

from __future__ import annotations

import os
import sys

import jax

HUGEPAGES = "glibc.malloc.hugetlb=1"


def hugepage_env(env: dict[str, str]) -> dict[str, str] | None:
  """``env`` with glibc's huge-page tunable added, or None where it is already set or does
  not apply (not Linux)."""
  tunables = env.get("GLIBC_TUNABLES", "")
  if not sys.platform.startswith("linux") or "glibc.malloc.hugetlb" in tunables:
    return None
  return dict(env, GLIBC_TUNABLES=":".join(filter(None, [tunables, HUGEPAGES])))


def reexec_with_hugepages() -> None:
  """Restarts this process (same interpreter and command line) with :data:`HUGEPAGES` in
  ``GLIBC_TUNABLES``, once; a no-op where it is set, off Linux, or with
  ``REGNET_NO_REEXEC=1``. Call it first thing, before any work is done."""
  env = hugepage_env(dict(os.environ))
  if env is None or os.environ.get("REGNET_NO_REEXEC") == "1":
    return
  os.execve(sys.executable, list(sys.orig_argv), env)


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
