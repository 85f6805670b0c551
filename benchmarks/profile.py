"""Where a train step's time goes: its XLA kernels from a profiler trace, summed; prints a table.

    python -m benchmarks.profile --models resnet20 --top 15
    python -m benchmarks.profile --models regnet20_gru --variants conv_grad=reference --by kind
    python -m benchmarks.profile --models resnet20 regnet20_gru --by part

Traces ``--steps`` train steps (after warm-up) of the same synthetic-batch step as
``benchmarks/throughput.py`` with ``jax.profiler``, and sums the durations of the executable's
kernels (one trace event per HLO instruction that runs: fusions, convolutions, copies). Rows are
milliseconds per step, either per kernel (``--by kernel``, with its output shape and the source
operation XLA recorded for it), per kind of kernel (``--by kind``: the name without its number,
e.g. every ``transpose_copy_fusion``) or per part of the network (``--by part``: the
regulator's cell, its BatchNorm and ReLU of H, the fusion of ``[X, H]`` by the 1x1 convolution,
and the rest, i.e. what a ResNet has too; from the source operation of each kernel). On a CPU
the thunk executor runs independent kernels on several threads at once, so the kernels' sum
(the ``(all kernels)`` row) can exceed the step's wall time (``wall_ms_per_step``); shares are
of the sum.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import os
import re
import tempfile
import time

import jax

from benchmarks.throughput import build_train_step, parse_variants, report
from regnet_jax.cpu import process as host


def _instruction_info(hlo_text: str) -> dict[str, str]:
  """``{instruction name: 'shape  op_name'}`` for each instruction of an optimised HLO module."""
  info = {}
  for line in hlo_text.splitlines():
    match = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = (\S+) ", line)
    if match:
      op = re.search(r'op_name="([^"]*)"', line)
      info.setdefault(match.group(1), f"{match.group(2)}  {op.group(1) if op else ''}".strip())
  return info


# The parts of a regulated network (``--by part``): the first with a pattern found in a kernel's
# source operation (the Flax module path XLA records) names it; the rest is the plain ResNet.
PARTS = (
    ("regulator: cell", ("ConvCell/",)),
    ("regulator: BN and ReLU of H", ("regulator/",)),
    ("regulator: fusion (concat [X, H], 1x1 conv, BN, ReLU)",
     ("conv_fuse/", "bn_fuse/", r"/block\w*/concatenate")),  # not a stage's (the scan's)
)
REST = "the rest (what a ResNet has too)"


def part_of(source: str) -> str:
  """The part of the network (:data:`PARTS`, else :data:`REST`) a kernel's source belongs to."""
  op = source.split("  ", 1)[-1]
  return next((name for name, patterns in PARTS if any(re.search(p, op) for p in patterns)), REST)


def kernel_times(trace_dir: str) -> dict[str, list[float]]:
  """Durations (ms) of every kernel event in the newest Perfetto trace under ``trace_dir``, by
  HLO instruction name."""
  path = sorted(glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"),
                          recursive=True))[-1]
  with gzip.open(path) as f:
    events = json.load(f)["traceEvents"]
  times = collections.defaultdict(list)
  for event in events:
    if "dur" in event and "hlo_op" in event.get("args", {}):
      times[event["args"]["hlo_op"]].append(event["dur"] / 1e3)
  return times


def profile_model(name: str, overrides: dict, batch_size: int, steps: int, warmup: int,
                  by: str, top: int) -> list[dict]:
  """The ``top`` kernels (or kinds of kernel) of one model variant's train step by time."""
  _, p_train, _, state, batch = build_train_step(name, overrides, batch_size, "float32", 1)
  compiled = p_train.lower(state, batch).compile()
  info = _instruction_info(compiled.as_text())
  for _ in range(warmup):
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
  with tempfile.TemporaryDirectory() as trace_dir:
    with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
      start = time.perf_counter()
      for _ in range(steps):
        state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
      wall_ms = 1e3 * (time.perf_counter() - start) / steps
    times = kernel_times(trace_dir)
  groups = collections.defaultdict(lambda: [0.0, 0])
  for op, durations in times.items():
    if by == "kind":
      key = re.sub(r"\.\d+$", "", op)
    elif by == "part":
      key = part_of(info.get(op, ""))
    else:
      key = op
    groups[key][0] += sum(durations) / steps
    groups[key][1] += len(durations) / steps
  total = sum(ms for ms, _ in groups.values())
  variant = ",".join(f"{k}={v}" for k, v in overrides.items()) or "default"
  ranked = sorted(groups.items(), key=lambda kv: -kv[1][0])[:top]
  ranked.append(("(all kernels)", (total, sum(c for _, c in groups.values()))))
  return [{"model": name, "variant": variant, by: key, "ms_per_step": ms,
           "share_pct": ms / total * 100, "calls_per_step": count, "wall_ms_per_step": wall_ms,
           **({"shape_and_source": info.get(key, "")} if by == "kernel" else {})}
          for key, (ms, count) in ranked]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--models", nargs="*", default=["resnet20"])
  parser.add_argument("--variants", nargs="*", default=[],
                      help="overrides to profile besides the default, e.g. conv_grad=reference")
  parser.add_argument("--batch_size", type=int, default=128)
  parser.add_argument("--steps", type=int, default=3)
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--by", choices=("kernel", "kind", "part"), default="kind")
  parser.add_argument("--top", type=int, default=12)
  parser.add_argument("--json", default=None, help="also write the rows to this file")
  args = parser.parse_args()
  host.reexec_with_cpu_settings(hugepages=True)
  variants = parse_variants(args.variants)
  rows = [row for name in args.models for overrides in variants
          for row in profile_model(name, overrides, args.batch_size, args.steps, args.warmup,
                                   args.by, args.top)]
  report(rows, args.json, f"batch {args.batch_size}, float32, 1 device, {args.steps} steps")


if __name__ == "__main__":
  main()
