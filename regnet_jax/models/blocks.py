"""Residual building blocks: ResNet basic/bottleneck, regulated (Eq. 2 / Eq. 3), with optional SE.

A block is one time step of its stage's regulator. Every block has the signature of an
``nn.scan`` body::

    (x, state), None = block((x, state), cell_params)

``x: [B, H, W, C]`` is the block input X1; ``state`` is the regulator's recurrent state (a tuple
of ``[B, H', W', N]`` arrays; ``None`` before the first step of a stage, which then starts
from zeros; ``()`` for an unregulated block). ``cell_params`` are the parameters of the
stage's :class:`~regnet_jax.models.cells.ConvCell` (shared by all blocks of a stage, or this block's
own), passed in so that ``nn.scan`` can broadcast them instead of stacking them.

Each block sows its output O (``'features'``) and, if regulated, its normalised hidden state H
(``'hidden'``) into the ``'intermediates'`` collection, for the paper's Fig. 1 analyses.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from regnet_jax.models.cells import initial_state

Array = jax.Array
ModuleDef = Callable[..., nn.Module]
State = tuple[Array, ...] | None


class SqueezeExcite(nn.Module):
  """Squeeze-and-excitation: ``x * sigmoid(FC2(relu(FC1(GAP(x)))))``, ``[B,H,W,C] -> same``."""

  ratio: int
  use_bias: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    c = x.shape[-1]
    s = jnp.mean(x, axis=(1, 2))
    s = nn.relu(nn.Dense(max(c // self.ratio, 1), use_bias=self.use_bias, dtype=self.dtype,
                         name="reduce")(s))
    s = nn.sigmoid(nn.Dense(c, use_bias=self.use_bias, dtype=self.dtype, name="expand")(s))
    return x * s[:, None, None, :]


class Regulator(nn.Module):
  """One step of the stage's ConvRNN: ``[H, state'] = ReLU(BN(Cell(X2, state)))``.

  The cell's own parameters come in as an argument; this module owns only the per-block BN
  of H (BN statistics are per time step).

  Attributes:
    cell: constructor of the cell (a ``functools.partial`` of
      :class:`~regnet_jax.models.cells.ConvCell`) whose parameters are passed in.
    norm: BatchNorm constructor.
    carry_normed_h: carry ``ReLU(BN(h))`` to the next step (default, as Eq. 2 writes it) or
      the raw cell output ``h``.
  """

  cell: ModuleDef
  norm: ModuleDef
  carry_normed_h: bool = True

  @nn.compact
  def __call__(self, x: Array, state: State, cell_params: Any) -> tuple[Array, tuple]:
    """``x: [B, H, W, N]`` -> ``(H: [B, H, W, N], new_state)``."""
    cell = self.cell(parent=None)
    if state is None:
      state = initial_state(cell.cell, x)
    h_raw, state = cell.apply({"params": cell_params}, x, state)
    h = nn.relu(self.norm(name="bn_h")(h_raw))
    if self.carry_normed_h:
      state = (h, *state[1:])
    return h, state


class _Block(nn.Module):
  """Fields common to the basic and the bottleneck block.

  Attributes:
    features: N, the block's internal width (the output has N or 4N channels).
    conv: convolution constructor (no bias, He init, compute dtype).
    norm: BatchNorm constructor (train/eval mode already bound).
    strides: spatial stride of this block (2 in the first block of a downsampling stage).
    cell: constructor of the regulator's cell; None for a plain ResNet block.
    carry_normed_h: see :class:`Regulator`.
    se_ratio: squeeze-and-excitation reduction ratio; None for no SE.
    se_bias: whether the SE fully connected layers have biases.
    shortcut: ``'B'``: 1x1 projection + BN where the shape changes; ``'A'``: parameter-free
      subsample + zero-pad channels (He et al.'s CIFAR option).
    projection_bias: whether the 1x1 projection has a bias.
    dtype: compute dtype.
  """

  features: int
  conv: ModuleDef
  norm: ModuleDef
  strides: int = 1
  cell: ModuleDef | None = None
  carry_normed_h: bool = True
  se_ratio: int | None = None
  se_bias: bool = False
  shortcut: str = "B"
  projection_bias: bool = True
  dtype: Any = jnp.float32

  def regulate(self, x: Array, state: State, cell_params: Any) -> tuple[Array, tuple]:
    h, state = Regulator(self.cell, self.norm, self.carry_normed_h, name="regulator")(
        x, state, cell_params)
    self.sow("intermediates", "hidden", h)
    return h, state

  def residual(self, x: Array, y: Array) -> Array:
    """``ReLU(shortcut(x) + SE(y))``; ``y`` is the residual branch at the output shape."""
    if self.se_ratio:
      y = SqueezeExcite(self.se_ratio, self.se_bias, self.dtype, name="se")(y)
    if x.shape != y.shape:
      if self.shortcut == "A":
        x = x[:, ::self.strides, ::self.strides, :]
        pad = y.shape[-1] - x.shape[-1]
        x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (pad // 2, pad - pad // 2)))
      else:
        x = self.conv(y.shape[-1], (1, 1), (self.strides, self.strides),
                      use_bias=self.projection_bias, name="proj_conv")(x)
        x = self.norm(name="proj_bn")(x)
    out = nn.relu(x + y)
    self.sow("intermediates", "features", out)
    return out


class BasicBlock(_Block):
  """Basic block; with a cell it is the regulated basic module of Eq. 2 (CIFAR).

  ``X2 = ReLU(BN(conv3x3_s(X1)))``; ``[H, state] = Regulator(X2, state)``;
  ``X3 = ReLU(BN(conv1x1([X2, H])))`` (2N -> N fusion); ``X4 = BN(conv3x3(X3))``;
  ``X1' = ReLU(shortcut(X1) + SE(X4))``. Without a cell, X3 = X2 (a ResNet basic block).
  """

  @nn.compact
  def __call__(self, carry: tuple[Array, State], cell_params: Any):
    x, state = carry
    n, s = self.features, self.strides
    y = nn.relu(self.norm(name="bn1")(self.conv(n, (3, 3), (s, s), name="conv1")(x)))
    if self.cell is not None:
      h, state = self.regulate(y, state, cell_params)
      y = jnp.concatenate([y, h.astype(y.dtype)], axis=-1)
      y = nn.relu(self.norm(name="bn_fuse")(self.conv(n, (1, 1), name="conv_fuse")(y)))
    y = self.norm(name="bn2")(self.conv(n, (3, 3), name="conv2")(y))
    return (self.residual(x, y), state), None


class BottleneckBlock(_Block):
  """Bottleneck block; with a cell it is the regulated bottleneck module of Eq. 3 (ImageNet).

  ``X2 = ReLU(BN(conv1x1(X1)))``; ``[H, state] = Regulator(X2, state)``;
  ``X3 = ReLU(BN(conv3x3_s(X2)))``; ``X4 = ReLU(BN(conv1x1([X3, H])))`` (2N -> N fusion);
  ``X5 = BN(conv1x1(X4))`` (N -> 4N); ``X1' = ReLU(shortcut(X1) + SE(X5))``.

  Attributes:
    stride_on: ``'3x3'`` (torchvision v1.5; the cell then runs before the stride and its H and
      state are 2x2 average-pooled to the block's output resolution) or ``'1x1'`` (ResNet v1:
      the stride sits on the first 1x1, so the cell already runs at the output resolution).
    zero_init_residual: initialise the last BN's scale to zero.
  """

  stride_on: str = "3x3"
  zero_init_residual: bool = False

  @nn.compact
  def __call__(self, carry: tuple[Array, State], cell_params: Any):
    x, state = carry
    n, s = self.features, self.strides
    s1, s3 = (s, 1) if self.stride_on == "1x1" else (1, s)
    y = nn.relu(self.norm(name="bn1")(self.conv(n, (1, 1), (s1, s1), name="conv1")(x)))
    if self.cell is not None:
      h, state = self.regulate(y, state, cell_params)
      if s3 > 1:
        pool = lambda t: nn.avg_pool(t, (s3, s3), (s3, s3))
        h, state = pool(h), tuple(map(pool, state))
    y = nn.relu(self.norm(name="bn2")(self.conv(n, (3, 3), (s3, s3), name="conv2")(y)))
    if self.cell is not None:
      y = jnp.concatenate([y, h.astype(y.dtype)], axis=-1)
      y = nn.relu(self.norm(name="bn_fuse")(self.conv(n, (1, 1), name="conv_fuse")(y)))
    scale_init = nn.initializers.zeros if self.zero_init_residual else nn.initializers.ones
    y = self.norm(name="bn3", scale_init=scale_init)(self.conv(4 * n, (1, 1), name="conv3")(y))
    return (self.residual(x, y), state), None
