"""The first rows of a GPU benchmark run: the backend, devices and versions; an orbax round trip.

    python -m benchmarks.gpu_check --jsonl OUT/results.jsonl [--allow_cpu]

Appends to the JSON-lines file the row of versions (Python, jax, jaxlib and its CUDA plugin,
flax, optax, orbax-checkpoint, numpy), devices, and which of flax, optax and orbax-checkpoint
were imported from the wheels ``benchmarks/gpu_benchmarks.sh`` carried (``$GPU_WHEELS_SITE``),
then the row of an orbax save and restore of a train state through
``regnet_jax.train.checkpoint`` (a failure there is a row, not the end of the run). Exit status
1, with one line, where JAX's backend is not a GPU (``--allow_cpu``: any backend).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import os
import platform
import re
import sys
import tempfile
import types

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.throughput import append_jsonl

# The packages that benchmarks/gpu_wheels.txt may carry, by import name.
CARRIABLE = {"flax": "flax", "optax": "optax", "orbax-checkpoint": "orbax.checkpoint"}


def versions() -> dict:
  """The backend, devices and versions, and the packages imported from the carried wheels."""
  modules = {name: importlib.import_module(module) for name, module in CARRIABLE.items()}
  plugins = sorted(f"{d.metadata['Name']} {d.version}"
                   for d in importlib.metadata.distributions()
                   if re.match(r"jax[-_](cuda|rocm)", d.metadata["Name"] or "", re.I))
  site = os.environ.get("GPU_WHEELS_SITE")
  device = jax.devices()[0]
  return {
      "check": "versions", "backend": jax.default_backend(), "device_kind": device.device_kind,
      "devices": len(jax.devices()),
      "memory_limit_gb": (device.memory_stats() or {}).get("bytes_limit", 0) / 1e9,
      "python": platform.python_version(), "jax": jax.__version__,
      "jaxlib": importlib.metadata.version("jaxlib"), "plugins": plugins,
      **{name: module.__version__ for name, module in modules.items()},
      "numpy": np.__version__,
      "carried": sorted(name for name, module in modules.items()
                        if site and module.__file__.startswith(site + os.sep)),
  }


def orbax_round_trip() -> None:
  """Saves a small train state with orbax and restores it; RuntimeError if it changed."""
  import optax

  from regnet_jax import models
  from regnet_jax.train import checkpoint, optim, steps
  from regnet_jax.train.mesh import DataParallel

  config = types.SimpleNamespace(weight_decay=1e-4, momentum=0.9, nesterov=False)
  tx = optim.create_optimizer(config, optax.constant_schedule(0.1))
  state = steps.create_train_state(models.create_model("resnet20", 10, depth=8), tx, 0, 32)
  dp = DataParallel()
  with tempfile.TemporaryDirectory() as workdir:
    ckpt = checkpoint.Checkpointer(workdir)
    ckpt.save(7, dp.replicate(state))
    ckpt.wait()
    restored = ckpt.restore(7, jax.tree.map(jnp.zeros_like, state), dp.replicated)
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state), strict=True):
    if not np.array_equal(np.asarray(a), np.asarray(b)):
      raise RuntimeError("an orbax save and restore of a train state changed it")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--jsonl", default=None, help="append the rows to this JSON-lines file")
  parser.add_argument("--allow_cpu", action="store_true", help="accept any backend")
  args = parser.parse_args()
  row = append_jsonl(args.jsonl, versions())
  print(" ".join(f"{k}={v}" for k, v in row.items()), flush=True)
  if row["backend"] != "gpu" and not args.allow_cpu:
    sys.exit(f"error: the JAX backend is {row['backend']!r}, not a GPU: is a CUDA jaxlib "
             "installed (pip install -e '.[cuda13]')?")
  try:
    orbax_round_trip()
    append_jsonl(args.jsonl, {"check": "orbax", "ok": True})
    print("orbax save and restore: ok", flush=True)
  except Exception as e:  # recorded, and the measurements still run
    append_jsonl(args.jsonl, {"check": "orbax", "ok": False,
                              "error": f"{type(e).__name__}: {str(e)[:300]}"})
    print(f"orbax save and restore failed: {type(e).__name__}: {e}", flush=True)


if __name__ == "__main__":
  main()
