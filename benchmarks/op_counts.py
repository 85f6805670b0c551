"""The train step's operation counts as lowered for this backend and for CUDA; prints a table.

    python -m benchmarks.op_counts --models resnet20 regnet20_gru --batch_size 128

Lowers (no compilation, no GPU needed) the jitted train step of each model, once per
implementation that can run on each platform: the pure-JAX reference everywhere, and the CPU
kernels (``cell_impl='kernel'``, ``conv_grad='swapped'``, what ``main.py`` picks on a CPU) for
the CPU only. Counts the StableHLO operations of the lowered module: in total, and the kinds
that become work on an accelerator (``reduce``, ``convolution``, ``dot_general``, custom
calls). On a GPU every fused group of these is a kernel launch, and small CIFAR steps are
launch-bound, so fewer is faster there. ``vs resnet20`` is each row's total over ResNet-20's
on the same platform.
"""

from __future__ import annotations

import argparse
import collections
import functools
import re
import types

import jax
import jax.numpy as jnp
import optax

from benchmarks.throughput import print_table
from regnet_jax import data, models
from regnet_jax.train import factory, optim, steps

KINDS = ("reduce", "convolution", "dot_general", "custom_call")
# name -> (arguments of factory.implement, platforms it runs on)
IMPLEMENTATIONS = {
    "reference": (dict(cell_impl="reference", conv_grad="reference"), ("cpu", "cuda")),
    "cpu kernels": (dict(cell_impl="kernel", conv_grad="swapped"), ("cpu",)),
}


def count_ops(name: str, platform: str, batch_size: int, **overrides) -> collections.Counter:
  """StableHLO operation counts of the jitted train step of ``name`` lowered for ``platform``
  (``'cpu'`` or ``'cuda'``) at ``batch_size``, uint8 images as the input pipeline gives them."""
  size = models.get_spec(name).image_size
  dataset = "cifar10" if size == 32 else "imagenet2012"
  model = factory.implement(models.create_model(name, data.get_spec(dataset).num_classes),
                            **overrides)
  sgd = types.SimpleNamespace(weight_decay=1e-4, momentum=0.9, nesterov=False)
  schedule = optax.constant_schedule(0.1)
  state = jax.eval_shape(lambda: steps.create_train_state(
      model, optim.create_optimizer(sgd, schedule), 0, size))
  batch = {"image": jax.ShapeDtypeStruct((batch_size, size, size, 3), jnp.uint8),
           "label": jax.ShapeDtypeStruct((batch_size,), jnp.int32)}
  step = jax.jit(functools.partial(steps.train_step, spec=data.get_spec(dataset),
                                   label_smoothing=0.0, schedule=schedule))
  text = step.trace(state, batch).lower(lowering_platforms=(platform,)).as_text()
  return collections.Counter(re.findall(r"= \"?stablehlo\.([a-z_]+)", text))


def table(names: list[str], batch_size: int) -> list[dict]:
  """One row per model, implementation and platform it runs on."""
  rows, totals = [], {}
  for platform in ("cpu", "cuda"):
    for name in names:
      for impl, (overrides, platforms) in IMPLEMENTATIONS.items():
        if platform not in platforms:
          continue
        counts = count_ops(name, platform, batch_size, **overrides)
        total = sum(counts.values())
        totals.setdefault((platform, impl), {})[name] = total
        rows.append({"platform": platform, "model": name, "implementation": impl,
                     "ops": total, **{k: counts[k] for k in KINDS}})
  for row in rows:
    base = totals[(row["platform"], row["implementation"])].get("resnet20")
    row["vs resnet20"] = f"{row['ops'] / base:.2f}x" if base else "-"
  return rows


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--models", nargs="*",
                      default=["resnet20", "regnet20_rnn", "regnet20_gru", "regnet20_lstm"])
  parser.add_argument("--batch_size", type=int, default=128)
  args = parser.parse_args()
  print(f"# train step ops as lowered, batch {args.batch_size}, jax {jax.__version__}")
  print_table(table(args.models, args.batch_size))


if __name__ == "__main__":
  main()
