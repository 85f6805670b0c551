"""The CIFAR and ImageNet networks: a stem, the stages of regulated (or plain) blocks, a head.

Usage (the registry, :mod:`regnet_jax.models.registry`, builds them by name)::

    model = create_model("regnet20_gru", num_classes=10)
    variables = model.init(rng, jnp.zeros((1, 32, 32, 3)), train=False)
    logits = model.apply(variables, images, train=False)            # [B, num_classes]
    logits, updates = model.apply(variables, images, train=True, mutable=["batch_stats"])

Two module slots take other implementations of the same computation and parameters, chosen
once by the caller: ``conv`` (every dense convolution) and ``cell_cls`` (the regulator's
cell). The defaults are the pure-JAX reference, on every backend.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from regnet_jax.checks import check_choice
from regnet_jax.models.blocks import BasicBlock, BottleneckBlock
from regnet_jax.models.cells import (
    CELL_CONVS,
    CELL_TYPES,
    PAIRINGS,
    ConvCell,
    DenseGateConv,
    LightGateConv,
)
from regnet_jax.models.stage import Stage

Array = jax.Array
ModuleDef = Callable[..., nn.Module]

_he_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# The classifier's name in ``params``: the one layer whose shape depends on ``num_classes``.
CLASSIFIER = "fc"


def he_conv(conv: ModuleDef, features: int, kernel_size: tuple[int, int],
            strides: tuple[int, int] = (1, 1), **kwargs: Any) -> nn.Module:
  """``conv`` with PyTorch's symmetric ``k // 2`` padding, He (fan-out) init and no bias."""
  kwargs.setdefault("use_bias", False)
  return conv(features, kernel_size, strides, padding=[(k // 2, k // 2) for k in kernel_size],
              kernel_init=_he_init, **kwargs)


class Network(nn.Module):
  """Options shared by every network; see the subclasses for the layouts.

  Attributes:
    num_classes: size of the classifier.
    cell: regulator cell, ``'rnn'``, ``'gru'`` or ``'lstm'``; None for a plain ResNet.
    regulated_stages: 1-based stages that get a regulator (Table V); None for all.
    cell_conv: the cell's gate convolutions, ``'light'`` (grouped 1x1, then depthwise 3x3) or
      ``'dense3x3'`` (Table I).
    cell_sharing: ``'stage'`` (one cell per stage, an RNN; default) or ``'block'``.
    cell_bias: a bias on every gate.
    pairing: channel pairing of the light-weight grouped 1x1: ``'interleave'`` (x_k with h_k;
      default) or ``'concat'`` (the literal grouped 1x1 over ``concat([x, h])``);
      :func:`~regnet_jax.models.cells.channel_pairs`, docs/model.md.
    carry_normed_h: carry ReLU(BN(h)) to the next step (True) or the raw cell output.
    se_ratio: squeeze-and-excitation reduction ratio, None for no SE.
    se_bias: biases in the SE fully connected layers.
    shortcut: ``'B'`` (1x1 projection + BN where shapes change) or ``'A'`` (zero-pad).
    projection_bias: bias on the 1x1 projection.
    scan_unroll: see :class:`~regnet_jax.models.stage.Stage`.
    bn_momentum: BatchNorm running-average decay (PyTorch's 0.1 momentum is 0.9 here).
    dtype: compute dtype (e.g. ``jnp.bfloat16``); parameters and BN statistics stay float32.
    conv: the convolution module of every dense convolution: ``flax.linen.Conv`` or a drop-in
      with the same parameters.
    cell_cls: the regulator's cell module: :class:`~regnet_jax.models.cells.ConvCell` or a
      drop-in with the same fields and parameters.
  """

  num_classes: int = 10
  cell: str | None = None
  regulated_stages: Sequence[int] | None = None
  cell_conv: str = "light"
  cell_sharing: str = "stage"
  cell_bias: bool = True
  pairing: str = "interleave"
  carry_normed_h: bool = True
  se_ratio: int | None = None
  se_bias: bool = False
  shortcut: str = "B"
  projection_bias: bool = True
  scan_unroll: int = -1
  bn_momentum: float = 0.9
  dtype: Any = jnp.float32
  conv: ModuleDef = nn.Conv
  cell_cls: ModuleDef = ConvCell

  # Set by subclasses.
  block_cls: type[nn.Module] = BasicBlock
  widths: Sequence[int] = (16, 32, 64)

  @property
  def stage_sizes(self) -> Sequence[int]:
    raise NotImplementedError

  def __post_init__(self) -> None:
    if self.cell is not None:
      check_choice("cell", self.cell, CELL_TYPES)
    check_choice("cell_conv", self.cell_conv, CELL_CONVS)
    check_choice("cell_sharing", self.cell_sharing, ("stage", "block"))
    check_choice("pairing", self.pairing, PAIRINGS)
    check_choice("shortcut", self.shortcut, ("A", "B"))
    if not isinstance(self.num_classes, int) or self.num_classes < 1:
      raise ValueError(f"num_classes must be a positive integer, got {self.num_classes!r}")
    stages = tuple(range(1, len(self.stage_sizes) + 1))
    for s in self.regulated_stages or ():
      check_choice("regulated_stages entry", s, stages)
    if self.se_ratio is not None and self.se_ratio < 1:
      raise ValueError(f"se_ratio must be a positive integer or None, got {self.se_ratio!r}")
    super().__post_init__()

  def conv_def(self) -> ModuleDef:
    """The dense convolution constructor: :func:`he_conv` of ``conv`` in the compute dtype."""
    return functools.partial(he_conv, self.conv, dtype=self.dtype)

  def norm(self, train: bool) -> ModuleDef:
    """BatchNorm constructor in train (batch statistics) or eval (running averages) mode."""
    return functools.partial(nn.BatchNorm, use_running_average=not train,
                             momentum=self.bn_momentum, epsilon=1e-5, dtype=self.dtype)

  def cell_def(self, width: int) -> ModuleDef:
    """The constructor of one stage's cell, ``width`` channels wide."""
    if self.cell_conv == "light":
      gate_conv = functools.partial(LightGateConv, pairing=self.pairing, use_bias=self.cell_bias,
                                    dtype=self.dtype)
    else:
      gate_conv = functools.partial(DenseGateConv, use_bias=self.cell_bias, conv=self.conv,
                                    dtype=self.dtype)
    return functools.partial(self.cell_cls, features=width, cell=self.cell, gate_conv=gate_conv,
                             dtype=self.dtype)

  def stages(self, x: Array, train: bool, **block_args: Any) -> Array:
    """Runs every stage on ``x: [B, H, W, C]``; returns the last stage's output."""
    regulated = set(self.regulated_stages or range(1, len(self.stage_sizes) + 1))
    for i, (n, width) in enumerate(zip(self.stage_sizes, self.widths, strict=True)):
      cell = self.cell_def(width) if self.cell is not None and i + 1 in regulated else None
      args = dict(features=width, conv=self.conv_def(), norm=self.norm(train),
                  cell=cell, carry_normed_h=self.carry_normed_h, se_ratio=self.se_ratio,
                  se_bias=self.se_bias, shortcut=self.shortcut,
                  projection_bias=self.projection_bias, dtype=self.dtype, **block_args)
      x = Stage(self.block_cls, args, n, strides=1 if i == 0 else 2,
                cell_sharing=self.cell_sharing, scan_unroll=self.scan_unroll,
                name=f"stage{i + 1}")(x)
    return x

  def head(self, x: Array) -> Array:
    """Global average pooling and the classifier: ``[B, H, W, C] -> [B, classes]`` float32."""
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, dtype=self.dtype, name=CLASSIFIER)(x).astype(jnp.float32)


class CifarResNet(Network):
  """CIFAR (6n+2)-layer ResNet / RegNet: 3x3 stem of 16, three stages of n basic blocks at
  32/16/8 px with 16/32/64 channels, GAP, FC. Input ``[B, 32, 32, 3]``.

  Attributes:
    depth: 6n + 2 (20, 32, 56, ...).
  """

  depth: int = 20

  @property
  def stage_sizes(self) -> Sequence[int]:
    return ((self.depth - 2) // 6,) * 3

  def __post_init__(self) -> None:
    if not isinstance(self.depth, int) or self.depth < 8 or (self.depth - 2) % 6:
      raise ValueError(f"depth={self.depth!r} is not valid for a CIFAR ResNet; it must be 6n+2 "
                       "with n >= 1 (e.g. 20, 32, 44, 56, 110)")
    super().__post_init__()

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    """``x: [B, H, W, 3]`` float -> logits ``[B, num_classes]``."""
    x = self.conv_def()(16, (3, 3), name="stem_conv")(jnp.asarray(x, self.dtype))
    x = nn.relu(self.norm(train)(name="stem_bn")(x))
    return self.head(self.stages(x, train))


class ImageNetResNet(Network):
  """ImageNet ResNet / RegNet with bottleneck blocks: 7x7/2 stem of 64, 3x3/2 max-pool, four
  stages at widths N = 64/128/256/512 (outputs 4N), GAP, FC. Input ``[B, 224, 224, 3]``.

  Attributes:
    layers: blocks per stage: (3, 4, 6, 3) for 50 layers, (3, 4, 23, 3) for 101.
    stride_on: see :class:`~regnet_jax.models.blocks.BottleneckBlock`.
    zero_init_residual: see :class:`~regnet_jax.models.blocks.BottleneckBlock`.
  """

  num_classes: int = 1000
  projection_bias: bool = False
  block_cls: type[nn.Module] = BottleneckBlock
  widths: Sequence[int] = (64, 128, 256, 512)
  layers: Sequence[int] = (3, 4, 6, 3)
  stride_on: str = "3x3"
  zero_init_residual: bool = False

  @property
  def stage_sizes(self) -> Sequence[int]:
    return tuple(self.layers)

  def __post_init__(self) -> None:
    check_choice("stride_on", self.stride_on, ("3x3", "1x1"))
    if len(self.layers) != 4 or any(not isinstance(n, int) or n < 1 for n in self.layers):
      raise ValueError(f"layers={self.layers!r} must be four positive block counts")
    super().__post_init__()

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> Array:
    """``x: [B, H, W, 3]`` float -> logits ``[B, num_classes]``."""
    x = self.conv_def()(64, (7, 7), (2, 2), name="stem_conv")(jnp.asarray(x, self.dtype))
    x = nn.relu(self.norm(train)(name="stem_bn")(x))
    x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
    x = self.stages(x, train, stride_on=self.stride_on,
                    zero_init_residual=self.zero_init_residual)
    return self.head(x)
