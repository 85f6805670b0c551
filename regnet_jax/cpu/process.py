"""Process settings for XLA:CPU, made before JAX starts: transparent huge pages for its buffers,
and its own convolutions.

XLA:CPU allocates an executable's temporary buffers afresh on every call. They are large
(gigabytes for a RegNet-20 train step at batch 128), so glibc serves them with ``mmap`` and
unmaps them on ``free``: every step the kernel maps and zero-fills them again, one 4 KiB page
fault at a time. glibc's ``glibc.malloc.hugetlb=1`` tunable makes malloc ask for transparent
huge pages, cutting the faults about 100x while memory is still returned to the kernel.
Tunables are read at process start, so :func:`reexec_with_cpu_settings` restarts the process
once with the tunable set. (Keeping freed memory in the heap instead, with ``mallopt``, also
removes the faults but lets the heap fragment and grow without bound in a long run.)

jaxlib's XLA:CPU hands each convolution to YNNPACK by default; its own (Eigen) convolutions
are faster for these networks. :data:`XLA_CPU_FLAGS` removes only that kind of YNNPACK fusion
(elementwise and reduction fusions stay: the cells' kernel gradients need them).

Both settings concern XLA:CPU only, so the restart happens only where the CPU is the backend
(no GPU or TPU plugin installed, or ``JAX_PLATFORMS=cpu``). docs/performance.md has the
measurements.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import sys

HUGEPAGES = "glibc.malloc.hugetlb=1"
XLA_CPU_FLAGS = "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution"


def accelerator_plugin_installed() -> bool:
  """Whether a GPU or TPU build of jaxlib is installed."""
  pattern = re.compile(r"^(jax[-_](cuda|rocm)|libtpu)", re.IGNORECASE)
  return any(pattern.match(d.metadata["Name"] or "")
             for d in importlib.metadata.distributions())


def cpu_backend(env: dict[str, str]) -> bool:
  """Whether JAX will compute on the CPU in a process with environment ``env``: the first of
  ``JAX_PLATFORMS`` where set, else whether no accelerator plugin is installed."""
  platforms = env.get("JAX_PLATFORMS", "").split(",")[0].strip()
  return platforms == "cpu" if platforms else not accelerator_plugin_installed()


def cpu_env(env: dict[str, str], hugepages: bool = True,
            cpu_only: bool | None = None) -> dict[str, str] | None:
  """``env`` with glibc's huge-page tunable (Linux, unless ``hugepages`` is False) and
  :data:`XLA_CPU_FLAGS` added, each unless already set there, where the CPU is the backend
  (``cpu_only``; default: :func:`cpu_backend`); None when nothing changes."""
  if not (cpu_backend(env) if cpu_only is None else cpu_only):
    return None
  new = dict(env)
  tunables = env.get("GLIBC_TUNABLES", "")
  if hugepages and sys.platform.startswith("linux") and "glibc.malloc.hugetlb" not in tunables:
    new["GLIBC_TUNABLES"] = ":".join(filter(None, [tunables, HUGEPAGES]))
  xla_flags = env.get("XLA_FLAGS", "")
  if "xla_cpu_experimental_ynn_fusion_type" not in xla_flags:
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
