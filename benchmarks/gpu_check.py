"""The checks that open a GPU benchmark run: the backend, the versions, an orbax round trip.

    python -m benchmarks.gpu_check --jsonl OUT/results.jsonl [--allow_cpu]

Fails (exit status 1, one line) unless JAX's backend is a GPU (``--allow_cpu``: any backend),
or unless a train state saved with orbax through ``regnet_jax.train.checkpoint`` restores
exactly. Prints the versions and appends them, with the devices, to the JSON-lines file.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import types

import jax
import jax.numpy as jnp
import numpy as np


def check(allow_cpu: bool) -> dict:
  """The row of versions and devices; RuntimeError naming what failed."""
  import flax
  import optax
  import orbax.checkpoint

  from regnet_jax import models
  from regnet_jax.train import checkpoint, optim, steps
  from regnet_jax.train.mesh import DataParallel

  backend = jax.default_backend()
  if backend != "gpu" and not allow_cpu:
    raise RuntimeError(f"the JAX backend is {backend!r}, not a GPU: is a CUDA jaxlib installed "
                       "(pip install -e '.[cuda13]')?")
  row = {"check": "ok", "backend": backend, "devices": [str(d) for d in jax.devices()],
         "jax": jax.__version__, "jaxlib": jax.lib.__version__, "flax": flax.__version__,
         "optax": optax.__version__, "orbax": orbax.checkpoint.__version__}
  print(" ".join(f"{k}={v}" for k, v in row.items()), flush=True)
  sgd = types.SimpleNamespace(weight_decay=1e-4, momentum=0.9, nesterov=False)
  tx = optim.create_optimizer(sgd, optax.constant_schedule(0.1))
  model = models.create_model("resnet20", 10, depth=8)
  state = steps.create_train_state(model, tx, 0, 32)
  dp = DataParallel()
  with tempfile.TemporaryDirectory() as workdir:
    ckpt = checkpoint.Checkpointer(workdir)
    ckpt.save(7, dp.replicate(state))
    ckpt.wait()
    zeros = jax.tree.map(jnp.zeros_like, state)
    restored = ckpt.restore(7, zeros, dp.replicated)
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(state), strict=True):
    if not np.array_equal(np.asarray(a), np.asarray(b)):
      raise RuntimeError("an orbax save and restore of a train state changed it")
  return row


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--jsonl", default=None, help="append the row to this JSON-lines file")
  parser.add_argument("--allow_cpu", action="store_true", help="accept any backend")
  args = parser.parse_args()
  from benchmarks.throughput import append_jsonl

  try:
    append_jsonl(args.jsonl, check(args.allow_cpu))
  except Exception as e:  # any failure here ends the run before the long parts
    sys.exit(f"error: {type(e).__name__}: {e}")
  print("checks passed: GPU backend, versions, orbax save and restore", flush=True)


if __name__ == "__main__":
  main()
