"""Parameter and multiply-accumulate counts of a model, read off its abstract forward program
(shapes only: nothing is compiled or computed).

Two MAC counts:
- :func:`count_macs`: the conventional count (every kernel tap of every output element, padding
  included), read off the convolutions and matrix products of the traced eval-mode forward
  program of one image, with scanned blocks counted once per step. This is the convention of
  the paper. A light-weight gate's grouped 1x1 (two MACs per output) is written as an
  elementwise mix and counted with its depthwise 3x3, the only depthwise convolution in these
  networks. Count the pure-JAX implementation: the CPU kernels are opaque calls to the tracer.
- :func:`xla_macs`: half of the ``flops`` of XLA's cost analysis of the compiled forward pass.
  XLA skips kernel taps that fall on zero padding and adds elementwise work (BN, gates,
  activations), so it differs from the conventional count by a few percent. It compiles.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp

from regnet_jax.models.networks import Network

if TYPE_CHECKING:
  from jax.extend import core as jex_core


def _example(model: Network, image_size: int) -> tuple[Any, jax.Array]:
  """The model's variables as shapes (``jax.ShapeDtypeStruct``) and one zero image,
  ``[1, image_size, image_size, 3]``."""
  x = jnp.zeros((1, image_size, image_size, 3), jnp.float32)
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, train=False))
  return variables, x


def count_params(model: Network, image_size: int) -> int:
  """Number of trainable parameters (the ``params`` collection)."""
  variables, _ = _example(model, image_size)
  return sum(math.prod(p.shape) for p in jax.tree.leaves(variables["params"]))


def _sub_jaxprs(params: dict[str, Any]) -> Iterator[jex_core.Jaxpr]:
  """The jaxprs in an equation's parameters (a scan's body, a cond's branches, a jit's program),
  closed ones opened. Recognised by their fields (``eqns``; a closed jaxpr's ``jaxpr``) rather
  than through jax's own helper, which is outside its stable API and has moved between modules
  (``jax.core``, ``jax.extend.core``)."""
  for value in params.values():
    for item in value if isinstance(value, (tuple, list)) else (value,):
      if hasattr(item, "eqns"):
        yield item
      elif hasattr(getattr(item, "jaxpr", None), "eqns"):
        yield item.jaxpr


def _jaxpr_macs(jaxpr: jex_core.Jaxpr) -> int:
  """Conventional MACs of the convolutions and dot products in ``jaxpr`` and its sub-jaxprs."""
  total = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "conv_general_dilated":
      out, kernel = eqn.outvars[0].aval, eqn.invars[1].aval
      dn = eqn.params["dimension_numbers"]
      out_features = kernel.shape[dn.rhs_spec[0]]
      total += math.prod(out.shape) * math.prod(kernel.shape) // out_features
      if eqn.params["feature_group_count"] == out_features > 1:  # a light gate's depthwise 3x3
        total += 2 * math.prod(out.shape)  # and its grouped 1x1 (two inputs per output)
    elif name == "dot_general":
      (contract, _), _ = eqn.params["dimension_numbers"]
      lhs = eqn.invars[0].aval
      total += math.prod(eqn.outvars[0].aval.shape) * math.prod(lhs.shape[d] for d in contract)
    for sub in _sub_jaxprs(eqn.params):
      steps = eqn.params["length"] if name == "scan" else 1
      total += steps * _jaxpr_macs(sub)
  return total


def count_macs(model: Network, image_size: int) -> int:
  """Conventional multiply-accumulates of one eval-mode forward pass of one image."""
  variables, x = _example(model, image_size)
  closed = jax.make_jaxpr(lambda v, x: model.apply(v, x, train=False))(variables, x)
  return _jaxpr_macs(closed.jaxpr)


def xla_macs(model: Network, image_size: int) -> float:
  """Half the FLOPs of XLA's cost analysis of the compiled eval forward pass of one image."""
  variables, x = _example(model, image_size)
  fn = jax.jit(lambda v, x: model.apply(v, x, train=False))
  cost = fn.lower(variables, x).compile().cost_analysis()
  if isinstance(cost, list):  # Older jax returned one dict per device.
    cost = cost[0]
  return cost["flops"] / 2
