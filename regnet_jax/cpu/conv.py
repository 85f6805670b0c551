"""A convolution whose kernel gradient suits XLA:CPU: ``flax.linen.Conv`` with another gradient.

XLA computes a convolution's kernel gradient ``dW[i, j] = sum_{b,h,w} x[b, s*h+i, s*w+j] dy[b,h,w]``
as another convolution in which the batch is the contracted dimension. XLA:CPU's convolutions
want that dimension innermost, so the layout pass transposes the activation ``x`` from
``[B, H, W, C]`` to ``[C, H, W, B]``, and the fusion pass then recomputes ``x``'s producers
inside the transpose: BatchNorm, ReLU and the residual additions of up to three earlier blocks,
read in transposed order: a large share of a ResNet-20 train step (docs/performance.md).

:func:`conv_general_dilated` computes the same gradient with the two operands' roles swapped:
the output gradient ``dy`` becomes the transposed operand (it is a plain tensor, nothing to
recompute) and ``x`` only needs a transpose that keeps its channels innermost. A strided
convolution's gradient is split by the stride into stride-1 ones over the phases
``x[:, p::s, q::s]`` of its input (:func:`kernel_gradient`). The forward pass and the input
gradient are ``lax``'s own. Equal to autodiff of ``lax.conv_general_dilated`` up to float
rounding (``tests/cpu/test_conv.py``).

With ``kernel_grad='kernel'`` the gradient is one compiled CPU kernel instead, at any stride
(``conv_kernel.cc``, :mod:`regnet_jax.cpu.kernels`; float32): it reads ``x`` and ``dy`` in
their own layout, with no transpose or phase slices at all. It pays off only on CPUs with
AVX-512 (docs/performance.md).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax import lax

from regnet_jax.cpu import kernels

Array = jax.Array
Padding = tuple[tuple[int, int], ...]
_NHWC = ("NHWC", "HWIO", "NHWC")
KERNEL_GRADS = ("swapped", "kernel")


def _forward(x: Array, kernel: Array, strides: tuple[int, ...], padding: Padding) -> Array:
  return lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=_NHWC)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv(x: Array, kernel: Array, strides: tuple[int, ...], padding: Padding,
          kernel_grad: str) -> Array:
  return _forward(x, kernel, strides, padding)


def _conv_fwd(x, kernel, strides, padding, kernel_grad):
  return _forward(x, kernel, strides, padding), (x, kernel)


def _stride1_kernel_gradient(x: Array, dy: Array, kernel_size: Sequence[int],
                             padding: Sequence[tuple[int, int]]) -> Array:
  """:func:`kernel_gradient` for stride 1, swapped. Per spatial axis ``dW[k-1-o] = sum_t
  dy_pad[o + t] x[t]`` with ``dy`` padded by ``k - 1 - pad_low`` below: a convolution whose
  "input" is ``dy`` (batch = output channels, features = the batch) and whose "kernel" is ``x``
  (input features = the batch, output features = input channels), read backwards."""
  pads = [(k - 1 - low, k - 1 - high) for k, (low, high) in zip(kernel_size, padding, strict=True)]
  out = lax.conv_general_dilated(dy, x, (1, 1), pads, dimension_numbers=("CHWN", "IHWO", "HWNC"))
  return jnp.transpose(out[::-1, ::-1], (0, 1, 3, 2))  # [kh, kw, Co, Ci] reversed -> HWIO


def _compiled_kernel_gradient(x: Array, dy: Array, kernel_size: Sequence[int],
                              padding: Sequence[tuple[int, int]], strides: Sequence[int]
                              ) -> Array:
  """:func:`kernel_gradient` by the compiled CPU kernel (any stride, in one call)."""
  kernels.check_supported(jnp.promote_types(x.dtype, dy.dtype), "conv_grad='kernel'",
                              "conv_grad='swapped'")
  out = jax.ShapeDtypeStruct((*kernel_size, x.shape[-1], dy.shape[-1]), jnp.float32)
  (sh, sw), ((ph, _), (pw, _)) = strides, padding
  return kernels.call("RegnetConvKernelGrad", out, x, dy, sh=np.int64(sh), sw=np.int64(sw),
                          ph=np.int64(ph), pw=np.int64(pw))


def _phases(k: int, low: int, stride: int, size: int, out_size: int):
  """Along one axis, the stride-1 problems of a strided kernel gradient.

  Taps ``a, a + s, a + 2s, ...`` of the kernel only ever meet input positions ``s*t + a - low``,
  i.e. the phase ``x[p::s]`` with ``p = (a - low) mod s``, shifted by a whole number of steps:
  a stride-1 kernel gradient with ``len(range(a, k, s))`` taps and its own padding. Yields
  ``(a, p, taps, (pad_low, pad_high))`` for each ``a < min(s, k)``. (Keeping each phase at
  ``dy``'s size and expressing the offset as padding matters: the same gradient over a phase
  cropped to ``out_size + taps - 1`` rows was 10x slower on XLA:CPU.)
  """
  for a in range(min(stride, k)):
    taps, p = len(range(a, k, stride)), (a - low) % stride
    pad_low = (low - a + p) // stride
    yield a, p, taps, (pad_low, out_size + taps - 1 - len(range(p, size, stride)) - pad_low)


def kernel_gradient(x: Array, dy: Array, kernel_size: Sequence[int],
                    padding: Sequence[tuple[int, int]],
                    strides: Sequence[int] = (1, 1), impl: str = "swapped") -> Array:
  """``dW`` of an NHWC/HWIO convolution: computed with ``dy`` as the convolution's input, or by
  the compiled CPU kernel.

  Args:
    x: ``[B, H, W, Ci]``, the convolution's input.
    dy: ``[B, Ho, Wo, Co]``, the gradient of its output.
    kernel_size: ``(kh, kw)``.
    padding: the convolution's ``((low, high), (low, high))``.
    strides: the convolution's ``(sh, sw)``; ``'swapped'`` assembles strided gradients from the
      stride-1 gradients of the input's ``sh * sw`` phases (:func:`_phases`).
    impl: ``'swapped'`` (XLA) or ``'kernel'`` (compiled, CPU and float32 only).
  Returns:
    ``[kh, kw, Ci, Co]``.
  """
  if impl == "kernel":
    return _compiled_kernel_gradient(x, dy, kernel_size, padding, strides)
  if tuple(strides) == (1, 1):
    return _stride1_kernel_gradient(x, dy, kernel_size, padding)
  (sh, sw), (kh, kw) = strides, kernel_size
  dw = jnp.zeros((kh, kw, x.shape[-1], dy.shape[-1]), dy.dtype)
  for a, p, taps_h, pad_h in _phases(kh, padding[0][0], sh, x.shape[1], dy.shape[1]):
    for b, q, taps_w, pad_w in _phases(kw, padding[1][0], sw, x.shape[2], dy.shape[2]):
      phase = _stride1_kernel_gradient(x[:, p::sh, q::sw], dy, (taps_h, taps_w), (pad_h, pad_w))
      dw = dw.at[a::sh, b::sw].set(phase)
  return dw


def _conv_bwd(strides, padding, kernel_grad, residuals, dy):
  x, kernel = residuals
  _, input_vjp = jax.vjp(lambda t: _forward(t, kernel, strides, padding), x)
  dx, = input_vjp(dy)
  dw = kernel_gradient(x, dy, kernel.shape[:2], padding, strides, kernel_grad)
  return dx, dw.astype(kernel.dtype)


_conv.defvjp(_conv_fwd, _conv_bwd)


def conv_general_dilated(lhs: Array, rhs: Array, window_strides: Sequence[int],
                         padding: str | Sequence[tuple[int, int]],
                         lhs_dilation: Sequence[int] | None = None,
                         rhs_dilation: Sequence[int] | None = None,
                         dimension_numbers: lax.ConvGeneralDilatedDimensionNumbers = None,
                         feature_group_count: int = 1, batch_group_count: int = 1,
                         precision: lax.PrecisionLike = None,
                         preferred_element_type: jnp.dtype | None = None,
                         kernel_grad: str = "swapped") -> Array:
  """Drop-in for ``lax.conv_general_dilated`` (``flax.linen.Conv(conv_general_dilated=...)``).

  Plain 2-D NHWC/HWIO convolutions (any stride, explicit padding, no dilation, no groups) get
  the kernel gradient of :func:`kernel_gradient` (``kernel_grad``: its ``impl``); anything
  else goes to ``lax`` unchanged.
  """
  plain = (not isinstance(padding, str)
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
  return _conv(lhs, rhs, tuple(window_strides), tuple(tuple(p) for p in padding), kernel_grad)


def flax_conv(kernel_grad: str) -> Callable[..., nn.Conv]:
  """``flax.linen.Conv`` whose plain convolutions take their kernel gradient from
  :func:`kernel_gradient` with ``impl=kernel_grad`` (``'swapped'`` or ``'kernel'``)."""
  return functools.partial(nn.Conv, conv_general_dilated=functools.partial(
      conv_general_dilated, kernel_grad=kernel_grad))
