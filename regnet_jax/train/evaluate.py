"""Evaluation: a train state over a data source's eval split, a workdir's checkpoint, and
loading a trained model for inference.

    model, variables, config = load_from_workdir(workdir)     # newest checkpoint
    logits = model.apply(variables, normalize(images, config.dataset), train=False)
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from regnet_jax import data
from regnet_jax.train import checkpoint, steps

# Where ``--mode=eval`` writes its TensorBoard events, inside the workdir (apart from
# training's, which already hold the evaluations made during training).
EVAL_EVENTS_DIR = "eval"


def evaluate(p_eval: Callable, state: steps.TrainState, trainer: steps.Trainer,
             batches: Iterator[dict[str, Any]], stop: Callable[[], bool] | None = None
             ) -> dict[str, float] | None:
  """Top-1/top-5 error and loss of ``state`` over ``batches`` (every example of an eval split,
  padding masked out), with ``p_eval`` from :meth:`steps.Trainer.compile_steps`.

  ``stop`` is asked before each batch; once it says True the evaluation is abandoned and None
  returned (a stop request is served within a batch).
  """
  sums = None
  for batch in trainer.prefetch(batches, 2):
    if stop is not None and stop():
      return None
    out = p_eval(state, batch)
    sums = out if sums is None else jax.tree.map(jnp.add, sums, out)
  sums = jax.device_get(sums)
  return {**steps.eval_summary(sums), "eval_examples": float(sums["count"])}


def eval_batch_size(batch_size: int, trainer: steps.Trainer) -> int:
  """``batch_size`` rounded up to a multiple of the device count (evaluation pads its last
  batch anyway, so any such size evaluates every example once)."""
  n = len(trainer.devices)
  return math.ceil(batch_size / n) * n


def recompute_batch_stats(trainer: steps.Trainer, model: Any, variables: dict[str, Any],
                          config: ml_collections.ConfigDict, source: Any, num_batches: int
                          ) -> Any:
  """Precise BN (:func:`steps.precise_bn`) over the run's own first ``num_batches`` training
  batches."""
  recompute = steps.precise_bn(trainer, model, data.get_spec(config))
  return recompute(variables, source.train_batches(0), num_batches)


def restore_state(workdir: str, step: int | None, trainer: steps.Trainer
                  ) -> tuple[steps.TrainState, ml_collections.ConfigDict, Any]:
  """The train state of checkpoint ``step`` (None: the newest) of ``workdir``, replicated on
  ``trainer``'s devices, with the run's config and model."""
  config = checkpoint.read_config(workdir)
  spec = data.get_spec(config)
  model = steps.build_model(config, spec.num_classes)
  schedule = steps.learning_rate_schedule(config, 1, 1)
  state = steps.create_train_state(
      model, steps.create_optimizer(config, schedule), config.seed, spec.image_size)
  ckpt = checkpoint.Checkpointer(workdir, config.keep_checkpoints, create=False)
  saved = sorted(ckpt.manager.all_steps())
  if not saved:
    raise FileNotFoundError(f"no checkpoint in {ckpt.directory}: train first "
                            f"(python main.py --config=... --workdir={workdir})")
  step = saved[-1] if step is None else step
  if step not in saved:
    raise FileNotFoundError(f"no checkpoint {step} in {ckpt.directory}; it has steps "
                            f"{', '.join(map(str, saved))}")
  return ckpt.restore(step, state, trainer.replicated), config, model


def load_from_workdir(workdir: str, step: int | None = None, precise_bn_batches: int = 0
                      ) -> tuple[Any, dict[str, Any], ml_collections.ConfigDict]:
  """The model, its variables (``params`` and ``batch_stats``) and the run's config, from
  checkpoint ``step`` (None: the newest) of ``workdir``.

  With ``precise_bn_batches``, the BatchNorm statistics are recomputed over that many of the
  run's training batches (this reads the dataset). A network evaluated before its learning
  rate has decayed can need this: its running averages lag behind its weights.
  """
  trainer = steps.Trainer(jax.devices()[:1])
  state, config, model = restore_state(workdir, step, trainer)
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  if precise_bn_batches > 0:
    source = data.create_source(config, trainer.data_sharding)
    variables["batch_stats"] = recompute_batch_stats(trainer, model, variables, config, source,
                                                     precise_bn_batches)
  return model, variables, config


def evaluate_workdir(workdir: str, step: int | None = None, precise_bn_batches: int = 0,
                     devices: list | None = None) -> dict[str, float]:
  """Evaluates a checkpoint of ``workdir`` on the full eval split; prints the result and logs
  it to TensorBoard in ``workdir/eval``.

  With ``precise_bn_batches``, BatchNorm statistics are first recomputed over that many
  training batches (:func:`recompute_batch_stats`); the results are then logged as
  ``precise_bn_eval_*``. Works on any device count: the eval batch is the run's, rounded up
  to a multiple of the ``devices`` (default: all).
  """
  from clu import metric_writers

  trainer = steps.Trainer(devices)
  state, config, model = restore_state(workdir, step, trainer)
  source = data.create_source(config, trainer.data_sharding,
                              eval_batch_size(config.batch_size, trainer))
  if precise_bn_batches > 0:
    print(f"Recomputing BatchNorm statistics over {precise_bn_batches} training batches...")
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    state = state.replace(batch_stats=recompute_batch_stats(trainer, model, variables, config,
                                                            source, precise_bn_batches))
  _, p_eval = trainer.compile_steps(config, steps.learning_rate_schedule(config, 1, 1))
  result = evaluate(p_eval, state, trainer, source.eval_batches())
  step = int(state.step)
  writer = metric_writers.create_default_writer(os.path.join(workdir, EVAL_EVENTS_DIR),
                                                just_logging=jax.process_index() > 0)
  prefix = "precise_bn_" if precise_bn_batches > 0 else ""
  writer.write_scalars(step, {prefix + k: v for k, v in result.items()})
  writer.flush()
  print(f"step {step}: top-1 error {100 * result['eval_top1_error']:.2f}%, top-5 error "
        f"{100 * result['eval_top5_error']:.2f}%, loss {result['eval_loss']:.4f} over "
        f"{int(result['eval_examples'])} examples")
  return result
