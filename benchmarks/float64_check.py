"""How exactly a float32 network gradient is computed here: against float64, per model.

    python -m benchmarks.float64_check --models resnet20 regnet20_lstm regnet20_gru

For each model, the train-mode gradient of the mean cross-entropy at initialisation (batch 4,
32x32 inputs) as training computes it (float32: the C++ kernels on CPU, XLA's fusions) against
the same network in float64 (pure XLA), per parameter tensor ``|g32 - g64| / |g64|``: median
and worst over tensors. ``f64 moved 1e-7`` is the same measure for float64 after moving every
parameter by 1e-7 relative: how much float32-sized rounding alone can change the gradient (a
large value means an ill-conditioned gradient, not a wrong one). ``ynn fusions`` counts the
YNNPACK fusions in the model's jitted train step at batch 16 (jaxlib 0.10.2's have known bugs,
docs/performance.md), by the ops they contain. The conv biases right before a BatchNorm are
left out (their gradient is zero up to rounding). Prints a table, and the upstream bug's
reproducer (a dot with a broadcast constant, then a sum) for this machine.
"""

from __future__ import annotations

import argparse
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks.throughput import build_train_step
from regnet_jax import models
from regnet_jax.cpu import process as host
from regnet_jax.train import factory


def gradients(name: str, variables: dict, dtype) -> dict[str, np.ndarray]:
  """The gradient of the mean cross-entropy over 4 fixed images, per parameter path: float32
  as training computes it on this backend (:func:`factory.implement`'s implementation),
  float64 with the pure reference."""
  model = models.create_model(name, 10, dtype=dtype)
  model = factory.implement(model) if dtype == jnp.float32 else model
  rng = np.random.RandomState(0)
  x, y = jnp.asarray(rng.randn(4, 32, 32, 3), dtype), rng.randint(0, 10, 4)
  v = jax.tree.map(lambda a: jnp.asarray(a, dtype), variables)

  def loss(params):
    logits, _ = model.apply({"params": params, "batch_stats": v["batch_stats"]}, x,
                            train=True, mutable=["batch_stats"])
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(dtype), y).mean()

  g = jax.jit(jax.grad(loss))(v["params"])
  return {jax.tree_util.keystr(k): np.asarray(a, np.float64)
          for k, a in jax.tree_util.tree_leaves_with_path(g)}


def perturbed(params: dict, scale: float) -> dict:
  """float64 copies of ``params``, each entry multiplied by ``1 + scale * N(0, 1)``."""
  rng = np.random.RandomState(1)
  return jax.tree.map(lambda a: np.asarray(a, np.float64) * (1 + scale * rng.randn(*a.shape)),
                      params)


def relative_errors(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> list[float]:
  return [float(np.linalg.norm(got[k] - w) / np.linalg.norm(w)) for k, w in want.items()
          if "proj_conv']['bias" not in k]


def ynn_fusions(name: str) -> dict[str, int]:
  """YNNPACK fusions of the model's compiled train step, counted by the ops inside them."""
  _, p_train, _, state, batch = build_train_step(name, {}, 16, "float32", 1)
  text = p_train.lower(state, batch).compile().as_text()
  bodies = {m.group(1): m.group(0) for m in re.finditer(r"^(%\S+) \(.*?\n\}\n", text, re.S | re.M)}
  counts: dict[str, int] = {}
  for called in re.findall(r"calls=(%[\w.\-]+).*?__ynn_fusion", text):
    ops = sorted(set(re.findall(r"= \S+ (dot|reduce|broadcast|convolution|constant)\(",
                                bodies.get(called, ""))))
    counts["+".join(ops)] = counts.get("+".join(ops), 0) + 1
  return counts


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--models", nargs="+", default=["resnet20", "regnet20_lstm", "regnet20_gru"])
  args = parser.parse_args()
  host.reexec_with_cpu_settings()
  print("| model | f32 vs f64: median | worst | f64 moved 1e-7: median | ynn fusions |")
  print("|---|---|---|---|---|")
  for name in args.models:
    # Initialised outside x64: with x64 on, the truncated-normal initialisers draw otherwise.
    v = jax.tree.map(np.asarray, models.create_model(name, 10).init(
        jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), train=False))
    g32 = gradients(name, v, jnp.float32)
    moved = {**v, "params": perturbed(v["params"], 1e-7)}
    with jax.enable_x64():
      g64, g64_moved = gradients(name, v, jnp.float64), gradients(name, moved, jnp.float64)
    e32, e_moved = relative_errors(g32, g64), relative_errors(g64_moved, g64)
    print(f"| {name} | {np.median(e32):.1e} | {max(e32):.1e} | {np.median(e_moved):.1e} | "
          f"{ynn_fusions(name)} |", flush=True)
  x = np.random.RandomState(0).rand(512, 512).astype(np.float32)
  got = float(jax.jit(lambda x: jnp.sum(x @ jnp.ones((512, 512), jnp.float32)))(x))
  print(f"\nupstream reproducer: jit(sum(x @ ones((512, 512)))) = {got}, "
        f"numpy {float(np.sum(x.astype(np.float64)) * 512):.6e}")


if __name__ == "__main__":
  main()
