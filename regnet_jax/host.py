"""Host-process tuning for XLA:CPU: keep freed memory instead of returning it to the kernel.

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
import sys

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
