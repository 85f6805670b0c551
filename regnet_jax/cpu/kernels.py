"""The compiled CPU kernels: built on first use, cached, and called through JAX's FFI.

Two sources make one library: ``gate_kernel.cc`` (the cells' light-weight gates and updates,
:mod:`regnet_jax.cpu.gate_kernel`) and ``conv_kernel.cc`` (the dense convolutions' kernel
gradient, :mod:`regnet_jax.cpu.conv`). They are compiled with the system's C++ compiler
(``$CXX``, else ``c++``) against the FFI headers shipped with jaxlib, and cached under
``$REGNET_KERNEL_CACHE`` (default ``~/.cache/regnet_jax``) per source, compiler, FFI headers and
CPU. CPU backend and float32 only. :func:`regnet_jax.cpu.implementations` builds them, once,
before a model is traced.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array
_HERE = Path(__file__).parent
_SOURCES = (_HERE / "gate_kernel.cc", _HERE / "conv_kernel.cc")
_HEADERS = (_HERE / "kernel_common.h",)
_FLAGS = ("-O3", "-march=native", "-std=c++20", "-shared", "-fPIC", "-pthread")
# What to use instead, for error messages.
_FALLBACKS = "cell_impl='reference' and conv_grad='swapped' (same results, pure XLA)"


def _cpu_id() -> str:
  """The CPU's model and feature flags (``-march=native`` code is only valid on such a CPU)."""
  try:
    lines = Path("/proc/cpuinfo").read_text().splitlines()
  except OSError:
    return platform.processor()
  return "".join(line for line in lines if line.startswith(("model name", "flags")))[:4096]


def _cache_key(compiler: str) -> str:
  """What the compiled library depends on: the sources, the compiler and its flags, the FFI
  headers it was built against (their contents: a jaxlib upgrade in place keeps their path),
  and the CPU."""
  headers = sorted(Path(jax.ffi.include_dir(), "xla", "ffi", "api").glob("*.h"))
  return hashlib.sha256(b"\0".join([
      *(p.read_bytes() for p in (*_SOURCES, *_HEADERS)), compiler.encode(),
      " ".join(_FLAGS).encode(), *(h.read_bytes() for h in headers),
      _cpu_id().encode()])).hexdigest()[:16]


@functools.cache
def library() -> ctypes.CDLL:
  """The compiled library (built and cached on first call); RuntimeError if it cannot be."""
  compiler = os.environ.get("CXX", "c++")
  if shutil.which(compiler) is None:
    raise RuntimeError(
        f"regnet_jax's CPU kernels are compiled with a C++20 compiler, and {compiler!r} was "
        f"not found: install one (e.g. `apt install g++`) or set $CXX, or use {_FALLBACKS}.")
  key = _cache_key(compiler)
  cache = Path(os.environ.get("REGNET_KERNEL_CACHE", Path.home() / ".cache" / "regnet_jax"))
  path = cache / f"regnet_kernels-{key}.so"
  if not path.exists():
    try:
      cache.mkdir(parents=True, exist_ok=True)
      _compile(compiler, cache, path)
    except OSError as e:
      raise RuntimeError(f"cannot write the compiled CPU kernels to {cache} ({e}): set "
                         f"$REGNET_KERNEL_CACHE to a writable folder, or use {_FALLBACKS}") from e
  return ctypes.cdll.LoadLibrary(str(path))


def _compile(compiler: str, cache: Path, path: Path) -> None:
  """Compiles the library to ``path``, atomically (parallel test workers share the cache)."""
  logging.info("Compiling regnet_jax's CPU kernels (once per machine; cached in %s)", cache)
  start = time.perf_counter()
  with tempfile.TemporaryDirectory(dir=cache) as tmp:
    out = Path(tmp) / path.name
    result = subprocess.run(
        [compiler, *_FLAGS, "-I", jax.ffi.include_dir(), *map(str, _SOURCES), "-o", str(out)],
        capture_output=True, text=True)
    if result.returncode != 0:
      raise RuntimeError(f"compiling regnet_jax's CPU kernels failed (use {_FALLBACKS} "
                         "meanwhile):\n" + result.stderr[-3000:])
    os.replace(out, path)
  logging.info("Compiled regnet_jax's CPU kernels in %.1f s", time.perf_counter() - start)


@functools.cache
def _register(target: str) -> None:
  jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library(), target)),
                              platform="cpu")


def call(target: str, results: Any, *args: Array, **attributes: Any) -> Any:
  """Calls the library's FFI handler ``target``; under ``jax.vmap`` once per element."""
  _register(target)
  return jax.ffi.ffi_call(target, results, vmap_method="sequential")(*args, **attributes)


def check_supported(dtype: jnp.dtype, option: str, fallback: str) -> None:
  """Raises a ValueError unless the kernels can run here (CPU backend, float32), naming the
  ``option`` that asked for them (e.g. ``"cell_impl='kernel'"``) and its ``fallback``."""
  if jax.default_backend() != "cpu":
    raise ValueError(f"{option} is a CPU kernel; the backend is {jax.default_backend()!r}: "
                     f"use {fallback}")
  if jnp.dtype(dtype) != jnp.float32:
    raise ValueError(f"{option} computes in float32, not {jnp.dtype(dtype).name}: use {fallback}")


@functools.cache
def builds() -> bool:
  """Whether the library builds (or is cached) here; if not, one warning says why."""
  try:
    library()
  except (RuntimeError, OSError) as e:
    logging.warning("regnet_jax's CPU kernels are not used (the pure-JAX reference computes "
                    "the same, slower on CPU): %s", e)
    return False
  return True
