"""One regulator cell step, forward + backward, against a ResNet 3x3 convolution of its stage.

    python -m benchmarks.cells --cells gru lstm --stages 1 2 3 --batch_size 128
    python -m benchmarks.cells --cells gru --variants pairing=interleave cell_impl=reference
    python -m benchmarks.cells --cells --conv_grads reference swapped kernel  # the conv alone

Each row times ``jax.grad`` of one regulator cell step (gradients with
respect to the input, the state and every parameter) at the shape of a CIFAR RegNet-20 stage
(stage s: ``[B, 32/2^(s-1), 32/2^(s-1), 16*2^(s-1)]``), and the same for one dense N -> N 3x3
convolution (what a ResNet basic block runs twice per block), once per kernel gradient in
``--conv_grads`` (default: the models' ``auto``). The ``ratio`` column is each row's time over
the stage's first convolution row, measured alternately in one run: a RegNet-20 block adds one cell
step to a ResNet block's two convolutions, so a ratio of 0.5 would add 25% per block.
Median of timed calls after warm-up, each waited on with ``block_until_ready``.

``mb_accessed`` is XLA's cost analysis of the compiled function (bytes read and written by all
its kernels; None for ``cell_impl='kernel'``, whose C++ kernel XLA cannot see into) and ``gb_s``
that traffic over the measured time. Where ``gb_s`` stays the same
across shapes and variants, time follows bytes: the step is bound by memory bandwidth and gets
faster only by moving fewer bytes.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from benchmarks.throughput import parse_variants, report
from regnet_jax import cpu
from regnet_jax.cpu import process
from regnet_jax.models import cells
from regnet_jax.models.networks import he_conv


def stage_shape(stage: int, batch_size: int) -> tuple[int, int, int, int]:
  """``[B, H, W, N]`` of stage ``stage`` (1-based) of a CIFAR ResNet/RegNet-20."""
  size, width = 32 >> (stage - 1), 16 << (stage - 1)
  return batch_size, size, size, width


def _grad_fn(module: nn.Module, inputs: tuple, seed: int = 0):
  """A function of no arguments computing every gradient of ``<module(*inputs), cotangent>``,
  and the bytes its compiled executable accesses (XLA's cost analysis; None where it calls a
  custom kernel, e.g. ``cell_impl='kernel'``, whose traffic XLA cannot see)."""
  variables = module.init(jax.random.PRNGKey(seed), *inputs)
  out = jax.eval_shape(module.apply, variables, *inputs)
  leaves = jax.tree.leaves(out)
  keys = jax.random.split(jax.random.PRNGKey(seed + 1), len(leaves))
  cotangents = [jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves, strict=True)]

  def loss(variables, inputs, cotangents):
    outs = jax.tree.leaves(module.apply(variables, *inputs))
    return sum(jnp.vdot(o, c) for o, c in zip(outs, cotangents, strict=True))

  # Cotangents are arguments, not constants: XLA would constant-fold through them.
  grad = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(variables, inputs, cotangents).compile()
  cost = grad.cost_analysis()
  cost = cost[0] if isinstance(cost, list) else cost
  nbytes = None if "custom_call" in grad.as_text() else cost["bytes accessed"]
  return lambda: grad(variables, inputs, cotangents), nbytes


class DenseConv(nn.Module):
  """The ResNet reference: one N -> N 3x3 convolution as the models build it (no bias), with
  the kernel gradient ``grad`` (a model's ``conv_grad``)."""

  features: int
  grad: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = cpu.implementations("reference", self.grad).get("conv", nn.Conv)
    return he_conv(conv, self.features, (3, 3))(x)


def make_cell(features: int, cell: str, cell_impl: str = "auto", **gate_args) -> nn.Module:
  """One cell as a model with this implementation builds it; ``gate_args``: the light-weight
  gates' options (e.g. ``pairing``)."""
  cell_cls = cpu.implementations(cell_impl, "reference").get("cell_cls", cells.ConvCell)
  return cell_cls(features, cell,
                  gate_conv=functools.partial(cells.LightGateConv, **gate_args))


def _inputs(cell: str, shape: tuple[int, ...]) -> tuple:
  rng = np.random.RandomState(0)
  x = jnp.asarray(rng.randn(*shape).astype(np.float32))
  state = tuple(jnp.asarray(rng.randn(*shape).astype(np.float32))
                for _ in cells.initial_state(cell, x))
  return x, state


def benchmark_cells(cell_types: list[str], stages: list[int], variants: list[dict],
                    batch_size: int, steps: int, warmup: int,
                    conv_grads: tuple[str, ...] = ("auto",)) -> list[dict]:
  """Forward+backward milliseconds of each cell variant and of the stage's dense 3x3 conv
  with each kernel gradient in ``conv_grads``.

  All functions are compiled first; then ``steps`` rounds each call every function once in
  turn (after ``warmup`` such rounds), so every row sees the same machine conditions.
  """
  jobs, rows = [], []  # (function, bytes accessed) and the row of each
  for stage in stages:
    shape = stage_shape(stage, batch_size)
    x, _ = _inputs("rnn", shape)
    for grad in conv_grads:
      jobs.append(_grad_fn(DenseConv(shape[-1], grad), (x,)))
      rows.append({"stage": stage, "shape": "x".join(map(str, shape)), "op": "dense3x3 conv",
                   "variant": f"conv_grad={grad}"})
    for cell in cell_types:
      for overrides in variants:
        x, state = _inputs(cell, shape)
        jobs.append(_grad_fn(make_cell(shape[-1], cell, **overrides), (x, state)))
        rows.append({"stage": stage, "shape": rows[-1]["shape"], "op": f"{cell} cell",
                     "variant": ",".join(f"{k}={v}" for k, v in overrides.items()) or "default"})
  fns, traffic = zip(*jobs, strict=True)
  times = [[] for _ in fns]
  for r in range(warmup + steps):
    for fn, t in zip(fns, times, strict=True):
      start = time.perf_counter()
      jax.block_until_ready(fn())
      if r >= warmup:
        t.append(time.perf_counter() - start)
  reference = {}
  for row, t, nbytes in zip(rows, times, traffic, strict=True):
    row["fwd_bwd_ms"] = 1e3 * statistics.median(t)
    row["mb_accessed"] = None if nbytes is None else nbytes / 1e6
    row["gb_s"] = None if nbytes is None else nbytes / 1e9 / statistics.median(t)
    reference.setdefault(row["stage"], row["fwd_bwd_ms"])
    row["ratio"] = row["fwd_bwd_ms"] / reference[row["stage"]]
  return rows


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--cells", nargs="*", default=list(cells.CELL_TYPES),
                      choices=cells.CELL_TYPES)
  parser.add_argument("--stages", nargs="*", type=int, default=[1, 2, 3])
  parser.add_argument("--variants", nargs="*", default=[],
                      help="overrides to compare with the default, e.g. cell_impl=reference "
                      "or pairing=interleave")
  parser.add_argument("--conv_grads", nargs="+", default=["auto"], choices=cpu.CONV_GRADS,
                      help="kernel gradients of the reference convolution, each its own row")
  parser.add_argument("--batch_size", type=int, default=128)
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--json", default=None, help="also write the rows to this file")
  parser.add_argument("--no_hugepages", action="store_true",
                      help="leave glibc's malloc as it is (see regnet_jax/cpu/process.py)")
  args = parser.parse_args()
  process.reexec_with_cpu_settings(hugepages=not args.no_hugepages)
  variants = parse_variants(args.variants)
  rows = benchmark_cells(args.cells, args.stages, variants, args.batch_size, args.steps,
                         args.warmup, tuple(args.conv_grads))
  report(rows, args.json, f"batch {args.batch_size}, float32")


if __name__ == "__main__":
  main()
