"""The regulator's cells: ConvRNN, ConvGRU and ConvLSTM, written over "2N -> N" gate convolutions.

Every convolution inside a cell reads two N-channel maps, the block's feature map ``x`` and the
cell's memory ``h`` (or ``r * h``), and writes G gates of N channels each. It is one of:

- :class:`LightGateConv` (default): a grouped 1x1 convolution with ``groups=N`` over N channel
  pairs (each gate channel mixes the two channels of its pair), then a depthwise 3x3
  convolution and a bias: ``11N`` weights and ``N`` biases per gate.
- :class:`DenseGateConv`: a dense 3x3 convolution over ``concat([x, h])``: ``18N^2`` weights and
  ``N`` biases per gate.

Which channels form a pair is the ``pairing``: ``'interleave'`` (default) pairs ``x_k`` with
``h_k``, so every gate channel fuses the input with the memory. ``'concat'`` is the literal
grouped 1x1 over ``concat([x, h])``, which pairs channels ``(2k, 2k+1)`` of the concatenation:
gate channels ``k < N/2`` then read only ``x`` and the others only ``h``, and nothing is fused
(docs/model.md). The gates a
cell computes from the same input share one module whose parameters are gate-major (channels
``[g*N:(g+1)*N]`` belong to gate g).

This is the reference implementation, pure JAX, the same on every backend. A faster
implementation of a whole cell plugs in as the network's ``cell_cls`` with the same parameter
tree (the CPU kernels of ``regnet_jax.cpu`` do).

Shapes: ``x`` and every state tensor are ``[B, H, W, N]``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import jax
import jax.numpy as jnp
from flax import linen as nn

Array = jax.Array
Dtype = Any
ModuleDef = Callable[..., nn.Module]

CELL_TYPES = ("rnn", "gru", "lstm")
CELL_CONVS = ("light", "dense3x3")
PAIRINGS = ("concat", "interleave")

_pointwise_init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal", 0, 1)
_depthwise_init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal", (0, 1), 2)


def channel_pairs(a: Array, b: Array, pairing: str) -> tuple[Array, Array]:
  """The first and second members of the N channel pairs of ``a`` and ``b``.

  ``'interleave'``: pair k is ``(a_k, b_k)``. ``'concat'``: pair k is channels ``(2k, 2k+1)``
  of ``concat([a, b], -1)``. Inputs and outputs are ``[..., N]``.
  """
  if pairing == "interleave":
    return a, b
  z = jnp.concatenate([a, b], axis=-1)
  return z[..., 0::2], z[..., 1::2]


def depthwise3x3(x: Array, kernel: Array) -> Array:
  """3x3 depthwise convolution, stride 1, zero padding. ``x [B, H, W, C]``, ``kernel [3, 3, C]``
  -> ``[B, H, W, C]``."""
  return jax.lax.conv_general_dilated(
      x, kernel[:, :, None, :], (1, 1), ((1, 1), (1, 1)),
      dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=x.shape[-1])


class LightGateConv(nn.Module):
  """G light-weight "2N -> N" gate convolutions: a grouped 1x1 (groups=N), then a depthwise 3x3.

  Gate g's channel k is ``bias + depthwise3x3(w0[g,k] * p_k + w1[g,k] * q_k)`` for the channel
  pair ``(p_k, q_k)`` of :func:`channel_pairs`.

  Attributes:
    features: N, the width of each input and of each gate.
    gates: G, the number of gates computed from the same inputs.
    pairing: ``'interleave'`` or ``'concat'`` (:func:`channel_pairs`).
    use_bias: one bias per gate channel.
    dtype: compute dtype; parameters are float32.
  """

  features: int
  gates: int = 1
  pairing: Literal["concat", "interleave"] = "interleave"
  use_bias: bool = True
  dtype: Dtype = jnp.float32

  def setup(self) -> None:
    channels = self.gates * self.features
    self.pointwise = self.param("pointwise", _pointwise_init, (2, channels))  # [w0; w1]
    self.depthwise = self.param("depthwise", _depthwise_init, (3, 3, channels))
    self.bias = (self.param("bias", nn.initializers.zeros, (channels,)) if self.use_bias
                 else jnp.zeros((channels,)))

  def __call__(self, a: Array, b: Array) -> Array:
    """``a, b: [B, H, W, N]`` -> the G gates, ``[B, H, W, G*N]`` (gate-major)."""
    n, g, dtype = self.features, self.gates, self.dtype
    p, q = channel_pairs(a.astype(dtype), b.astype(dtype), self.pairing)
    w = self.pointwise.astype(dtype).reshape(2, g, n)
    y = p[..., None, :] * w[0] + q[..., None, :] * w[1]  # grouped 1x1: [B, H, W, G, N]
    y = depthwise3x3(y.reshape(*p.shape[:-1], g * n), self.depthwise.astype(dtype))
    return y + self.bias.astype(dtype)


class DenseGateConv(nn.Module):
  """G dense "2N -> N" gate convolutions: one 3x3 convolution over ``concat([a, b])``.

  Attributes:
    features: N.
    gates: G.
    use_bias: one bias per gate channel.
    conv: the convolution module (``flax.linen.Conv`` or a drop-in with the same parameters).
    dtype: compute dtype; parameters are float32.
  """

  features: int
  gates: int = 1
  use_bias: bool = True
  conv: ModuleDef = nn.Conv
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, a: Array, b: Array) -> Array:
    """``a, b: [B, H, W, N]`` -> the G gates, ``[B, H, W, G*N]`` (gate-major)."""
    ab = jnp.concatenate([a, b], axis=-1).astype(self.dtype)
    return self.conv(self.gates * self.features, (3, 3), padding=((1, 1), (1, 1)),
                     use_bias=self.use_bias, dtype=self.dtype, name="conv")(ab)


def initial_state(cell: str, x: Array) -> tuple[Array, ...]:
  """Zero state for a cell of type ``cell`` on input ``x: [B, H, W, N]``: ``(h,)``, or
  ``(h, c)`` for the LSTM, each ``[B, H, W, N]``."""
  zeros = jnp.zeros_like(x)
  return (zeros, zeros) if cell == "lstm" else (zeros,)


class ConvCell(nn.Module):
  """A ConvRNN, ConvGRU or ConvLSTM cell with N input and N hidden channels.

  ``W * [x, h]`` below is a gate convolution (``gate_conv``) of ``x`` and ``h``; ``s`` is the
  sigmoid.

  - ``rnn``: ``h' = tanh(W_h * [x, h])``.
  - ``gru``: ``z, r = s(W_zr * [x, h])``; ``h' = (1 - z) h + z tanh(W_h * [x, r h])``.
  - ``lstm`` (no peepholes): ``i, f, o, g = W_ifog * [x, h]``;
    ``c' = s(f) c + s(i) tanh(g)``; ``h' = s(o) tanh(c')``.

  Attributes:
    features: N.
    cell: ``'rnn'``, ``'gru'`` or ``'lstm'``.
    gate_conv: constructor of the gate convolutions, called as ``gate_conv(N, G, name=...)``:
      :class:`LightGateConv` or :class:`DenseGateConv`, with their options bound.
    dtype: compute dtype.
  """

  features: int
  cell: Literal["rnn", "gru", "lstm"] = "gru"
  gate_conv: ModuleDef = LightGateConv
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, state: tuple[Array, ...]) -> tuple[Array, tuple[Array, ...]]:
    """One time step.

    Args:
      x: ``[B, H, W, N]``, the block's feature map X2.
      state: ``(h,)``, or ``(h, c)`` for the LSTM, each ``[B, H, W, N]``.
    Returns:
      ``(h_new, new_state)``; ``h_new: [B, H, W, N]`` and ``new_state`` like ``state``.
    """
    n = self.features
    x, state = x.astype(self.dtype), tuple(s.astype(self.dtype) for s in state)
    gates = lambda g, name, memory: jnp.split(self.gate_conv(n, g, name=name)(x, memory), g, -1)
    h = state[0]
    if self.cell == "rnn":
      (y,) = gates(1, "h", h)
      h_new = jnp.tanh(y)
      return h_new, (h_new,)
    if self.cell == "gru":
      z, r = map(nn.sigmoid, gates(2, "zr", h))
      (y,) = gates(1, "h", r * h)
      h_new = (1.0 - z) * h + z * jnp.tanh(y)
      return h_new, (h_new,)
    i, f, o, g = gates(4, "ifog", h)
    c_new = nn.sigmoid(f) * state[1] + nn.sigmoid(i) * jnp.tanh(g)
    h_new = nn.sigmoid(o) * jnp.tanh(c_new)
    return h_new, (h_new, c_new)
