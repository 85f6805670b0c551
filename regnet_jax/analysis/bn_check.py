"""Running BatchNorm averages against precise statistics, layer by layer, for any checkpoint.

    python -m regnet_jax.analysis.bn_check --workdir DIR [--step S] [--batches 20]

Diagnoses an evaluation that is far worse than training (docs/results.md): for every BN layer
it prints how far the running mean is from the mean recomputed for the current weights (in
units of the running standard deviation that evaluation divides by), the ratio of the two
standard deviations, and the number of near-constant channels (running variance below
``--constant_var``). It then evaluates the test split three times: with the running averages,
with precise statistics everywhere, and with the running averages except the near-constant
channels, which take precise statistics.
"""

from __future__ import annotations

import argparse
from typing import Any

import numpy as np

from regnet_jax import console

# JAX, flax and the data pipeline are imported where they are used: --help needs none of them.


def compare_stats(running: Any, precise: Any, constant_var: float, eps: float = 1e-5
                  ) -> list[dict[str, Any]]:
  """One row per BN layer (``path`` with '/'): ``max_shift``/``median_shift`` of
  ``|mean_running - mean_precise| / sqrt(var_running + eps)`` over its channels,
  ``max_std_ratio`` of ``sqrt((var_precise + eps) / (var_running + eps))``, and
  ``constant``, its channels with running variance below ``constant_var``."""
  import jax
  from flax import traverse_util

  run = traverse_util.flatten_dict(jax.device_get(running), sep="/")
  pre = traverse_util.flatten_dict(jax.device_get(precise), sep="/")
  rows = []
  for key in sorted(k for k in run if k.endswith("/mean")):
    layer = key.removesuffix("/mean")
    mean_r, var_r = np.asarray(run[key]), np.asarray(run[layer + "/var"])
    mean_p, var_p = np.asarray(pre[key]), np.asarray(pre[layer + "/var"])
    shift = np.abs(mean_r - mean_p) / np.sqrt(var_r + eps)
    rows.append({"layer": layer, "max_shift": float(shift.max()),
                 "median_shift": float(np.median(shift)),
                 "max_std_ratio": float(np.sqrt((var_p + eps) / (var_r + eps)).max()),
                 "constant": int((var_r < constant_var).sum()), "channels": int(mean_r.size)})
  return rows


def replace_constant_channels(running: Any, precise: Any, constant_var: float) -> Any:
  """The running statistics, except that channels whose running variance is below
  ``constant_var`` take the precise mean and variance."""
  import jax
  from flax import traverse_util

  run = traverse_util.flatten_dict(jax.device_get(running), sep="/")
  pre = traverse_util.flatten_dict(jax.device_get(precise), sep="/")
  mixed = {}
  for key, value in run.items():
    constant = np.asarray(run[key.rsplit("/", 1)[0] + "/var"]) < constant_var
    mixed[key] = np.where(constant, pre[key], value)
  return traverse_util.unflatten_dict(mixed, sep="/")


def check_workdir(workdir: str, step: int | None = None, batches: int = 20,
                  constant_var: float = 1e-8) -> dict[str, Any]:
  """The per-layer comparison and the three test errors for a checkpoint of ``workdir``."""
  from regnet_jax import data
  from regnet_jax.train import evaluate
  from regnet_jax.train.mesh import DataParallel

  dp = DataParallel()
  run = evaluate.restore(workdir, step, dp)
  source = evaluate.eval_source(run.config, dp)
  running = run.variables["batch_stats"]
  precise = evaluate.with_precise_bn(run, dp, source, batches)["batch_stats"]
  p_eval = evaluate.compile_eval_step(dp, run.model, data.get_spec(run.config))
  errors = {}
  for name, stats in [
      ("running", running), ("precise", precise),
      ("running, constant channels precise",
       replace_constant_channels(running, precise, constant_var))]:
    variables = {**run.variables, "batch_stats": dp.replicate(stats)}
    result = evaluate.evaluate(p_eval, variables, dp, source.eval_batches())
    errors[name] = 100 * result["eval_top1_error"]
  return {"workdir": workdir, "step": run.step, "batches": batches,
          "layers": compare_stats(running, precise, constant_var), "test_error": errors}


def main(argv: list[str] | None = None) -> None:
  console.quiet()
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--step", type=int, default=None, help="default: the newest checkpoint")
  parser.add_argument("--batches", type=int, default=20,
                      help="training batches the precise statistics average over")
  parser.add_argument("--constant_var", type=float, default=1e-8,
                      help="running variance below which a channel counts as constant")
  parser.add_argument("--all", action="store_true", help="list every layer, not only those "
                      "with constant channels or a shift above 0.1")
  args = parser.parse_args(argv)
  report = check_workdir(args.workdir, args.step, args.batches, args.constant_var)
  print(f"{report['workdir']} step {report['step']}, precise statistics over "
        f"{report['batches']} training batches")
  print("| BN layer | max mean shift / std | median | max std ratio | constant channels |")
  print("|---|---|---|---|---|")
  for r in report["layers"]:
    if args.all or r["constant"] or r["max_shift"] > 0.1:
      print(f"| {r['layer']} | {r['max_shift']:.3g} | {r['median_shift']:.3g} | "
            f"{r['max_std_ratio']:.3g} | {r['constant']}/{r['channels']} |")
  for name, error in report["test_error"].items():
    print(f"test error with {name} statistics: {error:.2f}%")


if __name__ == "__main__":
  main()
