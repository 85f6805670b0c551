"""Evaluation: the eval step, precise BN, and the one path from a workdir's checkpoint to a
result, shared by the training loop, ``--mode=eval``, the analyses and the Python API.

    model, variables, config = load_from_workdir(workdir)     # newest checkpoint
    logits = model.apply(variables, normalize(images, config), train=False)

Evaluation needs the model's variables only (``params`` and ``batch_stats``): a checkpoint is
restored without its optimizer state, and the eval step takes no train state.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
from absl import logging

from regnet_jax import data, models
from regnet_jax.train import checkpoint, factory
from regnet_jax.train.mesh import DataParallel
from regnet_jax.train.steps import cross_entropy

if TYPE_CHECKING:
  import ml_collections

Variables = dict[str, Any]  # {'params': ..., 'batch_stats': ...}
# ``recompute(variables, batches, num_batches) -> batch_stats`` (:func:`precise_bn`).
PreciseBN = Callable[[Variables, Iterator[dict[str, Any]], int], Any]

# Where ``--mode=eval`` writes its TensorBoard events, inside the workdir (apart from
# training's, which already hold the evaluations made during training).
EVAL_EVENTS_DIR = "eval"
PROGRESS_EVERY_S = 10.0  # an evaluation logs its progress this often


def eval_step(apply_fn: Callable, variables: Variables, batch: dict[str, jax.Array],
              spec: data.DatasetSpec) -> dict[str, jax.Array]:
  """Sums over the real (``mask == 1``) examples of a global batch (``image [B, S, S, 3]``
  pixels, ``label [B]``, ``mask [B]``): loss, top-1 and top-5 hits, count."""
  logits = apply_fn(variables, data.normalize(batch["image"], spec), train=False)
  mask = batch["mask"]
  top5 = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
  return {
      "loss": jnp.sum(cross_entropy(logits, batch["label"], logits.shape[-1]) * mask),
      "top1": jnp.sum((top5[:, 0] == batch["label"]) * mask),
      "top5": jnp.sum(jnp.any(top5 == batch["label"][:, None], axis=-1) * mask),
      "count": jnp.sum(mask),
  }


def eval_summary(sums: dict[str, Any]) -> dict[str, float]:
  """``eval_step`` sums -> mean loss, top-1/top-5 error and the example count."""
  count = float(sums["count"])
  return {"eval_loss": float(sums["loss"]) / count,
          "eval_top1_error": 1.0 - float(sums["top1"]) / count,
          "eval_top5_error": 1.0 - float(sums["top5"]) / count,
          "eval_examples": count}


def compile_eval_step(dp: DataParallel, model: models.Network, spec: data.DatasetSpec
                      ) -> Callable[[Variables, dict[str, jax.Array]], dict[str, jax.Array]]:
  """:func:`eval_step` of ``model`` jitted over ``dp``'s mesh: variables replicated, batches
  sharded."""
  return jax.jit(functools.partial(eval_step, model.apply, spec=spec),
                 in_shardings=(dp.replicated, dp.data_sharding), out_shardings=dp.replicated)


def evaluate(p_eval: Callable, variables: Variables, dp: DataParallel,
             batches: Iterator[dict[str, Any]], stop: Callable[[], bool] | None = None
             ) -> dict[str, float] | None:
  """:func:`eval_summary` of ``variables`` over ``batches`` (every example of an eval split,
  padding masked out), with ``p_eval`` from :func:`compile_eval_step`; logs its progress every
  :data:`PROGRESS_EVERY_S` seconds.

  ``stop`` is asked before each batch; once it says True the evaluation is abandoned and None
  returned (a stop request is served within a batch).
  """
  sums, start = None, time.perf_counter()
  last_report = start
  for batch in dp.prefetch(batches, 2):
    if stop is not None and stop():
      return None
    out = p_eval(variables, batch)
    sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
    if time.perf_counter() - last_report > PROGRESS_EVERY_S:
      last_report = time.perf_counter()
      logging.info("Evaluating: %d examples in %.0f s", int(sums["count"]), last_report - start)
  return eval_summary(jax.device_get(sums))


def precise_bn(dp: DataParallel, model: models.Network, spec: data.DatasetSpec) -> PreciseBN:
  """``recompute(variables, batches, num_batches) -> batch_stats``: BatchNorm statistics
  recomputed for the current weights ("precise BN", as in pycls), every BN layer's mean and
  variance averaged over ``num_batches`` training batches, in place of the running averages,
  which lag behind weights that change fast. Compiled once, however often it is called."""
  per_batch = model.clone(bn_momentum=0.0)  # the "running" update is then the batch's own

  @functools.partial(jax.jit, in_shardings=(dp.replicated, dp.data_sharding),
                     out_shardings=dp.replicated)
  def stats(variables, images):
    _, updates = per_batch.apply(variables, data.normalize(images, spec), train=True,
                                 mutable=["batch_stats"])
    return updates["batch_stats"]

  def recompute(variables: Variables, batches: Iterator[dict[str, Any]],
                num_batches: int) -> Any:
    total, count = None, 0
    for _, batch in zip(range(num_batches), batches, strict=False):
      s = stats(variables, dp.shard({"image": batch["image"]})["image"])
      total, count = (s if total is None else jax.tree.map(jnp.add, total, s)), count + 1
    if not count:
      raise ValueError("precise BN needs at least one training batch")
    return jax.tree.map(lambda t: t / count, total)

  return recompute


def eval_source(config: ml_collections.ConfigDict, dp: DataParallel,
                batch_size: int | None = None) -> Any:
  """The run's data source (:func:`regnet_jax.data.create_source`), evaluating in batches of
  ``batch_size`` (default: the run's) rounded up to a multiple of ``dp``'s device count:
  evaluation pads its last batch, so any such size evaluates every example once."""
  n = len(dp.devices)
  return data.create_source(config, dp.data_sharding,
                            math.ceil((batch_size or config.batch_size) / n) * n)


@dataclasses.dataclass(frozen=True)
class Restored:
  """A workdir's checkpoint, ready to evaluate."""

  model: models.Network
  variables: Variables  # params and BatchNorm statistics, replicated over the mesh
  config: ml_collections.ConfigDict  # the run's
  step: int


def restore(workdir: str, step: int | None = None, dp: DataParallel | None = None) -> Restored:
  """The model, parameters and BatchNorm statistics of checkpoint ``step`` (None: the newest)
  of ``workdir``, replicated on ``dp``'s devices (default: all); no optimizer state is read.

  Raises:
    FileNotFoundError: not a workdir, no checkpoint, or no checkpoint ``step``.
  """
  dp = dp or DataParallel()
  config = checkpoint.read_config(workdir)
  spec = data.get_spec(config)
  model = factory.build_model(config, spec.num_classes)
  shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.PRNGKey(0),
                          jnp.zeros((1, spec.image_size, spec.image_size, 3)))
  ckpt = checkpoint.Checkpointer(workdir, create=False)
  step = ckpt.saved_step(step)
  target = {"step": 0, "params": shapes["params"], "batch_stats": shapes["batch_stats"]}
  restored = ckpt.restore(step, target, dp.replicated)
  variables = {"params": restored["params"], "batch_stats": restored["batch_stats"]}
  return Restored(model, variables, config, step)


def with_precise_bn(run: Restored, dp: DataParallel, source: Any, num_batches: int
                    ) -> Variables:
  """``run``'s variables with BatchNorm statistics recomputed (:func:`precise_bn`) over the
  run's own first ``num_batches`` training batches from ``source``."""
  recompute = precise_bn(dp, run.model, data.get_spec(run.config))
  stats = recompute(run.variables, source.train_batches(0), num_batches)
  return {**run.variables, "batch_stats": stats}


def restore_for_inference(workdir: str, step: int | None = None, precise_bn_batches: int = 0,
                          dp: DataParallel | None = None) -> Restored:
  """:func:`restore` on ``dp``'s devices (default: one device).

  With ``precise_bn_batches``, the BatchNorm statistics are recomputed over that many of the
  run's training batches (this reads the dataset). A network evaluated before its learning
  rate has decayed can need this: its running averages lag behind its weights.
  """
  dp = dp or DataParallel(jax.devices()[:1])
  run = restore(workdir, step, dp)
  if precise_bn_batches > 0:
    run = dataclasses.replace(run, variables=with_precise_bn(
        run, dp, eval_source(run.config, dp), precise_bn_batches))
  return run


def load_from_workdir(workdir: str, step: int | None = None, precise_bn_batches: int = 0
                      ) -> tuple[models.Network, Variables, ml_collections.ConfigDict]:
  """The model, its variables (``params`` and ``batch_stats``) and the run's config, from
  checkpoint ``step`` (None: the newest) of ``workdir``, on one device, with BatchNorm
  statistics recomputed over ``precise_bn_batches`` training batches where > 0
  (:func:`restore_for_inference`). :func:`regnet_jax.load_pretrained` also reads exported
  weights files."""
  run = restore_for_inference(workdir, step, precise_bn_batches)
  return run.model, run.variables, run.config


def evaluate_workdir(workdir: str, step: int | None = None, precise_bn_batches: int = 0,
                     devices: list | None = None) -> dict[str, float]:
  """Evaluates a checkpoint of ``workdir`` on the full eval split; prints the result and logs
  it to TensorBoard in ``workdir/eval``.

  With ``precise_bn_batches``, BatchNorm statistics are first recomputed over that many
  training batches (:func:`precise_bn`); the results are then logged as
  ``precise_bn_eval_*``. Works on any device count: the eval batch is the run's, rounded up
  to a multiple of the ``devices`` (default: all).
  """
  from clu import metric_writers

  dp = DataParallel(devices)
  print(f"Restoring {workdir} ({'the newest checkpoint' if step is None else f'step {step}'})")
  run = restore(workdir, step, dp)
  spec = data.get_spec(run.config)
  source = eval_source(run.config, dp)
  variables = run.variables
  if precise_bn_batches > 0:
    print(f"Recomputing BatchNorm statistics over {precise_bn_batches} training batches...")
    variables = with_precise_bn(run, dp, source, precise_bn_batches)
  print(f"Evaluating step {run.step} on the {spec.eval_split} split (compiling first)...")
  result = evaluate(compile_eval_step(dp, run.model, spec), variables, dp,
                    source.eval_batches())
  writer = metric_writers.create_default_writer(os.path.join(workdir, EVAL_EVENTS_DIR),
                                                just_logging=jax.process_index() > 0)
  prefix = "precise_bn_" if precise_bn_batches > 0 else ""
  writer.write_scalars(run.step, {prefix + k: v for k, v in result.items()})
  writer.flush()
  print(f"step {run.step}: top-1 error {100 * result['eval_top1_error']:.2f}%, top-5 error "
        f"{100 * result['eval_top5_error']:.2f}%, loss {result['eval_loss']:.4f} over "
        f"{int(result['eval_examples'])} examples")
  return result
