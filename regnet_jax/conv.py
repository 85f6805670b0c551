"""A convolution whose kernel gradient suits XLA:CPU (the models' dense convolutions use it on CPU).

XLA computes a convolution's kernel gradient ``dW[i, j] = sum_{b,h,w} x[b, s*h+i, s*w+j] dy[b,h,w]``
as another convolution in which the batch is the contracted dimension. XLA:CPU's convolutions
want that dimension innermost, so the layout pass transposes the activation ``x`` from
``[B, H, W, C]`` to ``[C, H, W, B]``, and the fusion pass then recomputes ``x``'s producers
inside the transpose: BatchNorm, ReLU and the residual additions of up to three earlier blocks,
read in transposed order. In a ResNet-20 train step on a 2-core CPU these transposes took
about 170 of 380 ms (a profile; docs/performance.md).

:func:`conv_general_dilated` computes the same gradient of a stride-1 convolution (all but a
few in these networks) with the two operands' roles swapped:
the output gradient ``dy`` becomes the transposed operand (it is a plain tensor, nothing to
recompute) and ``x`` only needs a transpose that keeps its channels innermost. The forward pass
and the input gradient are ``lax``'s own. Equal to autodiff of ``lax.conv_general_dilated`` up
to float rounding (``tests/test_conv.py``).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax import lax

Array = jax.Array
_NHWC = ("NHWC", "HWIO", "NHWC")


def _forward(x: Array, kernel: Array, padding: tuple[tuple[int, int], ...]) -> Array:
  return lax.conv_general_dilated(x, kernel, (1, 1), padding, dimension_numbers=_NHWC)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv(x: Array, kernel: Array, padding: tuple[tuple[int, int], ...]) -> Array:
  return _forward(x, kernel, padding)


def _conv_fwd(x, kernel, padding):
  return _forward(x, kernel, padding), (x, kernel)


def kernel_gradient(x: Array, dy: Array, kernel_size: Sequence[int],
                    padding: Sequence[tuple[int, int]]) -> Array:
  """``dW`` of a stride-1 NHWC/HWIO convolution, computed with ``dy`` as the convolution's input.

  Per spatial axis ``dW[k-1-o] = sum_t dy_pad[o + t] x[t]`` with ``dy`` padded by
  ``k - 1 - pad_low`` below: a convolution whose "input" is ``dy`` (batch = output channels,
  features = the batch) and whose "kernel" is ``x`` (input features = the batch, output
  features = input channels), read backwards.

  Args:
    x: ``[B, H, W, Ci]``, the convolution's input.
    dy: ``[B, Ho, Wo, Co]``, the gradient of its output.
    kernel_size: ``(kh, kw)``.
    padding: the convolution's ``((low, high), (low, high))``.
  Returns:
    ``[kh, kw, Ci, Co]``.
  """
  pads = [(k - 1 - low, k - 1 - high) for k, (low, high) in zip(kernel_size, padding, strict=True)]
  out = lax.conv_general_dilated(dy, x, (1, 1), pads, dimension_numbers=("CHWN", "IHWO", "HWNC"))
  return jnp.transpose(out[::-1, ::-1], (0, 1, 3, 2))  # [kh, kw, Co, Ci] reversed -> HWIO


def _conv_bwd(padding, residuals, dy):
  x, kernel = residuals
  _, input_vjp = jax.vjp(lambda t: _forward(t, kernel, padding), x)
  dx, = input_vjp(dy)
  return dx, kernel_gradient(x, dy, kernel.shape[:2], padding).astype(kernel.dtype)


_conv.defvjp(_conv_fwd, _conv_bwd)


def conv_general_dilated(lhs: Array, rhs: Array, window_strides: Sequence[int],
                         padding: str | Sequence[tuple[int, int]],
                         lhs_dilation: Sequence[int] | None = None,
                         rhs_dilation: Sequence[int] | None = None,
                         dimension_numbers: lax.ConvGeneralDilatedDimensionNumbers = None,
                         feature_group_count: int = 1, batch_group_count: int = 1,
                         precision: lax.PrecisionLike = None,
                         preferred_element_type: jnp.dtype | None = None) -> Array:
  """Drop-in for ``lax.conv_general_dilated`` (``flax.linen.Conv(conv_general_dilated=...)``).

  Plain 2-D NHWC/HWIO convolutions (stride 1, explicit padding, no dilation, no groups) get the
  kernel gradient of :func:`kernel_gradient`; anything else goes to ``lax`` unchanged. (Strided
  ones would need ``dy`` dilated or the input rearranged space-to-depth, both slower on XLA:CPU
  than ``lax``'s own gradient, or split into phases, exact but no faster in a train step:
  docs/performance.md.)
  """
  plain = (tuple(window_strides) == (1, 1) and not isinstance(padding, str)
           and all(d == 1 for d in (lhs_dilation or (1, 1)))
           and all(d == 1 for d in (rhs_dilation or (1, 1)))
           and feature_group_count == 1 and batch_group_count == 1
           and precision is None and preferred_element_type is None
           and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
           == lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC))
  if not plain:
    return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation,
                                    rhs_dilation, dimension_numbers, feature_group_count,
                                    batch_group_count, precision, preferred_element_type)
  return _conv(lhs, rhs, tuple(tuple(p) for p in padding))
