"""Fig. 1(b): test accuracy of GAP + the trained final FC applied to the outputs of the last
blocks of a network (blocks 7, 8 and 9 of a 20-layer CIFAR net), for any trained workdir.

    python -m regnet_jax.analysis.block_probe --workdirs DIR [DIR ...] [--blocks 3] [--json F]

The FC is reused, not retrained (as the paper appears to do): a block whose output already
separates the classes in the final FC's terms scores high. The last block's accuracy is the
network's own test accuracy.
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

import numpy as np

from regnet_jax import console

# JAX, flax and the data pipeline are imported where they are used: --help needs none of them.

if TYPE_CHECKING:
  from jax import Array


def block_outputs(intermediates: dict[str, Any], kind: str = "features",
                  stages: tuple[int, ...] | None = None) -> list[Array]:
  """The sown ``kind`` (``'features'``: block outputs O; ``'hidden'``: regulator states H) of
  every block of ``stages`` (1-based; None: all) in network order, each ``[B, H, W, C]``;
  blocks without it are skipped."""
  outs = []
  for stage in sorted(intermediates, key=lambda s: int(s.removeprefix("stage"))):
    if stages is not None and int(stage.removeprefix("stage")) not in stages:
      continue
    entries = intermediates[stage]
    if kind in entries.get("block0", {}):
      outs.append(entries["block0"][kind][0])
    if kind in entries.get("blocks", {}):
      outs.extend(list(entries["blocks"][kind][0]))  # scanned: [n - 1, B, H, W, C]
  return outs


def probe_counts(model: Any, variables: dict[str, Any], images: Array, labels: Array,
                 mask: Array, last: int) -> Array:
  """Correct predictions (masked) of GAP + FC on each of the last ``last`` block outputs:
  ``[last]``. The FC is the model's own (``params['fc']``)."""
  import jax.numpy as jnp

  _, state = model.apply(variables, images, train=False, mutable=["intermediates"])
  fc = variables["params"]["fc"]
  counts = []
  for out in block_outputs(state["intermediates"])[-last:]:
    logits = jnp.mean(out.astype(jnp.float32), axis=(1, 2)) @ fc["kernel"] + fc["bias"]
    counts.append(jnp.sum((jnp.argmax(logits, -1) == labels) * mask))
  return jnp.stack(counts)


def probe_workdir(workdir: str, last: int = 3, step: int | None = None,
                  batch_size: int = 500, precise_bn: int = 0) -> dict[str, Any]:
  """Runs :func:`probe_counts` over the whole test split of a workdir's dataset, for the last
  ``last`` blocks (all in the last stage, whose width the FC takes). ``precise_bn``: first
  recompute the BatchNorm statistics over that many training batches
  (:func:`regnet_jax.train.evaluate.with_precise_bn`).

  Returns ``{'workdir', 'model', 'step', 'blocks': [global 1-based block numbers],
  'accuracy': [...]}``.
  """
  import jax

  from regnet_jax import data
  from regnet_jax.train import evaluate
  from regnet_jax.train.mesh import DataParallel

  dp = DataParallel(jax.devices()[:1])
  run = evaluate.restore(workdir, step, dp)
  model, config = run.model, run.config
  source = evaluate.eval_source(config, dp, batch_size)
  variables = (evaluate.with_precise_bn(run, dp, source, precise_bn) if precise_bn > 0
               else run.variables)
  spec = data.get_spec(config)
  total_blocks, in_last_stage = sum(model.stage_sizes), model.stage_sizes[-1]
  if not 1 <= last <= in_last_stage:  # the FC only fits the last stage's width
    raise ValueError(f"--blocks={last} must be between 1 and the {in_last_stage} blocks of "
                     f"{config.model}'s last stage")
  probe = jax.jit(lambda v, b: probe_counts(model, v, data.normalize(b["image"], spec),
                                          b["label"], b["mask"], last))
  correct, seen = np.zeros(last), 0.0
  for batch in dp.prefetch(source.eval_batches(), 2):
    correct += np.asarray(probe(variables, batch))
    seen += float(batch["mask"].sum())
  return {"workdir": workdir, "model": config.model, "step": run.step, "precise_bn": precise_bn,
          "blocks": list(range(total_blocks - last + 1, total_blocks + 1)),
          "accuracy": (correct / seen).tolist()}


def main(argv: list[str] | None = None) -> None:
  console.quiet()
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdirs", nargs="+", required=True)
  parser.add_argument("--blocks", type=int, default=3, help="probe this many last blocks")
  parser.add_argument("--precise_bn", type=int, default=0,
                      help="recompute BatchNorm statistics over this many training batches")
  parser.add_argument("--json", default=None, help="also write the results to this file")
  args = parser.parse_args(argv)
  from regnet_jax.data import pipeline  # after the flags: --help needs no TensorFlow

  try:
    results = [probe_workdir(w, args.blocks, precise_bn=args.precise_bn)
               for w in args.workdirs]
  except (ValueError, FileNotFoundError, pipeline.DatasetNotFoundError) as e:
    raise SystemExit(f"error: {e}") from None
  blocks = results[0]["blocks"]
  print("| model | step | " + " | ".join(f"block {b}" for b in blocks) + " |")
  print("|---|---|" + "---|" * len(blocks))
  for r in results:
    print(f"| {r['model']} | {r['step']} | "
          + " | ".join(f"{100 * a:.2f}%" for a in r["accuracy"]) + " |")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(results, f, indent=2)


if __name__ == "__main__":
  main()
