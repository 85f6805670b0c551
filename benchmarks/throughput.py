"""Train/eval throughput, compile time and peak memory of registered models; prints a table.

    python benchmarks/throughput.py --models resnet20 regnet20_gru --batch_size 128
    python benchmarks/throughput.py --models regnet20_gru --variants cell_impl=reference \
        scan_unroll=1
    python benchmarks/throughput.py --pipeline cifar10 --data_dir DIR   # input pipeline alone
    python benchmarks/throughput.py --resident --models resnet20 --batch_size 64

Images/s are throughput, on synthetic batches already on the devices (the model's rate, not the
input pipeline's): after warm-up, ``--steps`` steps are dispatched one after another without
waiting for any (JAX runs them asynchronously, as training does), and timed from the first
dispatch until the last result is ready. Compile time is measured on its own, before. With
``--jsonl``, each measurement (compile, train, eval) is appended as a row the moment it is
taken. ``--variants`` benchmarks each model once per listed override (plus the default: a model
attribute, or ``cell_impl`` / ``conv_grad``, the implementation), alternating them in one run,
so they can be compared as ratios on a noisy machine; ``--model_args`` applies to all of them.
``--resident`` times the train step fed by the device-resident CIFAR source instead.
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import time
import types
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from regnet_jax import data, models
from regnet_jax.cpu import process
from regnet_jax.models import counts
from regnet_jax.train import evaluate, factory, optim
from regnet_jax.train import steps as train_steps
from regnet_jax.train.mesh import DataParallel

# Overrides that choose the implementation (regnet_jax.train.factory.implement), not the model.
IMPLEMENTATION = ("cell_impl", "conv_grad")


def parse_value(text: str):
  for cast in (int, float):
    try:
      return cast(text)
    except ValueError:
      pass
  return text


def parse_variants(specs: list[str]) -> list[dict]:
  """``['a=1', 'b=x,c=2']`` -> ``[{}, {'a': 1}, {'b': 'x', 'c': 2}]``: the default, then one
  variant per spec, each a comma-separated list of attribute overrides."""
  return [{}] + [{k: parse_value(v) for k, v in (kv.split("=", 1) for kv in spec.split(","))}
                 for spec in specs]


def _peak_memory_mb() -> float:
  stats = jax.devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    return stats["peak_bytes_in_use"] / 2**20
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10  # host RSS (KiB on Linux)


def _time_steps(fn: Callable[[], Any], steps: int, warmup: int) -> tuple[float, float, float]:
  """Seconds per call of ``fn`` over ``steps`` calls dispatched without waiting for any, from
  the first dispatch until every result is ready (after ``warmup`` calls, each waited on); and
  per timed call the host's minor page faults (fresh memory the kernel had to map and zero) and
  the process's system CPU milliseconds (mostly that zeroing)."""
  for _ in range(warmup):
    jax.block_until_ready(fn())
  before = resource.getrusage(resource.RUSAGE_SELF)
  start = time.perf_counter()
  jax.block_until_ready([fn() for _ in range(steps)])
  seconds = time.perf_counter() - start
  after = resource.getrusage(resource.RUSAGE_SELF)
  return (seconds / steps, (after.ru_minflt - before.ru_minflt) / steps,
          1e3 * (after.ru_stime - before.ru_stime) / steps)


def build_train_step(name: str, overrides: dict, batch_size: int, dtype: str,
                     num_devices: int, backend: str | None = None):
  """The jitted train and eval steps of one model variant on a synthetic device-resident batch.

  Returns ``(model, p_train, p_eval, state, batch)``: SGD with momentum at a constant learning
  rate, the batch ``[batch_size, S, S, 3]`` (pixels, seed 0) sharded over the first
  ``num_devices`` devices of ``backend`` (default: JAX's default backend)."""
  size = models.get_spec(name).image_size
  spec = data.get_spec("cifar10" if size == 32 else "imagenet2012")
  impl = {k: overrides[k] for k in IMPLEMENTATION if k in overrides}
  model = factory.implement(models.create_model(
      name, spec.num_classes, dtype=jnp.bfloat16 if dtype == "bfloat16" else jnp.float32,
      **{k: v for k, v in overrides.items() if k not in IMPLEMENTATION}), **impl)
  sgd = types.SimpleNamespace(weight_decay=1e-4, momentum=0.9, nesterov=False)
  schedule = optax.constant_schedule(0.1)
  dp = DataParallel(jax.devices(backend)[:num_devices])
  dp.check_batch_size(batch_size)
  state = dp.replicate(train_steps.create_train_state(
      model, optim.create_optimizer(sgd, schedule), 0, size))
  rng = np.random.RandomState(0)
  batch = dp.shard({
      "image": rng.randint(0, 256, (batch_size, size, size, 3)).astype(np.uint8),
      "label": rng.randint(0, model.num_classes, batch_size).astype(np.int32),
      "mask": np.ones(batch_size, np.float32)})
  p_train = train_steps.compile_train_step(dp, spec, 0.0, schedule)
  eval_step = evaluate.compile_eval_step(dp, model, spec)
  p_eval = lambda state, batch: eval_step(
      {"params": state.params, "batch_stats": state.batch_stats}, batch)
  return model, p_train, p_eval, state, batch


def benchmark_model(name: str, overrides: dict, batch_size: int, dtype: str, num_devices: int,
                    steps: int, warmup: int, peak_tflops: float | None = None,
                    evaluate: bool = True, emit: Callable[[dict], Any] = lambda row: None
                    ) -> dict:
  """Compile seconds, train (and eval) images/s and peak memory of one model variant.

  Each measurement is passed to ``emit`` the moment it is taken, as a row of its own
  (``measured``: ``compile``, ``train``, ``eval``), so that a run stopped part-way keeps what
  it measured; the return value is all of them in one row. ``train_tflop_s`` is the model's
  conventional arithmetic, 6 FLOPs per forward MAC per image (2 forward, 4 backward), at the
  measured train rate; ``mfu_pct`` is that as a share of ``peak_tflops`` (the model FLOP
  utilisation), when given. ``evaluate=False`` skips the eval step."""
  model, p_train, p_eval, state, batch = build_train_step(name, overrides, batch_size, dtype,
                                                          num_devices)
  size = models.get_spec(name).image_size
  reference = models.create_model(name, model.num_classes, **{
      k: v for k, v in overrides.items() if k not in IMPLEMENTATION})
  macs = counts.count_macs(reference, size)  # before any timing: a failure here loses nothing
  head = {"model": name,
          "variant": ",".join(f"{k}={v}" for k, v in overrides.items()) or "default",
          "batch": batch_size, "dtype": dtype, "devices": num_devices}
  merged = dict(head)

  def keep(measured: str, **values: Any) -> None:
    merged.update(values)
    emit({**head, "measured": measured, **values})

  start = time.perf_counter()
  compiled = p_train.lower(state, batch).compile()
  keep("compile", compile_s=time.perf_counter() - start)
  holder = [state]

  def step():
    holder[0], metrics = compiled(holder[0], batch)
    return metrics

  seconds, faults, sys_ms = _time_steps(step, steps, warmup)
  train_img_s = batch_size / seconds
  tflop_s = 6 * macs * train_img_s / 1e12
  keep("train", steps=steps, train_img_s=train_img_s, train_tflop_s=tflop_s,
       **({"mfu_pct": 100 * tflop_s / peak_tflops} if peak_tflops else {}),
       peak_mem_mb=_peak_memory_mb(), page_faults_per_step=faults, sys_ms_per_step=sys_ms)
  if evaluate:
    seconds, _, _ = _time_steps(lambda: p_eval(holder[0], batch), steps, warmup)
    keep("eval", eval_img_s=batch_size / seconds)
  return merged


def benchmark_resident(name: str, batch_size: int, steps: int, warmup: int,
                       num_devices: int) -> dict:
  """Train images/s of one model fed by the device-resident CIFAR source
  (:mod:`regnet_jax.data.resident`: gather and augment on the devices, then the train step),
  on 50,000 random uint8 images already on the devices."""
  from regnet_jax.data import resident

  _, p_train, _, state, _ = build_train_step(name, {}, batch_size, "float32", num_devices)
  dp = DataParallel(jax.devices()[:num_devices])
  rng = np.random.RandomState(0)
  arrays = {k: (rng.randint(0, 256, (n, 32, 32, 3)).astype(np.uint8),
                rng.randint(0, 10, n).astype(np.int32)) for k, n in (("train", 50_000),
                                                                       ("test", 1000))}
  batches = resident.ResidentSource(arrays, data.get_spec("cifar10"), batch_size, 0,
                                    dp.data_sharding).train_batches()
  holder = [state]

  def step():
    holder[0], metrics = p_train(holder[0], next(batches))
    return metrics

  seconds, _, _ = _time_steps(step, steps, warmup)
  return {"model": name, "batch": batch_size, "input": "resident", "devices": num_devices,
          "train_img_s": batch_size / seconds, "ms_per_step": 1000 * seconds}


def benchmark_pipeline(dataset: str, data_dir: str | None, batch_size: int,
                       batches: int = 50) -> dict:
  """Images/s of the training input pipeline alone, from tfds to device-ready batches (with
  the default settings: for ImageNet, no antialiasing)."""
  from regnet_jax.data import pipeline

  spec = data.get_spec(dataset)
  builder = pipeline.get_builder(dataset, data_dir)
  it = DataParallel().prefetch(pipeline.train_batches(builder, spec, batch_size, seed=0), 2)
  jax.block_until_ready(next(it))  # start-up: file open, shuffle buffer fill
  start = time.perf_counter()
  for _ in range(batches):
    jax.block_until_ready(next(it))
  seconds = time.perf_counter() - start
  return {"pipeline": dataset, "batch": batch_size, "img_s": batches * batch_size / seconds}


def print_table(rows: list[dict]) -> None:
  if not rows:
    return
  keys = list(rows[0])
  fmt = lambda v: (str(v) if not isinstance(v, float) else
                   f"{v:,.1f}" if v == 0 or abs(v) >= 0.1 else f"{v:.1e}")
  widths = [max(len(k), *(len(fmt(r[k])) for r in rows)) for k in keys]
  print("| " + " | ".join(k.ljust(w) for k, w in zip(keys, widths, strict=True)) + " |")
  print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
  for r in rows:
    print("| " + " | ".join(fmt(r[k]).ljust(w) for k, w in zip(keys, widths, strict=True)) + " |")


def append_jsonl(path: str | None, row: dict) -> dict:
  """Appends ``row`` to the JSON-lines file ``path`` at once (a later timeout loses nothing
  already measured); returns the row."""
  if path:
    with open(path, "a") as f:
      f.write(json.dumps(row) + "\n")
  return row


def report(rows: list[dict], json_path: str | None, details: str = "") -> None:
  """Prints the machine line and the table of ``rows``; also writes them to ``json_path``."""
  print(f"# {jax.devices()[0].device_kind} x{len(jax.devices())}, jax {jax.__version__}"
        + (f", {details}" if details else ""))
  print_table(rows)
  if json_path:
    with open(json_path, "w") as f:
      json.dump(rows, f, indent=2)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--models", nargs="*", default=["resnet20", "regnet20_gru"])
  parser.add_argument("--variants", nargs="*", default=[],
                      help="overrides to compare with the default, e.g. cell_impl=reference "
                      "or conv_grad=kernel,pairing=interleave")
  parser.add_argument("--model_args", nargs="*", default=[],
                      help="attributes of every variant, e.g. depth=8 (a shallower network)")
  parser.add_argument("--batch_size", type=int, nargs="+", default=[128],
                      help="global batch sizes, each benchmarked in turn")
  parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
  parser.add_argument("--devices", type=int, default=1)
  parser.add_argument("--steps", type=int, default=10, help="timed steps")
  parser.add_argument("--warmup", type=int, default=3, help="steps run before timing")
  parser.add_argument("--eval", action=argparse.BooleanOptionalAction, default=True,
                      help="also time the eval step (--no-eval: train only)")
  parser.add_argument("--rounds", type=int, default=1, help="alternate all variants this often")
  parser.add_argument("--pipeline", default=None, help="benchmark this dataset's pipeline")
  parser.add_argument("--data_dir", default=None)
  parser.add_argument("--resident", action="store_true",
                      help="time the train step fed by the device-resident CIFAR source")
  parser.add_argument("--json", default=None, help="also write the rows to this file")
  parser.add_argument("--jsonl", default=None,
                      help="append each row to this JSON-lines file the moment it is measured")
  parser.add_argument("--peak_tflops", type=float, default=None,
                      help="the devices' peak TFLOP/s in --dtype, for the MFU column")
  parser.add_argument("--no_hugepages", action="store_true",
                      help="leave glibc's malloc as it is (see regnet_jax/cpu/process.py)")
  args = parser.parse_args()
  process.reexec_with_cpu_settings(hugepages=not args.no_hugepages)

  rows = []
  keep = lambda row: rows.append(append_jsonl(args.jsonl, row))
  model_args = parse_variants([",".join(args.model_args)])[1] if args.model_args else {}
  variants = [{**model_args, **v} for v in parse_variants(args.variants)]
  for _, batch in itertools.product(range(args.rounds), args.batch_size):
    if args.pipeline:
      keep(benchmark_pipeline(args.pipeline, args.data_dir, batch, 50))
    elif args.resident:
      for name in args.models:
        keep(benchmark_resident(name, batch, args.steps, args.warmup, args.devices))
    else:
      for name, overrides in itertools.product(args.models, variants):
        rows.append(benchmark_model(  # its rows reach --jsonl one measurement at a time
            name, overrides, batch, args.dtype, args.devices, args.steps, args.warmup,
            args.peak_tflops, args.eval, emit=lambda row: append_jsonl(args.jsonl, row)))
  report(rows, args.json)


if __name__ == "__main__":
  main()
