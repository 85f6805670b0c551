"""``cell_impl='kernel'`` (and ``'auto'``, the default, on CPU): the light-weight gate
convolution as one compiled CPU kernel.

The cells' light-weight gates (:class:`regnet_jax.cells.GateConv`) are memory-bound chains of
small operations, and XLA:CPU materialises many intermediates of their forward and backward
passes. ``gate_kernel.cc`` computes a gate's pair mix, depthwise 3x3 and bias in one pass, and
its whole gradient in another, called through JAX's FFI; for the ConvLSTM and ConvGRU
(:func:`lstm`, :func:`gru_gates`, :func:`gru_update`) it also applies the cell's update, so
that the gates never leave the kernel. It is compiled on
first use with the system's C++ compiler (``$CXX``, else ``c++``) against the FFI headers
shipped with jaxlib, and cached under ``$REGNET_KERNEL_CACHE`` (default
``~/.cache/regnet_jax``) per source, compiler, FFI headers and CPU. CPU backend and float32 only;
results equal ``cell_impl='elementwise'`` up to float rounding (``tests/test_gate_kernel.py``).
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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array
_SOURCE = Path(__file__).with_name("gate_kernel.cc")
_FLAGS = ("-O3", "-march=native", "-std=c++20", "-shared", "-fPIC", "-pthread")


def _cpu_id() -> str:
  """The CPU's model and feature flags (``-march=native`` code is only valid on such a CPU)."""
  try:
    lines = Path("/proc/cpuinfo").read_text().splitlines()
  except OSError:
    return platform.processor()
  return "".join(line for line in lines if line.startswith(("model name", "flags")))[:4096]


def _cache_key(compiler: str) -> str:
  """What the compiled library depends on: the source, the compiler and its flags, the FFI
  headers it was built against (their contents: a jaxlib upgrade in place keeps their path),
  and the CPU."""
  headers = sorted(Path(jax.ffi.include_dir(), "xla", "ffi", "api").glob("*.h"))
  return hashlib.sha256(b"\0".join([
      _SOURCE.read_bytes(), compiler.encode(), " ".join(_FLAGS).encode(),
      *(h.read_bytes() for h in headers), _cpu_id().encode()])).hexdigest()[:16]


@functools.cache
def _library() -> ctypes.CDLL:
  compiler = os.environ.get("CXX", "c++")
  if shutil.which(compiler) is None:
    raise RuntimeError(
        f"cell_impl='kernel' compiles {_SOURCE.name} with a C++20 compiler, and {compiler!r} was "
        "not found: install one (e.g. `apt install g++`) or set $CXX, or use "
        "cell_impl='elementwise' (same results, pure XLA).")
  key = _cache_key(compiler)
  cache = Path(os.environ.get("REGNET_KERNEL_CACHE", Path.home() / ".cache" / "regnet_jax"))
  path = cache / f"gate_kernel-{key}.so"
  if not path.exists():
    try:
      cache.mkdir(parents=True, exist_ok=True)
      _compile(compiler, cache, path)
    except OSError as e:
      raise RuntimeError(f"cannot write the compiled cell kernel to {cache} ({e}): set "
                         "$REGNET_KERNEL_CACHE to a writable folder, or use "
                         "cell_impl='elementwise'") from e
  return ctypes.cdll.LoadLibrary(str(path))


def _compile(compiler: str, cache: Path, path: Path) -> None:
  """Compiles the kernel to ``path``, atomically (parallel test workers share the cache)."""
  with tempfile.TemporaryDirectory(dir=cache) as tmp:
    out = Path(tmp) / path.name
    result = subprocess.run(
        [compiler, *_FLAGS, "-I", jax.ffi.include_dir(), str(_SOURCE), "-o", str(out)],
        capture_output=True, text=True)
    if result.returncode != 0:
      raise RuntimeError(f"compiling {_SOURCE} failed (use cell_impl='elementwise' meanwhile):\n"
                         + result.stderr[-3000:])
    os.replace(out, path)


@functools.cache
def _register() -> None:
  lib = _library()
  for name in ("Gate", *_UPDATES):
    for step in ("Fwd", "Bwd"):
      target = f"Regnet{name}{step}"
      jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, target)), platform="cpu")


def check_supported(dtype: jnp.dtype) -> None:
  """Raises a ValueError unless the kernel can run here: CPU backend, float32."""
  if jax.default_backend() != "cpu":
    raise ValueError(f"cell_impl='kernel' is a CPU kernel; the backend is "
                     f"{jax.default_backend()!r}: use cell_impl='elementwise'")
  if jnp.dtype(dtype) != jnp.float32:
    raise ValueError(f"cell_impl='kernel' computes in float32, not {jnp.dtype(dtype).name}: "
                     "use cell_impl='elementwise'")


def usable(dtype: jnp.dtype) -> bool:
  """Whether ``cell_impl='auto'`` picks the kernel: CPU backend, float32, and the kernel
  compiles here (if it does not, a warning says why, and the caller falls back)."""
  if jax.default_backend() != "cpu" or jnp.dtype(dtype) != jnp.float32:
    return False
  return _builds()


@functools.cache
def _builds() -> bool:
  try:
    _library()
  except (RuntimeError, OSError) as e:
    logging.warning("cell_impl='auto' uses 'elementwise' (same results, slower on CPU): %s", e)
    return False
  return True


def _call(target: str, results: Any, pairing: str, *args: Array) -> Any:
  """Calls a kernel; under ``jax.vmap`` (e.g. stacked per-block cells' init) once per element."""
  _register()
  return jax.ffi.ffi_call(target, results, vmap_method="sequential")(
      *args, concat=pairing == "concat")


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def gate(pairing: str, a: Array, b: Array, pointwise: Array, depthwise: Array,
         bias: Array) -> Array:
  """G light-weight gate convolutions of the N channel pairs ``(p_n, q_n)`` of ``a, b``.

  Args:
    pairing: which channels pair up (:func:`regnet_jax.cells._channel_pairs`):
      ``'interleave'``, ``(a_n, b_n)``; ``'concat'``, channels ``(2n, 2n + 1)`` of
      ``concat([a, b], -1)``. The kernel reads the pairs from ``a`` and ``b`` in place.
    a, b: ``[B, H, W, N]``, the cell's two inputs.
    pointwise: ``[2, G*N]``, the grouped 1x1's weights (gate-major).
    depthwise: ``[3, 3, G*N]``.
    bias: ``[G*N]``.
  Returns:
    ``[B, H, W, G*N]``: gate g's channel n is ``bias + depthwise3x3(w0 * p_n + w1 * q_n)``.
  """
  out = jax.ShapeDtypeStruct(a.shape[:-1] + bias.shape, jnp.float32)
  return _call("RegnetGateFwd", out, pairing, a, b, pointwise, depthwise, bias)


def _gate_fwd(pairing, a, b, pointwise, depthwise, bias):
  return gate(pairing, a, b, pointwise, depthwise, bias), (a, b, pointwise, depthwise)


def _gate_bwd(pairing, residuals, dy):
  shapes = [jax.ShapeDtypeStruct(x.shape, jnp.float32) for x in residuals]
  bias = jax.ShapeDtypeStruct(dy.shape[-1:], jnp.float32)
  return tuple(_call("RegnetGateBwd", (*shapes, bias), pairing, *residuals, dy))


gate.defvjp(_gate_fwd, _gate_bwd)


# The cells' updates fused after the gate convolution (``Regnet<Name>Fwd`` / ``Bwd`` in
# gate_kernel.cc): the channels of the forward's outputs ("N" per state, "C" for all G*N
# gates), how many of them the function returns (the others are only for the backward, and
# left empty when nothing is differentiated), and which of them the backward reads.
_UPDATES = {
    "Lstm": (("N", "N", "C"), 2, (1, 2)),  # -> h', c'; keeps c' and the activations
    "GruGates": (("N", "N", "N"), 2, (0, 2)),  # -> s(z), s(r) h; keeps s(z), s(r)
    "GruUpdate": (("N", "N"), 1, (1,)),  # -> h'; keeps tanh(y)
}


def _fused(name: str, doc: str) -> Callable[..., Any]:
  """``f(pairing, a, b, pointwise, depthwise, bias, *states)``: the gates of :func:`gate` fed
  into a cell's update inside the kernel, with a custom VJP; neither the gates nor their
  gradients are materialised."""
  channels, returned, kept = _UPDATES[name]

  def run(for_backward, pairing, a, b, pointwise, depthwise, bias, *states):
    shapes = [jax.ShapeDtypeStruct(
        (*a.shape[:-1], bias.shape[0] if c == "C" else a.shape[-1])
        if for_backward or i < returned else (0,), jnp.float32) for i, c in enumerate(channels)]
    outs = _call(f"Regnet{name}Fwd", shapes, pairing, a, b, pointwise, depthwise, bias, *states)
    return (outs[0] if returned == 1 else tuple(outs[:returned])), outs

  def forward(pairing, a, b, pointwise, depthwise, bias, *states):
    result, outs = run(True, pairing, a, b, pointwise, depthwise, bias, *states)
    return result, (a, b, pointwise, depthwise, *states, *(outs[i] for i in kept))

  def backward(pairing, residuals, cotangents):
    inputs = residuals[:len(residuals) - len(kept)]  # a, b, pointwise, depthwise, states
    shapes = [jax.ShapeDtypeStruct(x.shape, jnp.float32) for x in inputs]
    shapes.insert(4, jax.ShapeDtypeStruct(residuals[3].shape[-1:], jnp.float32))  # bias
    cotangents = (cotangents,) if returned == 1 else cotangents
    return tuple(_call(f"Regnet{name}Bwd", shapes, pairing, *residuals, *cotangents))

  fused = jax.custom_vjp(lambda *args: run(False, *args)[0], nondiff_argnums=(0,))
  fused.defvjp(forward, backward)
  fused.__doc__ = doc
  return fused


lstm = _fused("Lstm", """ConvLSTM (G = 4 gates i, f, o, g; state c): ``(h', c')`` with
``c' = s(f) c + s(i) tanh(g)``, ``h' = s(o) tanh(c')``; every array ``[B, H, W, N]``.""")
gru_gates = _fused("GruGates", """ConvGRU's first convolution (G = 2 gates z, r; state h):
``(s(z), s(r) h)``; every array ``[B, H, W, N]``.""")
gru_update = _fused("GruUpdate", """ConvGRU's second convolution (G = 1 gate y; states z, h):
``h' = (1 - z) h + z tanh(y)``; every array ``[B, H, W, N]``.""")
