"""The one place a run's model is built from its config, once per run.

The model's own attributes come from ``config.model_args`` (:func:`regnet_jax.models.
create_model`); the compute dtype from ``config.half_precision``; and the implementation of
the same computation (``config.implementation``: the CPU's C++ cell kernels and convolution
gradients, :func:`regnet_jax.cpu.implementations`) is resolved here, before anything is traced,
and nowhere else.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp

from regnet_jax import cpu, models

if TYPE_CHECKING:
  import ml_collections


def compute_dtype(half_precision: bool | None) -> Any:
  """bfloat16 if ``half_precision``; for None, bfloat16 on GPUs and TPUs and float32 on CPUs
  (where bfloat16 is slow)."""
  if half_precision is None:
    half_precision = jax.default_backend() in ("gpu", "tpu")
  return jnp.bfloat16 if half_precision else jnp.float32


def model_args(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """``config.model_args`` as :func:`regnet_jax.models.create_model`'s keyword arguments
  (lists, as JSON gives them back, as tuples)."""
  args = config.model_args.to_dict() if "model_args" in config else {}
  return {k: tuple(v) if isinstance(v, list) else v for k, v in args.items()}


def build_model(config: ml_collections.ConfigDict, num_classes: int,
                reference: bool = False) -> models.Network:
  """The config's model with ``num_classes`` outputs, in its compute dtype, with the
  implementation ``config.implementation`` chooses for this backend; ``reference``: the
  pure-JAX implementation whatever the config says (what parameter and MAC counts read).

  Raises:
    ValueError: an unknown model, model attribute or implementation, naming the valid ones.
  """
  dtype = compute_dtype(config.get("half_precision"))
  model = models.create_model(config.model, num_classes, dtype=dtype, **model_args(config))
  return model if reference else implement(model, **config.get("implementation", {}))


def implement(model: models.Network, cell_impl: str = "auto", conv_grad: str = "auto"
              ) -> models.Network:
  """``model`` computed by the implementation these choices resolve to on this backend
  (:func:`regnet_jax.cpu.implementations`): the same parameters and results."""
  return model.clone(**cpu.implementations(cell_impl, conv_grad, model.dtype, model.cell_conv))
