"""Float32 train steps on the accelerator against the same steps on the host's CPU.

    python -m benchmarks.numerics --models resnet20 regnet20_gru --steps 30 --batch_size 32

Each model trains ``--steps`` steps on the CPU on ``--batches`` fixed synthetic batches (taken in
turn; :func:`benchmarks.throughput.build_train_step`'s SGD), and at every step the default
backend (the GPU) takes the same step from the same state, both in the pure-JAX reference
implementation at full float32 precision (``jax.default_matmul_precision("float32")``: no TF32
on an NVIDIA GPU). Compared per step: the losses, and the parameter updates (the norm of their
difference over the norm of the CPU's update). Two independent trajectories could not be
compared this way: these steps on random data amplify rounding about tenfold per step (two
float32 implementations of the ResNet-20 step on one CPU: losses 1e-7 apart after one step,
1e-2 after ten). One row per model, passing within ``--loss_rtol`` and ``--update_rtol``.
Where the default backend is the CPU, both sides run on it and agree exactly.
"""

from __future__ import annotations

import argparse
import sys

import jax
import numpy as np

from benchmarks.throughput import append_jsonl, build_train_step, parse_variants, print_table

REFERENCE = {"cell_impl": "reference", "conv_grad": "reference"}
# Tolerances, relative, from two float32 implementations of the same steps on one CPU (the
# reference against the CPU kernels and swapped convolution gradients, which sum in other
# orders), 30 steps at batch 32, 2026-12-07: ResNet-20 losses equal and updates within 9e-7;
# RegNet-20 ConvGRU losses within 4e-7 but updates within 4e-3, as its float32 gradients are
# about 2e-3 from float64's on XLA:CPU (median over tensors, `python -m
# benchmarks.float64_check`). A wrong gradient is off by far more than UPDATE_RTOL.
LOSS_RTOL = 1e-4
UPDATE_RTOL = 1e-2


def _global_norm(leaves: list[np.ndarray]) -> float:
  return float(np.sqrt(sum(np.sum(np.square(x, dtype=np.float64)) for x in leaves)))


def step_differences(name: str, overrides: dict, batch_size: int, steps: int, num_batches: int,
                     backend: str | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Per step ``[steps]``: the CPU's train loss, the relative difference of ``backend``'s loss
  (default: JAX's default backend) from the same state, and of its parameter update."""
  model, host_train, _, host_state, host_batch = build_train_step(
      name, overrides, batch_size, "float32", 1, "cpu")
  _, device_train, _, device_state, device_batch = build_train_step(
      name, overrides, batch_size, "float32", 1, backend)
  size = host_batch["image"].shape[1]
  rng = np.random.RandomState(1)
  arrays = [{"image": rng.randint(0, 256, (batch_size, size, size, 3)).astype(np.uint8),
             "label": rng.randint(0, model.num_classes, batch_size).astype(np.int32),
             "mask": np.ones(batch_size, np.float32)} for _ in range(num_batches)]
  host_batches, device_batches = ([jax.device_put(b, like["image"].sharding) for b in arrays]
                                  for like in (host_batch, device_batch))
  treedef = jax.tree.structure(device_state)
  sharding = jax.tree.leaves(device_state)[0].sharding
  losses, loss_diffs, update_diffs = [], [], []
  for i in range(steps):
    before = jax.tree.map(np.array, host_state)  # a copy: the step donates the state
    device_state = jax.tree.unflatten(
        treedef, [jax.device_put(x, sharding) for x in jax.tree.leaves(before)])
    device_state, device_metrics = device_train(device_state, device_batches[i % num_batches])
    host_state, host_metrics = host_train(host_state, host_batches[i % num_batches])
    start, host_end, device_end = (jax.tree.leaves(jax.device_get(s.params))
                                   for s in (before, host_state, device_state))
    host_update = [b - a for a, b in zip(start, host_end, strict=True)]
    update_diffs.append(_global_norm([d - a - h for a, d, h in zip(
        start, device_end, host_update, strict=True)]) / _global_norm(host_update))
    loss, device_loss = float(host_metrics["train_loss"]), float(device_metrics["train_loss"])
    losses.append(loss)
    loss_diffs.append(abs(device_loss - loss) / abs(loss))
  return np.asarray(losses), np.asarray(loss_diffs), np.asarray(update_diffs)


def compare(name: str, overrides: dict, batch_size: int, steps: int, num_batches: int,
            loss_rtol: float = LOSS_RTOL, update_rtol: float = UPDATE_RTOL) -> dict:
  """The row of one model: the default backend's steps against the CPU's."""
  with jax.default_matmul_precision("float32"):
    losses, loss_diffs, update_diffs = step_differences(
        name, {**REFERENCE, **overrides}, batch_size, steps, num_batches)
  return {"numerics": name,
          "variant": ",".join(f"{k}={v}" for k, v in overrides.items()) or "default",
          "backend": jax.default_backend(), "against": "cpu", "precision": "float32",
          "batch": batch_size, "steps": steps, "loss_first": losses[0], "loss_last": losses[-1],
          "max_loss_rel_diff": loss_diffs.max(), "max_update_rel_diff": update_diffs.max(),
          "loss_rtol": loss_rtol, "update_rtol": update_rtol,
          "ok": bool(loss_diffs.max() <= loss_rtol and update_diffs.max() <= update_rtol)}


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--models", nargs="+", default=["resnet20", "regnet20_gru"])
  parser.add_argument("--model_args", nargs="*", default=[],
                      help="model attributes, e.g. depth=8 (a shallower network)")
  parser.add_argument("--batch_size", type=int, default=32)
  parser.add_argument("--steps", type=int, default=30)
  parser.add_argument("--batches", type=int, default=4, help="fixed batches, taken in turn")
  parser.add_argument("--loss_rtol", type=float, default=LOSS_RTOL)
  parser.add_argument("--update_rtol", type=float, default=UPDATE_RTOL)
  parser.add_argument("--jsonl", default=None,
                      help="append each model's row to this JSON-lines file when measured")
  args = parser.parse_args(argv)
  overrides = parse_variants([",".join(args.model_args)])[1] if args.model_args else {}
  rows = [append_jsonl(args.jsonl, compare(name, overrides, args.batch_size, args.steps,
                                           args.batches, args.loss_rtol, args.update_rtol))
          for name in args.models]
  print_table(rows)
  if not all(row["ok"] for row in rows):
    sys.exit("error: the default backend's steps differ from the CPU's beyond the tolerances")


if __name__ == "__main__":
  main()
