"""Faster implementations for XLA:CPU, plugged into the models through their module slots.

The models (:mod:`regnet_jax.models`) are pure JAX and know nothing of this package. On a CPU,
:func:`implementations` picks, once and before anything is traced, the modules that replace
the reference ones with the same parameters and results::

    model = create_model("regnet20_gru", 10, **cpu.implementations())

- ``cell_cls``: :class:`~regnet_jax.cpu.cell.KernelConvCell`, the cells on compiled C++ gate
  kernels (:mod:`~regnet_jax.cpu.gate_kernel`, built on first use by
  :mod:`~regnet_jax.cpu.kernels`).
- ``conv``: ``flax.linen.Conv`` with a kernel gradient that avoids XLA:CPU's activation
  transposes (:mod:`~regnet_jax.cpu.conv`).

:mod:`~regnet_jax.cpu.process` holds the process settings (huge pages, XLA:CPU flags) that
``main.py`` applies before JAX starts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from regnet_jax.checks import check_choice
from regnet_jax.cpu import kernels

CELL_IMPLS = ("auto", "reference", "kernel")
CONV_GRADS = ("auto", "reference", "swapped", "kernel")


def implementations(cell_impl: str = "auto", conv_grad: str = "auto", dtype: Any = jnp.float32,
                    cell_conv: str = "light") -> dict[str, Callable[..., Any]]:
  """The model overrides (``cell_cls``, ``conv``) for these choices; {} for the reference.

  Args:
    cell_impl: ``'reference'`` (pure JAX), ``'kernel'`` (the compiled gate kernels; CPU,
      float32, light-weight gates), or ``'auto'``: the kernels where they apply and build, else
      the reference.
    conv_grad: the dense convolutions' kernel gradient: ``'reference'`` (autodiff),
      ``'swapped'`` (XLA, for XLA:CPU), ``'kernel'`` (compiled; CPU, float32), or ``'auto'``:
      ``'swapped'`` on the CPU, else the reference.
    dtype: the model's compute dtype.
    cell_conv: the model's gate convolutions, ``'light'`` or ``'dense3x3'``.
  Raises:
    ValueError: an unknown choice, or a kernel that cannot run here (naming the fallback).
  """
  from regnet_jax.cpu import conv
  from regnet_jax.cpu.cell import KernelConvCell

  check_choice("cell_impl", cell_impl, CELL_IMPLS)
  check_choice("conv_grad", conv_grad, CONV_GRADS)
  on_cpu = jax.default_backend() == "cpu"
  overrides: dict[str, Callable[..., Any]] = {}
  if cell_impl == "kernel":
    _check_kernels(dtype, "cell_impl='kernel'", "cell_impl='reference'")
    if cell_conv != "light":
      raise ValueError("cell_impl='kernel' computes light-weight gates; for "
                       "cell_conv='dense3x3' use cell_impl='reference'")
  use_cell_kernel = cell_impl == "kernel" or (
      cell_impl == "auto" and on_cpu and cell_conv == "light"
      and jnp.dtype(dtype) == jnp.float32 and kernels.builds())
  if use_cell_kernel:
    overrides["cell_cls"] = KernelConvCell
  if conv_grad == "auto":
    conv_grad = "swapped" if on_cpu else "reference"
  if conv_grad == "kernel":
    _check_kernels(dtype, "conv_grad='kernel'", "conv_grad='swapped'")
  if conv_grad != "reference":
    overrides["conv"] = conv.flax_conv(conv_grad)
  return overrides


def _check_kernels(dtype: Any, option: str, fallback: str) -> None:
  """A ValueError naming ``option`` and its ``fallback`` unless the kernels run here: CPU
  backend, float32, and the library builds (it is built now, before any tracing)."""
  kernels.check_supported(dtype, option, fallback)
  if not kernels.builds():
    raise ValueError(f"{option}: the CPU kernels do not build here (the warning above says "
                     f"why); use {fallback}")
