""":class:`KernelConvCell`: the regulator's cell computed by the compiled gate kernels.

A drop-in for :class:`regnet_jax.models.cells.ConvCell` with light-weight gates (the network's
``cell_cls``): the same fields, parameter tree and results, but each gate convolution and the
cell update after it run as one compiled kernel (:mod:`regnet_jax.cpu.gate_kernel`). CPU
backend and float32 only.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import linen as nn

from regnet_jax.cpu import gate_kernel
from regnet_jax.models.cells import ConvCell, LightGateConv

Array = jax.Array


class KernelConvCell(ConvCell):
  """:class:`~regnet_jax.models.cells.ConvCell` (light-weight gates only) on the gate kernels."""

  @nn.compact
  def __call__(self, x: Array, state: tuple[Array, ...]) -> tuple[Array, tuple[Array, ...]]:
    """One time step: ``x`` and each state ``[B, H, W, N]``, as :class:`ConvCell`."""
    n = self.features

    def weights(gates: int, name: str) -> tuple:
      """The arguments the kernels take for the gate convolution ``name``: its pairing, then
      after the inputs its pointwise, depthwise and bias parameters."""
      conv = self.gate_conv(n, gates, name=name)
      if not isinstance(conv, LightGateConv):
        raise ValueError("the CPU gate kernels compute light-weight gates; for "
                         "cell_conv='dense3x3' use cell_impl='reference'")
      return conv.pairing, (conv.pointwise, conv.depthwise, conv.bias)

    x, state = x.astype(jnp.float32), tuple(s.astype(jnp.float32) for s in state)
    h = state[0]
    if self.cell == "rnn":
      pairing, w = weights(1, "h")
      h_new = jnp.tanh(gate_kernel.gate(pairing, x, h, *w))
      return h_new, (h_new,)
    if self.cell == "gru":
      pairing, w = weights(2, "zr")
      z, rh = gate_kernel.gru_gates(pairing, x, h, *w, h)
      pairing, w = weights(1, "h")
      h_new = gate_kernel.gru_update(pairing, x, rh, *w, z, h)
      return h_new, (h_new,)
    pairing, w = weights(4, "ifog")
    h_new, c_new = gate_kernel.lstm(pairing, x, h, *w, state[1])
    return h_new, (h_new, c_new)
