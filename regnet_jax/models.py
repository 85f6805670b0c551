"""Stages scanned with ``nn.scan``, the CIFAR and ImageNet networks, and the model registry.

A stage is its first (strided, possibly projecting) block followed by ``nn.scan`` over its
remaining, homogeneous blocks. The regulator's recurrent state is the scan carry, so the
ConvRNN runs one time step per block and starts from zeros at each stage (Sec. 2 of the
reconstruction notes). With ``cell_sharing='stage'`` (default) the stage owns one cell whose
parameters are broadcast to every step (an RNN); with ``'block'`` the stage owns one cell per
block, stacked along a leading axis and scanned over.

Usage::

    model = create_model("regnet20_gru", num_classes=10)
    variables = model.init(rng, jnp.zeros((1, 32, 32, 3)), train=False)
    logits = model.apply(variables, images, train=False)            # [B, num_classes]
    logits, updates = model.apply(variables, images, train=True, mutable=["batch_stats"])
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from regnet_jax import conv as conv_lib
from regnet_jax import cpu_kernels
from regnet_jax.blocks import BasicBlock, BottleneckBlock
from regnet_jax.cells import (
    CELL_CONVS,
    CELL_TYPES,
    CONV_IMPLS,
    PAIRINGS,
    ConvCell,
    check_choice,
)

Array = jax.Array
ModuleDef = Callable[..., nn.Module]

_he_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


CONV_GRADS = ("auto", "lax", *conv_lib.KERNEL_GRADS)


def default_conv_grad(dtype: Any = jnp.float32) -> str:
  """What ``conv_grad='auto'`` means here for a compute ``dtype``: where JAX's default backend
  is the CPU, ``'kernel'`` (float32, where the CPU kernels build) or ``'swapped'``
  (docs/performance.md); else ``'lax'``."""
  if cpu_kernels.usable(dtype):
    return "kernel"
  return "swapped" if jax.default_backend() == "cpu" else "lax"


def conv(features: int, kernel_size: tuple[int, int], strides: tuple[int, int] = (1, 1),
         grad: str = "lax", **kwargs: Any) -> nn.Conv:
  """A convolution with PyTorch's symmetric ``k // 2`` padding, no bias and He init.

  ``grad='swapped'`` or ``'kernel'`` computes its kernel gradient as in :mod:`regnet_jax.conv`
  (the same result up to rounding; faster on CPU), ``'lax'`` as autodiff of ``lax`` does."""
  kwargs.setdefault("use_bias", False)
  return nn.Conv(features, kernel_size, strides, padding=[(k // 2, k // 2) for k in kernel_size],
                 kernel_init=_he_init, conv_general_dilated=conv_lib.for_flax(grad), **kwargs)


class Stage(nn.Module):
  """``num_blocks`` blocks of one resolution and width; the first carries the stride.

  Attributes:
    block_cls: :class:`BasicBlock` or :class:`BottleneckBlock`.
    block_args: keyword arguments of every block (features, conv, norm, cell, ...).
    num_blocks: n, the number of blocks and of regulator time steps.
    strides: stride of the first block.
    cell_sharing: ``'stage'`` (one cell for all steps) or ``'block'`` (a cell per block).
    scan_unroll: scan steps per loop iteration; -1 unrolls all of them. Rolled loops of
      convolutions are much slower on XLA:CPU (but compile faster); parameters and results do
      not depend on this.
  """

  block_cls: type[nn.Module]
  block_args: dict
  num_blocks: int
  strides: int = 1
  cell_sharing: str = "stage"
  scan_unroll: int = -1

  def _cell_params(self) -> Any:
    """Creates the stage's cell parameters: one set, or ``num_blocks`` stacked ones."""
    cell = self.block_args["cell"](parent=None)
    x = jnp.zeros((1, 3, 3, cell.features), cell.dtype)
    state = (x, x) if cell.cell == "lstm" else (x,)
    init_one = lambda rng: cell.init(rng, x, state)["params"]
    if self.cell_sharing == "block":
      return self.param("cell", lambda rng: jax.vmap(init_one)(
          jax.random.split(rng, self.num_blocks)))
    return self.param("cell", init_one)

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """``[B, H, W, C] -> [B, H/strides, W/strides, C']``."""
    regulated = self.block_args.get("cell") is not None
    params = self._cell_params() if regulated else None
    per_block = regulated and self.cell_sharing == "block"
    step = lambda i: jax.tree.map(lambda p: p[i], params) if per_block else params
    first = self.block_cls(strides=self.strides, name="block0", **self.block_args)
    carry, _ = first((x, None if regulated else ()), step(0))
    rest = self.num_blocks - 1
    if rest > 0:
      blocks = nn.scan(
          self.block_cls,
          variable_axes={"params": 0, "batch_stats": 0, "intermediates": 0},
          split_rngs={"params": True},
          in_axes=0 if per_block else nn.broadcast,
          length=rest,
          unroll=rest if self.scan_unroll < 1 else self.scan_unroll,
      )(strides=1, name="blocks", **self.block_args)
      carry, _ = blocks(carry, step(slice(1, None)))
    return carry[0]


class _Network(nn.Module):
  """Options shared by every network; see the subclasses for the layouts.

  Attributes:
    num_classes: size of the classifier.
    cell: regulator cell, ``'rnn'``, ``'gru'`` or ``'lstm'``; None for a plain ResNet.
    regulated_stages: 1-based stages that get a regulator (Table V); None for all.
    cell_conv: ``'light'`` (the paper's two-step convolution) or ``'dense3x3'`` (Table I).
    cell_sharing: ``'stage'`` (one cell per stage, an RNN; default) or ``'block'``.
    cell_bias: a bias on every gate (Eq. 1's b_h).
    pairing: channel pairing of the light-weight grouped 1x1, ``'concat'`` or ``'interleave'``.
    cell_impl: ``'auto'`` (default: ``'kernel'`` where it runs and compiles, else
      ``'elementwise'``), ``'elementwise'`` (XLA; fast on CPU), ``'conv'`` (grouped
      ``lax.conv``) or ``'kernel'`` (compiled C++, CPU and float32 only; fastest there:
      docs/performance.md); the same results up to float rounding.
    carry_normed_h: carry ReLU(BN(h)) to the next step (True) or the raw cell output.
    se_ratio: squeeze-and-excitation reduction ratio, None for no SE.
    se_bias: biases in the SE fully connected layers.
    shortcut: ``'B'`` (1x1 projection + BN where shapes change) or ``'A'`` (zero-pad).
    projection_bias: bias on the 1x1 projection.
    scan_unroll: see :class:`Stage`.
    conv_grad: kernel gradient of the dense convolutions: ``'kernel'`` (compiled C++, CPU and
      float32 only) or ``'swapped'`` (XLA; both :mod:`regnet_jax.conv`, and both avoid XLA:CPU's
      activation transposes), ``'lax'`` (autodiff), or ``'auto'`` (default): on the CPU
      ``'kernel'`` where it runs and builds, else ``'swapped'``; ``'lax'`` elsewhere.
    bn_momentum: BatchNorm running-average decay (PyTorch's 0.1 momentum is 0.9 here).
    bn_axis_name: mapped axis to average BatchNorm statistics over, for use under
      ``shard_map``; None under ``jit``, where statistics are over the global batch anyway.
    dtype: compute dtype (e.g. ``jnp.bfloat16``); parameters and BN statistics stay float32.
  """

  num_classes: int = 10
  cell: str | None = None
  regulated_stages: Sequence[int] | None = None
  cell_conv: str = "light"
  cell_sharing: str = "stage"
  cell_bias: bool = True
  pairing: str = "concat"
  cell_impl: str = "auto"
  carry_normed_h: bool = True
  se_ratio: int | None = None
  se_bias: bool = False
  shortcut: str = "B"
  projection_bias: bool = True
  scan_unroll: int = -1
  conv_grad: str = "auto"
  bn_momentum: float = 0.9
  bn_axis_name: str | None = None
  dtype: Any = jnp.float32

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
    check_choice("cell_impl", self.cell_impl, CONV_IMPLS)
    check_choice("shortcut", self.shortcut, ("A", "B"))
    check_choice("conv_grad", self.conv_grad, CONV_GRADS)
    if not isinstance(self.num_classes, int) or self.num_classes < 1:
      raise ValueError(f"num_classes must be a positive integer, got {self.num_classes!r}")
    stages = tuple(range(1, len(self.stage_sizes) + 1))
    for s in self.regulated_stages or ():
      check_choice("regulated_stages entry", s, stages)
    if self.se_ratio is not None and self.se_ratio < 1:
      raise ValueError(f"se_ratio must be a positive integer or None, got {self.se_ratio!r}")
    super().__post_init__()

  def resolved_conv_grad(self) -> str:
    """``conv_grad`` with ``'auto'`` resolved for JAX's default backend and the dtype."""
    return default_conv_grad(self.dtype) if self.conv_grad == "auto" else self.conv_grad

  def conv_def(self) -> ModuleDef:
    """The dense convolution constructor: :func:`conv` with this network's dtype and
    kernel gradient."""
    return functools.partial(conv, dtype=self.dtype, grad=self.resolved_conv_grad())

  def norm(self, train: bool) -> ModuleDef:
    """BatchNorm constructor in train (batch statistics) or eval (running averages) mode."""
    return functools.partial(nn.BatchNorm, use_running_average=not train,
                             momentum=self.bn_momentum, epsilon=1e-5, dtype=self.dtype,
                             axis_name=self.bn_axis_name)

  def stages(self, x: Array, train: bool, **block_args: Any) -> Array:
    """Runs every stage on ``x: [B, H, W, C]``; returns the last stage's output."""
    dtype = self.dtype
    norm = self.norm(train)
    regulated = set(self.regulated_stages or range(1, len(self.stage_sizes) + 1))
    for i, (n, width) in enumerate(zip(self.stage_sizes, self.widths, strict=True)):
      cell = None
      if self.cell is not None and i + 1 in regulated:
        cell = functools.partial(
            ConvCell, features=width, cell=self.cell, dtype=dtype,
            conv=dict(kind=self.cell_conv, pairing=self.pairing, impl=self.cell_impl,
                      use_bias=self.cell_bias, grad=self.resolved_conv_grad()))
      args = dict(features=width, conv=self.conv_def(), norm=norm,
                  cell=cell, carry_normed_h=self.carry_normed_h, se_ratio=self.se_ratio,
                  se_bias=self.se_bias, shortcut=self.shortcut,
                  projection_bias=self.projection_bias, dtype=dtype, **block_args)
      x = Stage(self.block_cls, args, n, strides=1 if i == 0 else 2,
                cell_sharing=self.cell_sharing, scan_unroll=self.scan_unroll,
                name=f"stage{i + 1}")(x)
    return x

  def head(self, x: Array) -> Array:
    """Global average pooling and the classifier: ``[B, H, W, C] -> [B, classes]`` float32."""
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, dtype=self.dtype, name="fc")(x).astype(jnp.float32)


class CifarResNet(_Network):
  """CIFAR (6n+2)-layer ResNet / RegNet (Table II): 3x3 stem of 16, three stages of n basic
  blocks at 32/16/8 px with 16/32/64 channels, GAP, FC. Input ``[B, 32, 32, 3]``.

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


class ImageNetResNet(_Network):
  """ImageNet ResNet / RegNet with bottleneck blocks: 7x7/2 stem of 64, 3x3/2 max-pool, four
  stages at widths N = 64/128/256/512 (outputs 4N), GAP, FC. Input ``[B, 224, 224, 3]``.

  Attributes:
    layers: blocks per stage: (3, 4, 6, 3) for 50 layers, (3, 4, 23, 3) for 101.
    stride_on: see :class:`BottleneckBlock`.
    zero_init_residual: see :class:`BottleneckBlock`.
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


# Presets. CIFAR SE blocks use r = 8 without FC biases (the paper's CIFAR setting); ImageNet SE
# blocks use SENet's r = 16 with biases. The paper does not name RegNet-50's cell; Eq. 3 writes
# a ConvLSTM, so that is the default.
ResNet20 = functools.partial(CifarResNet, depth=20)
ResNet32 = functools.partial(CifarResNet, depth=32)
ResNet56 = functools.partial(CifarResNet, depth=56)
ResNet50 = functools.partial(ImageNetResNet, layers=(3, 4, 6, 3))
ResNet101 = functools.partial(ImageNetResNet, layers=(3, 4, 23, 3))
SEResNet50 = functools.partial(ResNet50, se_ratio=16, se_bias=True)
RegNet50 = functools.partial(ResNet50, cell="lstm")
SERegNet50 = functools.partial(SEResNet50, cell="lstm")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """A registry entry: the constructor and the input resolution it is built for."""

  factory: Callable[..., _Network]
  image_size: int


def _registry() -> dict[str, ModelSpec]:
  models = {}
  for depth in (20, 32, 56):
    base = functools.partial(CifarResNet, depth=depth)
    models[f"resnet{depth}"] = ModelSpec(base, 32)
    models[f"se_resnet{depth}"] = ModelSpec(functools.partial(base, se_ratio=8), 32)
    for cell in CELL_TYPES:
      models[f"regnet{depth}_{cell}"] = ModelSpec(functools.partial(base, cell=cell), 32)
      models[f"se_regnet{depth}_{cell}"] = ModelSpec(
          functools.partial(base, cell=cell, se_ratio=8), 32)
  imagenet = dict(resnet50=ResNet50, resnet101=ResNet101, se_resnet50=SEResNet50,
                  regnet50=RegNet50, se_regnet50=SERegNet50)
  models.update({name: ModelSpec(f, 224) for name, f in imagenet.items()})
  return models


MODELS: dict[str, ModelSpec] = _registry()


def list_models() -> list[str]:
  """Names accepted by :func:`create_model`."""
  return list(MODELS)


def get_spec(name: str) -> ModelSpec:
  """The registry entry of ``name``; ValueError naming the valid models if unknown."""
  if name not in MODELS:
    raise ValueError(f"unknown model {name!r}; valid models: {', '.join(MODELS)}")
  return MODELS[name]


def create_model(name: str, num_classes: int, **overrides: Any) -> _Network:
  """Builds a registered model.

  Args:
    name: a name from :func:`list_models`, e.g. ``'resnet20'``, ``'regnet20_gru'``,
      ``'se_regnet20_lstm'``, ``'resnet50'``, ``'regnet50'``.
    num_classes: classifier size.
    **overrides: any model attribute, e.g. ``cell_sharing='block'``, ``dtype=jnp.bfloat16``.
  Raises:
    ValueError: unknown name, unknown attribute, or an invalid value (naming the valid ones).
  """
  factory = get_spec(name).factory
  cls = factory.func
  fields = {f.name for f in dataclasses.fields(cls)} - {"parent", "name", "block_cls", "widths"}
  unknown = sorted(set(overrides) - fields)
  if unknown:
    raise ValueError(f"unknown attribute(s) {', '.join(unknown)} for model {name!r}; "
                     f"valid attributes: {', '.join(sorted(fields))}")
  return factory(num_classes=num_classes, **overrides)
