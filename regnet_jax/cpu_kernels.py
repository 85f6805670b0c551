"""The project's compiled CPU kernels: built on first use, cached, and called through JAX's FFI.

Two sources make one library: ``gate_kernel.cc`` (the cells' light-weight gates,
``cell_impl='kernel'``, :mod:`regnet_jax.gate_kernel`) and ``conv_kernel.cc`` (the dense
convolutions' kernel gradient, ``conv_grad='kernel'``, :mod:`regnet_jax.conv`). They are
compiled with the system's C++ compiler (``$CXX``, else ``c++``) against the FFI headers shipped
with jaxlib, and cached under ``$REGNET_KERNEL_CACHE`` (default ``~/.cache/regnet_jax``) per
source, compiler, FFI headers and CPU. CPU backend and float32 only. Both options' ``'auto'``
(the models' default) use the kernels where they run and build, and otherwise the pure-XLA
computation of the same result.
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
_FALLBACKS = "cell_impl='elementwise' and conv_grad='swapped' (same results, pure XLA)"


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
  with tempfile.TemporaryDirectory(dir=cache) as tmp:
    out = Path(tmp) / path.name
    result = subprocess.run(
        [compiler, *_FLAGS, "-I", jax.ffi.include_dir(), *map(str, _SOURCES), "-o", str(out)],
        capture_output=True, text=True)
    if result.returncode != 0:
      raise RuntimeError(f"compiling regnet_jax's CPU kernels failed (use {_FALLBACKS} "
                         "meanwhile):\n" + result.stderr[-3000:])
    os.replace(out, path)


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


def usable(dtype: jnp.dtype) -> bool:
  """Whether ``'auto'`` picks the kernels: CPU backend, float32, and they build here (if they
  do not, one warning says why, and the callers fall back)."""
  if jax.default_backend() != "cpu" or jnp.dtype(dtype) != jnp.float32:
    return False
  return _builds()


@functools.cache
def _builds() -> bool:
  try:
    library()
  except (RuntimeError, OSError) as e:
    logging.warning("regnet_jax's CPU kernels are not used (cell_impl='auto' -> 'elementwise', "
                    "conv_grad='auto' -> 'swapped'; same results, slower on CPU): %s", e)
    return False
  return True
