"""Process settings for XLA:CPU, made before JAX starts: transparent huge pages for its buffers,
and its own convolutions.

XLA:CPU allocates an executable's temporary buffers afresh on every call. They are large
(about 2 GiB for a RegNet-20 train step at batch 128), so glibc serves them with ``mmap`` and
unmaps them on ``free``: every step the kernel maps and zero-fills them again, one 4 KiB page
fault at a time (measured on a 2-core VM: 0.55M faults and 0.8 s of system time per RegNet-20
step; docs/performance.md). glibc's ``glibc.malloc.hugetlb=1`` tunable makes malloc ask for
transparent huge pages, cutting the faults ~100x while memory is still returned to the kernel.
Tunables are read at process start, so :func:`reexec_with_cpu_settings` restarts the process
once with the tunable set.

jaxlib 0.10.2's XLA:CPU hands each convolution to YNNPACK by default; its own (Eigen)
convolutions are faster for these networks (ResNet-20 train step 1.43x, RegNet-20 1.21x on a
2-core VM; docs/performance.md). :data:`XLA_CPU_FLAGS` removes only that kind of YNNPACK
fusion (elementwise and reduction fusions stay: the cells' kernel gradients need them).

(Keeping freed memory instead, with ``mallopt``, removed the faults too but let the heap
fragment and grow without bound in a training process: 16.6 GiB and the OOM killer within
25 minutes of a RegNet-20 run. Do not do that.)
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import sys

HUGEPAGES = "glibc.malloc.hugetlb=1"
XLA_CPU_FLAGS = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"


def accelerator_plugin_installed() -> bool:
  """Whether a GPU or TPU build of jaxlib is installed (then XLA:CPU is not the backend, and
  another jaxlib's XLA may not know :data:`XLA_CPU_FLAGS`: an unknown flag is fatal)."""
  pattern = re.compile(r"^(jax[-_](cuda|rocm)|libtpu)", re.IGNORECASE)
  return any(pattern.match(d.metadata["Name"] or "")
             for d in importlib.metadata.distributions())


def cpu_env(env: dict[str, str], hugepages: bool = True,
            cpu_only: bool | None = None) -> dict[str, str] | None:
  """``env`` with glibc's huge-page tunable (Linux, unless ``hugepages`` is False) and, where
  only XLA:CPU is installed (``cpu_only``; default: no accelerator plugin found),
  :data:`XLA_CPU_FLAGS` added, each unless already set there; None when nothing changes."""
  new = dict(env)
  tunables = env.get("GLIBC_TUNABLES", "")
  if hugepages and sys.platform.startswith("linux") and "glibc.malloc.hugetlb" not in tunables:
    new["GLIBC_TUNABLES"] = ":".join(filter(None, [tunables, HUGEPAGES]))
  if cpu_only is None:
    cpu_only = not accelerator_plugin_installed()
  xla_flags = env.get("XLA_FLAGS", "")
  if cpu_only and "xla_cpu_experimental_ynn_fusion_type" not in xla_flags:
    new["XLA_FLAGS"] = " ".join(filter(None, [xla_flags, XLA_CPU_FLAGS]))
  return None if new == env else new


def reexec_with_cpu_settings(hugepages: bool = True) -> None:
  """Restarts this process (same interpreter and command line) with :func:`cpu_env`'s
  settings, once; a no-op where they are set already or with ``REGNET_NO_REEXEC=1``. Call it
  first thing, before any work is done (glibc reads its tunables at process start)."""
  env = cpu_env(dict(os.environ), hugepages)
  if env is None or os.environ.get("REGNET_NO_REEXEC") == "1":
    return
  os.execve(sys.executable, list(sys.orig_argv), env)
