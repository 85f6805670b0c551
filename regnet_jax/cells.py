"""ConvRNN regulator cells (paper Eq. 1 and the ConvGRU / ConvLSTM of Sec. III).

Every "2N -> N" convolution inside a cell is a :class:`GateConv`: either the paper's
light-weight two-step convolution (a grouped 1x1 with ``groups=N`` that fuses channel pairs,
then a depthwise 3x3; 11N weights per gate) or a dense 3x3 convolution (18N^2 weights per
gate; Table I's other row). All gates that read the same input share one module with
stacked parameters: ``GateConv(features=N, gates=G)`` maps two N-channel inputs to a tuple of
G gates, each N channels (its parameters are gate-major: channels ``[g*N:(g+1)*N]`` belong to
gate g). The default ``impl='elementwise'`` computes each light-weight gate on its own (1.13x
faster RegNet-20 train steps on XLA:CPU than one G*N-channel computation:
docs/performance.md); the models default to ``impl='auto'``, the C++ kernel of
:mod:`regnet_jax.gate_kernel` where it runs.

Cells are plain linen modules over explicit inputs; the stage in ``models.py`` decides whether
one cell's parameters are shared across the blocks of a stage (an RNN, the default) or each
block has its own.

Shapes: x and every state tensor are ``[B, H, W, N]``.
"""

from __future__ import annotations

from typing import Any, Literal

import jax
import jax.numpy as jnp
from flax import linen as nn

from regnet_jax import conv as conv_lib
from regnet_jax import cpu_kernels, gate_kernel

Array = jax.Array
Dtype = Any

CELL_TYPES = ("rnn", "gru", "lstm")
CELL_CONVS = ("light", "dense3x3")
PAIRINGS = ("concat", "interleave")
CONV_IMPLS = ("elementwise", "conv", "kernel", "auto")

_pointwise_init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal", 0, 1)
_depthwise_init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal", (0, 1), 2)


def check_choice(name: str, value: Any, choices: tuple) -> None:
  """Raises a ValueError naming the valid choices if ``value`` is not one of them."""
  if value not in choices:
    raise ValueError(f"{name}={value!r} is not valid; choose one of {', '.join(map(str, choices))}")


def _channel_pairs(a: Array, b: Array, pairing: str) -> tuple[Array, Array]:
  """Returns the (first, second) members of the N channel pairs of ``concat([a, b])``.

  ``concat``: the literal grouped 1x1 over ``concat([a, b], -1)`` pairs adjacent channels
  (2k, 2k+1), so output k < N/2 sees only ``a`` and output k >= N/2 sees only ``b``.
  ``interleave``: pair k is ``(a_k, b_k)``. Both inputs and outputs are ``[..., N]``.
  """
  if pairing == "interleave":
    return a, b
  z = jnp.concatenate([a, b], axis=-1)
  return z[..., 0::2], z[..., 1::2]


def _shifted_taps(x: Array, kernel: Array) -> Array:
  """``sum_{i,j} pad(x)[:, i:i+H, j:j+W] * kernel[i, j]``: nine shifted multiply-adds that XLA
  fuses into one loop. ``x: [B, H, W, C]``, ``kernel: [3, 3, C]``; returns ``[B, H, W, C]``."""
  h, w = x.shape[1], x.shape[2]
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  taps = [xp[:, i:i + h, j:j + w, :] * kernel[i, j] for i in range(3) for j in range(3)]
  return sum(taps[1:], taps[0])


@jax.custom_vjp
def _depthwise_elementwise(x: Array, kernel: Array) -> Array:
  return _shifted_taps(x, kernel)


def _depthwise_fwd(x: Array, kernel: Array) -> tuple[Array, tuple[Array, Array]]:
  return _shifted_taps(x, kernel), (x, kernel)


def _depthwise_bwd(residuals: tuple[Array, Array], dy: Array) -> tuple[Array, Array]:
  """Input gradient: the same nine taps over ``dy`` with the kernel flipped. Kernel gradient:
  ``dk[i, j] = sum(pad(x)[:, i:i+H, j:j+W] * dy)``, written as ``sum(pad(x) * pad(dy, shifted))``
  over the padded grid. Autodiff's form slices ``pad(x)``, and XLA:CPU materialises each of the
  nine slices before its reduction; pads fuse into the reduction (see docs/performance.md)."""
  x, kernel = residuals
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  dk = [jnp.sum(xp * jnp.pad(dy, ((0, 0), (i, 2 - i), (j, 2 - j), (0, 0))), axis=(0, 1, 2))
        for i in range(3) for j in range(3)]
  return _shifted_taps(dy, kernel[::-1, ::-1]), jnp.stack(dk).reshape(kernel.shape)


_depthwise_elementwise.defvjp(_depthwise_fwd, _depthwise_bwd)


def depthwise3x3(x: Array, kernel: Array, impl: str) -> Array:
  """3x3 depthwise convolution, stride 1, zero 'SAME' padding.

  Args:
    x: ``[B, H, W, C]``.
    kernel: ``[3, 3, C]``.
    impl: ``'conv'`` (``lax.conv`` with ``feature_group_count=C``) or ``'elementwise'``
      (nine shifted multiply-adds fused into one loop, with a hand-written gradient; faster on
      CPU).
  Returns:
    ``[B, H, W, C]``.
  """
  if impl == "conv":
    return jax.lax.conv_general_dilated(
        x, kernel[:, :, None, :], (1, 1), ((1, 1), (1, 1)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=x.shape[-1])
  return _depthwise_elementwise(x, kernel)


class GateConv(nn.Module):
  """G stacked "2N -> N" gate convolutions over the channel concatenation ``[a, b]``.

  Attributes:
    features: N, the width of each input and of each gate.
    gates: G, the number of gates computed from the same input.
    kind: ``'light'`` (grouped 1x1 with groups=N, then depthwise 3x3) or ``'dense3x3'``.
    pairing: channel pairing of the grouped 1x1, see :func:`_channel_pairs`.
    impl: how the light-weight convolution is computed: ``'elementwise'``, ``'conv'``,
      ``'kernel'`` (:mod:`regnet_jax.gate_kernel`, compiled C++; CPU, float32) or ``'auto'``
      (``'kernel'`` where it can run and compile, else ``'elementwise'``); all give the same
      result from the same parameters.
    use_bias: one bias per gate channel (on the depthwise step for ``'light'``).
    grad: kernel gradient of the ``'dense3x3'`` convolution: ``'lax'`` (autodiff), or
      ``'swapped'`` or ``'kernel'`` (:mod:`regnet_jax.conv`; faster on CPU).
    dtype: compute dtype; parameters are float32.
  """

  features: int
  gates: int = 1
  kind: Literal["light", "dense3x3"] = "light"
  pairing: Literal["concat", "interleave"] = "concat"
  impl: Literal["elementwise", "conv", "kernel", "auto"] = "elementwise"
  use_bias: bool = True
  grad: Literal["lax", "swapped", "kernel"] = "lax"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, a: Array, b: Array, update: str | None = None,
               states: tuple[Array, ...] = ()) -> Array | tuple[Array, ...]:
    """Maps ``a, b: [B, H, W, N]`` to the G gates, each ``[B, H, W, N]``; or, with an
    ``update`` (a key of :data:`UPDATES`), to ``UPDATES[update](*gates, *states)``: the cell's
    update of the gates and its states (each ``[B, H, W, N]``), which ``impl='kernel'``
    computes in the same pass as the gates."""
    n, g = self.features, self.gates
    a, b = a.astype(self.dtype), b.astype(self.dtype)
    if self.kind == "dense3x3":
      y = nn.Conv(g * n, (3, 3), padding=((1, 1), (1, 1)), use_bias=self.use_bias,
                  dtype=self.dtype, name="conv",
                  conv_general_dilated=conv_lib.for_flax(self.grad),
                  )(jnp.concatenate([a, b], axis=-1))
      return self._finish(tuple(jnp.split(y, g, axis=-1)), update, states)
    # Step 1: grouped 1x1, groups=N: gate channel (g, k) = w0[g,k] * p_k + w1[g,k] * q_k.
    pointwise = self.param("pointwise", _pointwise_init, (2, g * n))
    depthwise = self.param("depthwise", _depthwise_init, (3, 3, g * n))
    bias = (self.param("bias", nn.initializers.zeros, (g * n,)) if self.use_bias
            else jnp.zeros((g * n,))).astype(self.dtype)
    pointwise, depthwise = pointwise.astype(self.dtype), depthwise.astype(self.dtype)
    impl = self.impl
    if impl == "auto":
      impl = "kernel" if cpu_kernels.usable(self.dtype) else "elementwise"
    if impl == "kernel":  # pairs the channels of a, b itself
      gate_kernel.check_supported(self.dtype)
      args = (self.pairing, a, b, pointwise, depthwise, bias)
      if update is not None:
        return getattr(gate_kernel, update)(*args, *(x.astype(self.dtype) for x in states))
      return tuple(jnp.split(gate_kernel.gate(*args), g, axis=-1))
    p, q = _channel_pairs(a, b, self.pairing)
    gates = [slice(i * n, (i + 1) * n) for i in range(g)]
    if impl == "conv":
      # Pair channels (p_k, q_k) as input group k; group k's outputs are its G gates.
      pq = jnp.stack([p, q], axis=-1).reshape(*p.shape[:-1], 2 * n)
      kernel = pointwise.reshape(2, g, n).transpose(0, 2, 1).reshape(1, 1, 2, n * g)
      y = jax.lax.conv_general_dilated(
          pq, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"),
          feature_group_count=n)
      y = y.reshape(*y.shape[:-1], n, g).swapaxes(-1, -2).reshape(*y.shape[:-1], g * n)
      y = depthwise3x3(y, depthwise, impl)  # Step 2: depthwise 3x3, groups = G*N.
      return self._finish(tuple(y[..., c] + bias[c] for c in gates), update, states)
    # Gate by gate (faster on XLA:CPU than one G*N-channel mix): step 1, then its depthwise.
    return self._finish(tuple(
        depthwise3x3(p * pointwise[0, c] + q * pointwise[1, c], depthwise[..., c], impl)
        + bias[c] for c in gates), update, states)

  @staticmethod
  def _finish(gates: tuple[Array, ...], update: str | None, states: tuple[Array, ...]
              ) -> Array | tuple[Array, ...]:
    return gates if update is None else UPDATES[update](*gates, *states)


# The cells' updates of their gates' pre-activations (every array [B, H, W, N]); GateConv
# applies them, and with impl='kernel' inside the kernel (gate_kernel.lstm, ...).
def lstm(i: Array, f: Array, o: Array, g: Array, c: Array) -> tuple[Array, Array]:
  """ConvLSTM: ``c' = s(f) * c + s(i) * tanh(g)``, ``h' = s(o) * tanh(c')``; ``(h', c')``."""
  c_new = nn.sigmoid(f) * c + nn.sigmoid(i) * jnp.tanh(g)
  return nn.sigmoid(o) * jnp.tanh(c_new), c_new


def gru_gates(z: Array, r: Array, h: Array) -> tuple[Array, Array]:
  """ConvGRU's first convolution: ``(s(z), s(r) * h)``."""
  return nn.sigmoid(z), nn.sigmoid(r) * h


def gru_update(y: Array, z: Array, h: Array) -> Array:
  """ConvGRU's second convolution (y = W_h * [x, r * h]): ``h' = (1 - z) * h + z * tanh(y)``."""
  return (1.0 - z) * h + z * jnp.tanh(y)


UPDATES = {"lstm": lstm, "gru_gates": gru_gates, "gru_update": gru_update}


def initial_state(cell: str, x: Array) -> tuple[Array, ...]:
  """Zero state for a cell of type ``cell`` on input ``x: [B, H, W, N]``: ``(h,)``, or
  ``(h, c)`` for the LSTM, each ``[B, H, W, N]``."""
  zeros = jnp.zeros_like(x)
  return (zeros, zeros) if cell == "lstm" else (zeros,)


class ConvCell(nn.Module):
  """A ConvRNN, ConvGRU or ConvLSTM cell with N input and N hidden channels.

  ``rnn`` (Eq. 1): ``h' = tanh(W_h * [x, h] + b_h)``.
  ``gru`` (Ballas et al.): ``z, r = sigmoid(W_{z,r} * [x, h])``,
  ``h~ = tanh(W_h * [x, r*h])``, ``h' = (1 - z) * h + z * h~``.
  ``lstm`` (Shi et al., no peepholes): ``i, f, o = sigmoid(W * [x, h])``,
  ``g = tanh(W_g * [x, h])``, ``c' = f*c + i*g``, ``h' = o * tanh(c')``.

  Attributes:
    features: N.
    cell: ``'rnn'``, ``'gru'`` or ``'lstm'``.
    conv: keyword arguments of every :class:`GateConv` (kind, pairing, impl, use_bias).
    dtype: compute dtype.
  """

  features: int
  cell: Literal["rnn", "gru", "lstm"] = "gru"
  conv: dict = None  # type: ignore[assignment]
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, state: tuple[Array, ...]) -> tuple[Array, tuple[Array, ...]]:
    """One time step.

    Args:
      x: ``[B, H, W, N]``, the block's feature map X2.
      state: ``(h,)`` or ``(h, c)``, each ``[B, H, W, N]``.
    Returns:
      ``(h_new, new_state)``; ``h_new: [B, H, W, N]`` and ``new_state`` like ``state``.
    """
    n = self.features
    gate = lambda gates, name: GateConv(n, gates, dtype=self.dtype, name=name, **(self.conv or {}))
    h = state[0]
    if self.cell == "rnn":
      (h_tilde,) = gate(1, "h")(x, h)
      h_new = jnp.tanh(h_tilde)
      return h_new, (h_new,)
    if self.cell == "gru":
      z, rh = gate(2, "zr")(x, h, "gru_gates", (h,))
      h_new = gate(1, "h")(x, rh, "gru_update", (z, h))
      return h_new, (h_new,)
    h_new, c_new = gate(4, "ifog")(x, h, "lstm", (state[1],))
    return h_new, (h_new, c_new)
