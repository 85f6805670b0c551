"""Evaluation of a trained workdir, and loading a model for inference.

    model, variables, config = load_from_workdir(workdir)     # newest checkpoint
    logits = model.apply(variables, images, train=False)
"""

from __future__ import annotations

from typing import Any

import jax
import ml_collections

from regnet_jax import checkpoint, datasets, input_pipeline, train, train_steps


def restore_state(workdir: str, step: int | None, trainer: train_steps.Trainer
                  ) -> tuple[train_steps.TrainState, ml_collections.ConfigDict, Any]:
  """The train state of checkpoint ``step`` (None: the newest) of ``workdir``, replicated on
  ``trainer``'s devices, with the run's config and model."""
  config = checkpoint.read_config(workdir)
  spec = datasets.get_spec(config.dataset)
  model = train_steps.build_model(config, spec.num_classes)
  schedule = train_steps.learning_rate_schedule(config, 1, 1)
  state = train_steps.create_train_state(
      model, train_steps.create_optimizer(config, schedule), config.seed, spec.image_size)
  ckpt = checkpoint.Checkpointer(workdir, config.keep_checkpoints, create=False)
  step = ckpt.latest_step() if step is None else step
  if step is None:
    raise FileNotFoundError(f"no checkpoint in {ckpt.directory}: train first "
                            f"(python main.py --config=... --workdir={workdir})")
  return ckpt.restore(step, state, trainer.replicated), config, model


def load_from_workdir(workdir: str, step: int | None = None
                      ) -> tuple[Any, dict[str, Any], ml_collections.ConfigDict]:
  """The model, its variables (``params`` and ``batch_stats``) and the run's config."""
  state, config, model = restore_state(workdir, step, train_steps.Trainer(jax.devices()[:1]))
  return model, {"params": state.params, "batch_stats": state.batch_stats}, config


def recompute_batch_stats(trainer: train_steps.Trainer, model: Any, variables: dict[str, Any],
                          config: ml_collections.ConfigDict, num_batches: int) -> Any:
  """Precise BN for a run's model (:func:`train_steps.precise_bn`) over ``num_batches`` of the run's
  own training batches (:func:`train.precise_bn_batches`)."""
  spec = datasets.get_spec(config.dataset)
  builder = input_pipeline.get_builder(config.dataset, config.data_dir)
  return train_steps.precise_bn(trainer, model)(
      variables, train.precise_bn_batches(builder, spec, config), num_batches)


def evaluate_workdir(workdir: str, step: int | None = None, precise_bn_batches: int = 0
                     ) -> dict[str, float]:
  """Evaluates a checkpoint of ``workdir`` on the full eval split; prints and logs the result.

  With ``precise_bn_batches``, BatchNorm statistics are first recomputed over that many
  training batches (:func:`recompute_batch_stats`); the results are then logged as
  ``precise_bn_eval_*``, beside (not over) the running-average ones.
  """
  from clu import metric_writers

  trainer = train_steps.Trainer()
  state, config, model = restore_state(workdir, step, trainer)
  trainer.check_batch_size(config.batch_size)
  builder = input_pipeline.get_builder(config.dataset, config.data_dir)
  spec = datasets.get_spec(config.dataset)
  if precise_bn_batches > 0:
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    state = state.replace(batch_stats=recompute_batch_stats(trainer, model, variables, config,
                                                            precise_bn_batches))
  _, p_eval = trainer.compile_steps(config, train_steps.learning_rate_schedule(config, 1, 1))
  result = train.evaluate(trainer, p_eval, state, builder, spec, config.batch_size)
  step = int(state.step)
  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  prefix = "precise_bn_" if precise_bn_batches > 0 else ""
  writer.write_scalars(step, {prefix + k: v for k, v in result.items()})
  writer.flush()
  if precise_bn_batches > 0:
    print(f"BatchNorm statistics recomputed over {precise_bn_batches} training batches")
  print(f"step {step}: top-1 error {100 * result['eval_top1_error']:.2f}%, top-5 error "
        f"{100 * result['eval_top5_error']:.2f}%, loss {result['eval_loss']:.4f} over "
        f"{int(result['eval_examples'])} examples")
  return result
