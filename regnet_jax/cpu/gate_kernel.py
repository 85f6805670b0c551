"""The light-weight gate convolution, and the cells' updates fused after it, as compiled CPU
kernels (``gate_kernel.cc``) with custom VJPs.

The cells' light-weight gates are memory-bound chains of small operations, and XLA:CPU
materialises many intermediates of their forward and backward passes. The kernel computes a
gate's pair mix, depthwise 3x3 and bias in one pass, and its whole gradient in another; for the
ConvLSTM and ConvGRU (:func:`lstm`, :func:`gru_gates`, :func:`gru_update`) it also applies the
cell's update, so that the gates never leave the kernel. CPU backend and float32 only; results
equal :class:`regnet_jax.models.cells.LightGateConv` and the cell equations up to float
rounding (``tests/cpu/test_gate_kernel.py``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from regnet_jax.cpu import kernels

Array = jax.Array


def _call(target: str, results: Any, pairing: str, *args: Array) -> Any:
  return kernels.call(target, results, *args, concat=pairing == "concat")


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def gate(pairing: str, a: Array, b: Array, pointwise: Array, depthwise: Array,
         bias: Array) -> Array:
  """G light-weight gate convolutions of the N channel pairs ``(p_n, q_n)`` of ``a, b``.

  Args:
    pairing: which channels pair up (:func:`regnet_jax.models.cells.channel_pairs`):
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
