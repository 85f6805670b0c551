"""A trained workdir as one row of the results table, read from its own files: ``config.json``,
``runs.jsonl`` (what training recorded when it started: steps per epoch, train steps,
parameters, MACs) and the TensorBoard event files. No dataset is read, except for workdirs
whose training started before ``runs.jsonl`` recorded those facts.

A row is a dict (what ``results_NAME.json`` holds, one per run); rows kept from earlier
versions of this module may lack the newer fields, and every reader here accepts them.
"""

from __future__ import annotations

import math
import os
import statistics
from typing import Any

import numpy as np

from regnet_jax.analysis import events
from regnet_jax.models.cells import PAIRINGS
from regnet_jax.train import checkpoint, evaluate

# The paper's test errors (%), Tables I, III, IV and V, keyed by (dataset, label); see label().
PAPER_ERROR = {
    ("cifar10", "resnet20"): 8.38, ("cifar100", "resnet20"): 31.72,
    ("cifar10", "regnet20_rnn"): 7.60, ("cifar100", "regnet20_rnn"): 30.03,
    ("cifar10", "regnet20_gru"): 7.42, ("cifar100", "regnet20_gru"): 29.69,
    ("cifar10", "regnet20_lstm"): 7.28, ("cifar100", "regnet20_lstm"): 29.81,
    ("cifar10", "se_resnet20"): 8.02, ("cifar100", "se_resnet20"): 31.14,
    ("cifar10", "se_regnet20_rnn"): 7.55, ("cifar100", "se_regnet20_rnn"): 29.63,
    ("cifar10", "se_regnet20_gru"): 7.25, ("cifar100", "se_regnet20_gru"): 29.08,
    ("cifar10", "se_regnet20_lstm"): 6.98, ("cifar100", "se_regnet20_lstm"): 29.02,
    ("cifar10", "regnet20_gru dense3x3"): 7.35,
    ("cifar10", "resnet32"): 7.54, ("cifar100", "resnet32"): 29.86,
    ("cifar10", "regnet32_gru"): 6.60, ("cifar100", "regnet32_gru"): 27.42,
    ("cifar10", "regnet32_lstm"): 6.88, ("cifar100", "regnet32_lstm"): 28.11,
    ("cifar10", "resnet56"): 6.78, ("cifar100", "resnet56"): 28.14,
    ("cifar10", "regnet56_gru"): 6.39, ("cifar100", "regnet56_gru"): 27.02,
    ("cifar10", "regnet56_lstm"): 6.45, ("cifar100", "regnet56_lstm"): 27.26,
    ("cifar10", "regnet20_gru stages 1"): 7.52, ("cifar100", "regnet20_gru stages 1"): 30.40,
    ("cifar10", "regnet20_gru stages 2"): 7.48, ("cifar100", "regnet20_gru stages 2"): 30.34,
    ("cifar10", "regnet20_gru stages 3"): 7.49, ("cifar100", "regnet20_gru stages 3"): 30.30,
    ("cifar10", "regnet20_lstm stages 1"): 7.56, ("cifar100", "regnet20_lstm stages 1"): 30.23,
    ("cifar10", "regnet20_lstm stages 2"): 7.49, ("cifar100", "regnet20_lstm stages 2"): 30.28,
    ("cifar10", "regnet20_lstm stages 3"): 7.52, ("cifar100", "regnet20_lstm stages 3"): 29.92,
}

# What training records in runs.jsonl when it starts, for the reports.
FACTS = ("steps_per_epoch", "num_train_steps", "params", "macs")

# Where an evaluation was made: during training (the loop's evaluations, the same way at
# every one), or afterwards by ``main.py --mode=eval`` (its events are in ``workdir/eval``).
EVALUATED = ("training", "eval")


def pairing(config: Any) -> str | None:
  """The light-weight gates' channel pairing of a RegNet's config; None for other models."""
  args = config.get("model_args", {})
  if "regnet" not in config.model or args.get("cell_conv", "light") != "light":
    return None
  return args.get("pairing", "concat")  # configs from before the field ran the literal pairing


def label(config: Any) -> str:
  """The model name plus what the config changes about it (Table I's cell, Table V's stage,
  the cells' sharing) and, for light-weight gates, their channel pairing."""
  args = config.get("model_args", {})
  parts = [config.model]
  if args.get("cell_conv", "light") != "light":
    parts.append(args["cell_conv"])
  if args.get("regulated_stages"):
    parts.append("stages " + ",".join(map(str, args["regulated_stages"])))
  if args.get("cell_sharing", "stage") != "stage":
    parts.append(f"{args['cell_sharing']} cells")
  if pairing(config):
    parts.append(pairing(config))
  return " ".join(parts)


def paper_error(dataset: str, name: str) -> float | None:
  """The paper's error for a row label (the paper has one reading of the gates' pairing)."""
  return PAPER_ERROR.get((dataset, " ".join(w for w in name.split() if w not in PAIRINGS)))


def start_facts(workdir: str, config: Any) -> dict[str, int]:
  """:data:`FACTS` as training recorded them in ``runs.jsonl`` (its newest start that has
  them); for a workdir trained before they were recorded, computed as training computed them,
  from the dataset's metadata and the model.

  Raises:
    ValueError: an older workdir whose dataset is not prepared here.
  """
  for run in reversed(checkpoint.read_runs(workdir)):
    if all(k in run for k in FACTS):
      return {k: run[k] for k in FACTS}
  from regnet_jax import data
  from regnet_jax.data import pipeline
  from regnet_jax.models import counts
  from regnet_jax.train import factory

  try:
    spec = data.get_spec(config)
    dataset = pipeline.open_data(config, download=False)
  except pipeline.DatasetNotFoundError as e:
    raise ValueError(f"{workdir}/{checkpoint.RUNS_FILE} predates the recorded steps per "
                     f"epoch, so they are read from the dataset, which is not here: {e}") from None
  per_epoch = pipeline.steps_per_epoch(dataset, spec, config.batch_size)
  model = factory.build_model(config, spec.num_classes, reference=True)
  return {"steps_per_epoch": per_epoch,
          "num_train_steps": (config.num_train_steps if config.num_train_steps > 0
                              else math.ceil(config.num_epochs * per_epoch)),
          "params": counts.count_params(model, spec.image_size),
          "macs": counts.count_macs(model, spec.image_size)}


def _final_evaluation(by_source: dict[str, events.Scalars], workdir: str
                      ) -> tuple[int, float, str, bool]:
  """The run's last evaluation: its step, top-1 error, where it was made (:data:`EVALUATED`)
  and whether with precise BN only. With the running averages where the run was evaluated so,
  else with precise BN; training's own before ``--mode=eval``'s at the same step."""
  for tag in ("eval_top1_error", "precise_bn_eval_top1_error"):
    found = [(step, -rank, error, source)
             for rank, (source, scalars) in enumerate(by_source.items())
             for step, error, _ in scalars.get(tag, [])]
    if found:
      step, _, error, source = max(found)
      return step, error, source, tag != "eval_top1_error"
  raise ValueError(f"{workdir} has no evaluation in its event files yet")


def _at_step(by_source: dict[str, events.Scalars], tag: str, step: int
             ) -> tuple[float | None, str | None]:
  """``tag``'s value at ``step`` and where it was evaluated (training's first); Nones if none."""
  for source, scalars in by_source.items():
    for s, value, _ in scalars.get(tag, []):
      if s == step:
        return value, source
  return None, None


def summarize(workdir: str) -> dict[str, Any]:
  """One row of the results table for a trained workdir. ``epochs`` and ``step``: the training
  before the row's evaluation; ``test_error`` and ``test_error_precise_bn`` (%) with where each
  was evaluated (``test_error_source``, ``precise_bn_source``: one of :data:`EVALUATED`);
  ``history``: training's curves by epoch."""
  config = checkpoint.read_config(workdir)
  by_source = {"training": events.read_scalars(events.event_files(workdir)),
               "eval": events.read_scalars(events.event_files(
                   os.path.join(workdir, evaluate.EVAL_EVENTS_DIR)))}
  facts = start_facts(workdir, config)
  step, error, source, precise_only = _final_evaluation(by_source, workdir)
  precise, precise_source = _at_step(by_source, "precise_bn_eval_top1_error", step)
  training = by_source["training"]
  speeds = [v for _, v, _ in training.get("train_images_per_sec", [])[1:]]  # [0]: compiling
  per_epoch = facts["steps_per_epoch"]
  name = label(config)

  def by_epoch(tag: str, scale: float) -> list[list[float]]:
    return [[s / per_epoch, scale * v] for s, v, _ in training.get(tag, [])]

  return {
      "workdir": workdir, "label": name, "model": config.model, "dataset": config.dataset,
      "seed": config.seed, "epochs": step / per_epoch, "batch_size": config.batch_size,
      "schedule": config.lr_schedule, "step": step, "steps_per_epoch": per_epoch,
      "num_train_steps": facts["num_train_steps"], "pairing": pairing(config),
      "test_error": 100 * error, "test_error_source": source, "precise_bn_only": precise_only,
      "test_error_precise_bn": 100 * precise if precise is not None else None,
      "precise_bn_source": precise_source,
      "paper_error": paper_error(config.dataset, name),
      "params": facts["params"], "macs": facts["macs"],
      "train_img_s": statistics.median(speeds) if speeds else None,
      "hours": events.training_hours(workdir),
      "runs": checkpoint.read_runs(workdir),  # each start: when, command, code, machine
      # The curves of training's evaluations, by epoch: [[epoch, value], ...]; errors in %.
      "history": {"train_loss": by_epoch("train_loss", 1.0),
                  "test_error": by_epoch("eval_top1_error", 100.0),
                  "precise_bn_test_error": by_epoch("precise_bn_eval_top1_error", 100.0)},
  }


def _length(steps: int, per_epoch: int) -> str:
  """``steps`` in whole epochs where they are, else in steps."""
  if steps % per_epoch == 0:
    return f"{steps // per_epoch} epoch{'s' * (steps != per_epoch)}"
  return f"{steps} step{'s' * (steps != 1)}"


def protocol_label(row: dict[str, Any]) -> str:
  """How long the row's run trained before its evaluation: "20 epochs" where a whole number of
  epochs, else "60 steps"; "(of ...)" adds the planned length of a run stopped before it.
  Rows kept from before steps per epoch were recorded: their config's epochs."""
  per_epoch = row.get("steps_per_epoch")
  if per_epoch is None:
    return f"{row['epochs']:g} epochs"
  text = _length(row["step"], per_epoch)
  if row["num_train_steps"] != row["step"]:
    text += f" (of {_length(row['num_train_steps'], per_epoch)})"
  return text


def protocol(row: dict[str, Any]) -> tuple:
  """What a table's rows must share to be compared: dataset, training length (as
  :func:`protocol_label`), batch size and schedule."""
  return row["dataset"], protocol_label(row), row["batch_size"], row["schedule"]


def merge(kept: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """The kept rows (an earlier ``results_NAME.json``) with the new ones: a new row replaces
  the kept row of the same model, seed and protocol, else it is appended."""
  key = lambda r: (*protocol(r), r["label"], r["seed"])
  rows = {key(r): r for r in kept}
  for r in new:
    rows[key(r)] = r
  return list(rows.values())


def history(row: dict[str, Any], tag: str) -> np.ndarray:
  """``[[epoch, value], ...]`` of one curve of a row (shape ``[n, 2]``, also when n = 0)."""
  return np.array(row.get("history", {}).get(tag, []), dtype=float).reshape(-1, 2)
