"""Parameter and multiply-accumulate counts of every registered model.

``python -m regnet_jax.summary`` prints one table: our parameters and MACs beside the paper's
reported parameters and FLOPs, where the paper gives them.

Two MAC counts are shown:
- ``MACs``: the conventional count (every kernel tap of every output element, padding
  included), read off the convolutions and matrix products of the traced forward program of
  the reference implementation, with scanned blocks counted once per step. This is the
  convention of the paper. A light-weight gate's grouped 1x1 (two MACs per output) is written
  as an elementwise mix and counted with its depthwise 3x3, the only depthwise convolution in
  these networks.
- ``XLA MACs`` (``--xla``): half of the ``flops`` of XLA's cost analysis of the compiled
  forward pass of the reference implementation. XLA skips kernel taps that fall on zero
  padding and adds elementwise work (BN, gates, activations), so it differs from the
  conventional count by a few percent. Compiling every model takes minutes.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp

from regnet_jax import models

if TYPE_CHECKING:
  from jax.extend import core as jex_core

# The paper's own numbers (Tables I, IV, V, VI, VII; CIFAR-10 models). "params" in millions.
# "+" entries are increments over the same-depth ResNet. FLOPs as printed in the paper.
PAPER = {
    "resnet20": {"params": "0.273M"},
    "regnet20_gru": {"params": "+0.04M", "flops": "+15M"},
    "regnet20_lstm": {"params": "+0.04M"},
    "regnet32_gru": {"params": "+0.06M"},
    "regnet32_lstm": {"params": "+0.07M"},
    "regnet56_gru": {"params": "+0.11M"},
    "regnet56_lstm": {"params": "+0.12M"},
    "resnet50": {"params": "26.6M", "flops": "4.14G"},
    "resnet101": {"params": "44.5M", "flops": "7.51G"},
    "se_resnet50": {"params": "26.7M", "flops": "4.14G"},
    "regnet50": {"params": "31.3M", "flops": "5.12G"},
}


def _example(model: models.Network, image_size: int, batch: int = 1) -> tuple[Any, jax.Array]:
  x = jnp.zeros((batch, image_size, image_size, 3), jnp.float32)
  variables = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, train=False))
  return variables, x


def count_params(model: models.Network, image_size: int) -> int:
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


def count_macs(model: models.Network, image_size: int) -> int:
  """Conventional multiply-accumulates of one eval-mode forward pass of one image."""
  variables, x = _example(model, image_size)
  closed = jax.make_jaxpr(lambda v, x: model.apply(v, x, train=False))(variables, x)
  return _jaxpr_macs(closed.jaxpr)


def xla_macs(model: models.Network, image_size: int) -> float:
  """Half the FLOPs of XLA's cost analysis of the compiled eval forward pass of one image."""
  variables, x = _example(model, image_size)
  fn = jax.jit(lambda v, x: model.apply(v, x, train=False))
  cost = fn.lower(variables, x).compile().cost_analysis()
  if isinstance(cost, list):  # Older jax returned one dict per device.
    cost = cost[0]
  return cost["flops"] / 2


def _fmt(n: float) -> str:
  return f"{n / 1e9:.3f}G" if n >= 1e9 else f"{n / 1e6:.3f}M"


def table(names: list[str], num_classes: int | None = None, xla: bool = False) -> str:
  """The summary table as text; CIFAR models get 10 classes, ImageNet ones 1000. ``xla``: also
  XLA's count (compiles every model)."""
  header = ["model", "input", "params", "MACs", *(["XLA MACs"] if xla else []),
            "paper params", "paper \"FLOPs\" (ImageNet: MACs; CIFAR: 2 x MACs)"]
  rows = []
  for name in names:
    size = models.get_spec(name).image_size
    classes = num_classes or (10 if size == 32 else 1000)
    model = models.create_model(name, classes)
    paper = PAPER.get(name, {})
    rows.append([name, f"{size}x{size}", f"{count_params(model, size):,}",
                 _fmt(count_macs(model, size)), *([_fmt(xla_macs(model, size))] if xla else []),
                 paper.get("params", ""), paper.get("flops", "")])
  widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
  line = lambda r: "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) + " |"
  sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
  return "\n".join([line(header), sep, *map(line, rows)])


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--models", nargs="*", default=None, help="default: every model")
  parser.add_argument("--num_classes", type=int, default=None,
                      help="default: 10 for CIFAR models, 1000 for ImageNet models")
  parser.add_argument("--xla", action="store_true",
                      help="also XLA's count of each compiled forward pass (minutes)")
  args = parser.parse_args(argv)
  try:
    names = args.models or models.list_models()
    for name in names:
      models.get_spec(name)
  except ValueError as e:
    parser.error(str(e))
  print(table(names, args.num_classes, xla=args.xla))


if __name__ == "__main__":
  main()
