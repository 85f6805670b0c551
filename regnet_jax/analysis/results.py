"""The results table, Fig. 4 (test error against parameters) and training curves, read from
trained workdirs (their config.json and TensorBoard event files).

    python -m regnet_jax.analysis.results --workdirs DIR [DIR ...] --out docs/ --name reduced

writes ``OUT/results_NAME.json``, ``OUT/error_vs_params_NAME.png`` and
``OUT/curves_NAME.png``, and prints the Markdown table (paper error beside ours). Each row of
the JSON carries its run's curves, so the JSON is the record that outlives the workdirs:

    python -m regnet_jax.analysis.results --keep docs/results_reduced.json \
        --workdirs NEW_DIR [...] --out docs/ --name reduced

redraws everything from the kept rows plus the new workdirs (a workdir replaces the kept row
of the same model, seed and protocol).

    python -m regnet_jax.analysis.results --compare docs/results_A.json docs/results_B.json

prints the models' mean errors under each of those protocols side by side, each against
ResNet-20's under the same protocol (with the difference's standard error, from the seed noise
of the models trained with several seeds), beside the paper's.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
from typing import Any

import numpy as np

from regnet_jax import console, data, summary
from regnet_jax.data import pipeline
from regnet_jax.models.cells import PAIRINGS
from regnet_jax.train import checkpoint, evaluate, factory

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

Scalars = dict[str, list[tuple[int, float, float]]]


def _read_events(path: str, tags: dict[str, dict[int, tuple[float, float]]]) -> list[float]:
  """Adds one event file's scalars to ``tags`` (``{tag: {step: (value, wall_time)}}``) and
  returns the wall times of its training-run events (not the later ``precise_bn_`` ones)."""
  import tensorflow as tf
  from tensorboard.compat.proto import event_pb2

  times = []
  for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
    event = event_pb2.Event.FromString(record)
    for value in event.summary.value:
      if value.HasField("tensor"):
        array = tf.make_ndarray(value.tensor)
        if array.size != 1 or array.dtype.kind not in "fiu":
          continue  # hparams and text summaries
        number = float(array.reshape(()))
      else:
        number = value.simple_value
      tags.setdefault(value.tag, {})[event.step] = (number, event.wall_time)
      if not value.tag.startswith("precise_bn_"):
        times.append(event.wall_time)
  return times


def _event_files(workdir: str) -> list[str]:
  """The training run's event files (one per process start)."""
  return sorted(glob.glob(os.path.join(workdir, "events.out.tfevents.*")))


def read_scalars(workdir: str) -> Scalars:
  """Every scalar of the workdir's event files, training's and ``--mode=eval``'s:
  ``{tag: [(step, value, wall_time), ...]}``, sorted by step; a step logged twice (a resumed
  run, an evaluation repeated) keeps its last value."""
  found: dict[str, dict[int, tuple[float, float]]] = {}
  evals = glob.glob(os.path.join(workdir, evaluate.EVAL_EVENTS_DIR, "events.out.tfevents.*"))
  for path in _event_files(workdir) + sorted(evals):
    _read_events(path, found)
  return {tag: [(s, v, t) for s, (v, t) in sorted(steps.items())] for tag, steps in found.items()}


def training_hours(workdir: str) -> float:
  """Wall-clock hours of the training processes: each event file (one per process start) from
  its first to its last training event, summed, so time between an interruption and the
  resumed run is not counted."""
  spans = [_read_events(path, {}) for path in _event_files(workdir)]
  return sum(max(t) - min(t) for t in spans if t) / 3600


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


def summarize(workdir: str) -> dict[str, Any]:
  """One row of the results table for a trained workdir."""
  config = checkpoint.read_config(workdir)
  scalars = read_scalars(workdir)
  evaluations = scalars.get("eval_top1_error") or scalars.get("precise_bn_eval_top1_error")
  if not evaluations:
    raise ValueError(f"{workdir} has no evaluation in its event files yet")
  spec = data.get_spec(config.dataset)
  model = factory.build_model(config, spec.num_classes, reference=True)
  speeds = [v for _, v, _ in scalars.get("train_images_per_sec", [])[1:]]  # [0]: compiling
  step, error, _ = evaluations[-1]  # precise BN where the workdir has only that
  precise = [e for s, e, _ in scalars.get("precise_bn_eval_top1_error", []) if s == step]
  name = label(config)
  per_epoch = _steps_per_epoch(config)

  def by_epoch(tag: str, scale: float) -> list[list[float]]:
    return [[s / per_epoch, scale * v] for s, v, _ in scalars.get(tag, [])]

  return {
      "workdir": workdir, "label": name, "model": config.model, "dataset": config.dataset,
      "seed": config.seed, "epochs": config.num_epochs, "batch_size": config.batch_size,
      "schedule": config.lr_schedule, "step": step, "pairing": pairing(config),
      "test_error": 100 * error,
      "precise_bn_only": not scalars.get("eval_top1_error"),
      "test_error_precise_bn": 100 * precise[-1] if precise else None,
      "paper_error": paper_error(config.dataset, name),
      "params": summary.count_params(model, spec.image_size),
      "macs": summary.count_macs(model, spec.image_size),
      "train_img_s": statistics.median(speeds) if speeds else None,
      "hours": training_hours(workdir),
      "runs": checkpoint.read_runs(workdir),  # each start: when, command, code, machine
      # The curves, by epoch: [[epoch, value], ...]; errors in %.
      "history": {"train_loss": by_epoch("train_loss", 1.0),
                  "test_error": by_epoch("eval_top1_error", 100.0),
                  "precise_bn_test_error": by_epoch("precise_bn_eval_top1_error", 100.0)},
  }


def _protocol(row: dict[str, Any]) -> tuple:
  """What a table's rows must share to be compared: dataset, epochs, batch size, schedule."""
  return row["dataset"], row["epochs"], row["batch_size"], row["schedule"]


def _protocol_key(row: dict[str, Any]) -> tuple:
  return (*_protocol(row), row["label"], row["seed"])


def merge(kept: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """The kept rows (an earlier ``results_NAME.json``) with the new ones: a new row replaces
  the kept row of the same model, seed and protocol, else it is appended."""
  rows = {_protocol_key(r): r for r in kept}
  for r in new:
    rows[_protocol_key(r)] = r
  return list(rows.values())


def markdown(rows: list[dict[str, Any]]) -> str:
  """The results table: ours (with the running BatchNorm averages, and with precise BN where
  it was evaluated) beside the paper's 150-epoch error; the delta uses the former."""
  lines = ["| model | seed | params | MACs | test error % | precise-BN error % | paper error % "
           "| ours - paper | train img/s | hours |", "|---|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    paper = r["paper_error"]
    delta = f"{r['test_error'] - paper:+.2f}" if paper is not None else "-"
    speed = f"{r['train_img_s']:.0f}" if r["train_img_s"] else "-"
    precise = r["test_error_precise_bn"]
    lines.append(
        f"| {r['label']} | {r['seed']} | {r['params']:,} | {r['macs'] / 1e6:.1f}M | "
        f"{r['test_error']:.2f}{' (precise BN)' if r.get('precise_bn_only') else ''} | "
        f"{f'{precise:.2f}' if precise is not None else '-'} | "
        f"{f'{paper:.2f}' if paper is not None else '-'} | {delta} | {speed} | "
        f"{r['hours']:.2f} |")
  return "\n".join(lines)


def provenance(rows: list[dict[str, Any]]) -> str:
  """Where each row's run came from: every start of its training process (a resumed run has
  several) with its UTC time, code version, machine and command; rows kept from before
  ``runs.jsonl`` existed show "-"."""
  lines = ["| model | seed | started (UTC) | code | machine | command |",
           "|---|---|---|---|---|---|"]
  for r in rows:
    for run in r.get("runs") or [{}]:
      machine = "; ".join(x for x in (run.get("cpu"), run.get("devices")) if x)
      lines.append(f"| {r['label']} | {r['seed']} | {run.get('started', '-')} | "
                   f"{run.get('code', '-')} | {machine or '-'} | "
                   f"{'`' + run['command'] + '`' if run.get('command') else '-'} |")
  return "\n".join(lines)


def seed_summary(rows: list[dict[str, Any]]) -> str:
  """Models trained with more than one seed: each seed's test error, their mean and range, so
  a difference between models can be read against the spread between seeds."""
  groups: dict[str, list[dict[str, Any]]] = {}
  for r in rows:
    groups.setdefault(r["label"], []).append(r)
  lines = ["| model | seeds | test error % per seed | mean | max - min |", "|---|---|---|---|---|"]
  for name, group in groups.items():
    if len({r["seed"] for r in group}) < 2:
      continue
    group = sorted(group, key=lambda r: r["seed"])
    errors = [r["test_error"] for r in group]
    lines.append(f"| {name} | {', '.join(str(r['seed']) for r in group)} | "
                 f"{', '.join(f'{e:.2f}' for e in errors)} | {statistics.mean(errors):.2f} | "
                 f"{max(errors) - min(errors):.2f} |")
  return "\n".join(lines) if len(lines) > 2 else ""


BASELINE = "resnet20"  # what --compare measures every model against, within a protocol


def seed_noise(rows: list[dict[str, Any]]) -> tuple[float, int] | None:
  """The pooled standard deviation of one run's test error (points) over every model trained
  with several seeds, and its degrees of freedom (runs minus models); None without repeats."""
  groups: dict[str, list[float]] = {}
  for r in rows:
    groups.setdefault(r["label"], []).append(r["test_error"])
  repeated = [g for g in groups.values() if len(g) > 1]
  dof = sum(len(g) - 1 for g in repeated)
  if not dof:
    return None
  squares = sum((e - statistics.mean(g)) ** 2 for g in repeated for e in g)
  return (squares / dof) ** 0.5, dof


def protocol_comparison(tables: list[list[dict[str, Any]]]) -> str:
  """Each model's test error (mean over its seeds) under each protocol (one table of rows, as
  ``results_NAME.json`` holds them), and its difference to ResNet-20's mean under the same
  protocol with that difference's standard error (from the protocol's ``seed_noise``), beside
  the paper's error and difference; then each protocol's seed noise."""
  heads, means, noises, datasets_seen = [], [], [], set()
  for rows in tables:
    protocols = {_protocol(r) for r in rows}
    if len(protocols) != 1:
      raise ValueError(f"a table mixes protocols {sorted(protocols)}; compare one per table")
    dataset, epochs, _, _ = protocols.pop()
    datasets_seen.add(dataset)
    heads.append(f"{epochs:g} epochs")
    groups: dict[str, list[float]] = {}
    for r in rows:
      groups.setdefault(r["label"], []).append(r["test_error"])
    means.append({k: (statistics.mean(v), len(v)) for k, v in groups.items()})
    noises.append(seed_noise(rows))
  if len(datasets_seen) != 1:
    raise ValueError(f"the tables are on different datasets {sorted(datasets_seen)}")
  labels = list(dict.fromkeys(k for m in means for k in m))

  def cell(mean: dict[str, tuple[float, int]], noise: tuple[float, int] | None,
           name: str) -> list[str]:
    if name not in mean:
      return ["-", "-"]
    error, n = mean[name]
    if BASELINE not in mean:
      return [f"{error:.2f} ({n})", "-"]
    delta = f"{error - mean[BASELINE][0]:+.2f}"
    if noise is not None and name != BASELINE:
      delta += f" ± {noise[0] * (1 / n + 1 / mean[BASELINE][1]) ** 0.5:.2f}"
    return [f"{error:.2f} ({n})", delta]

  lines = ["| model | " + " | ".join(f"{h}: error % (seeds) | {h}: vs {BASELINE}" for h in heads)
           + f" | paper error % | paper: vs {BASELINE} |",
           "|---|" + "---|---|" * len(heads) + "---|---|"]
  for name in labels:
    paper, base = paper_error(dataset, name), paper_error(dataset, BASELINE)
    cells = [c for m, noise in zip(means, noises, strict=True) for c in cell(m, noise, name)]
    cells += [f"{paper:.2f}" if paper is not None else "-",
              f"{paper - base:+.2f}" if paper is not None and base is not None else "-"]
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
  lines.append("\nSeed noise, the pooled standard deviation of one run's test error over the "
               "models with several seeds (± above: the difference's standard error from it):")
  for head, noise in zip(heads, noises, strict=True):
    if noise is None:
      lines.append(f"- {head}: no model has several seeds")
    else:
      sd, dof = noise
      lines.append(f"- {head}: {sd:.2f} points, {dof} degree{'s' * (dof > 1)} of freedom")
  return "\n".join(lines)


def _pyplot():
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  return plt


def plot_error_vs_params(rows: list[dict[str, Any]], path: str, title: str) -> None:
  """Fig. 4: test error against parameters, ours (filled) and the paper's (hollow)."""
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(6, 4))
  labels = list(dict.fromkeys(r["label"] for r in rows))  # one colour per model, all seeds
  for r in rows:
    color = f"C{labels.index(r['label']) % 10}"
    ax.scatter(r["params"] / 1e6, r["test_error"], color=color,
               label=f"{r['label']} seed {r['seed']} (ours)")
    if r["paper_error"] is not None:
      ax.scatter(r["params"] / 1e6, r["paper_error"], facecolors="none", edgecolors=color)
  ax.set_xlabel("parameters (M)")
  ax.set_ylabel("test error (%)")
  ax.set_title(title + "\nfilled: ours; hollow: the paper's 150-epoch result", fontsize=9)
  ax.legend(fontsize=7)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def _steps_per_epoch(config: Any) -> float:
  builder = pipeline.get_builder(config.dataset, config.data_dir, download=False)
  return pipeline.steps_per_epoch(builder, data.get_spec(config.dataset), config.batch_size)


def _history(row: dict[str, Any], tag: str) -> np.ndarray:
  """``[[epoch, value], ...]`` of one curve of a row (shape ``[n, 2]``, also when n = 0)."""
  return np.array(row.get("history", {}).get(tag, []), dtype=float).reshape(-1, 2)


def _error_curve(row: dict[str, Any]) -> tuple[np.ndarray, str]:
  """The row's test error curve with precise BN where the run evaluated that way during
  training (not only at the end), else with the running averages, and which it is."""
  precise = _history(row, "precise_bn_test_error")
  if len(precise) > 1:
    return precise, "precise BN"
  return _history(row, "test_error"), "running"


def eval_history(rows: list[dict[str, Any]]) -> str:
  """Each run's test error (%) at every evaluation, by epoch: with precise BN where the run
  evaluated that way during training, and with the running averages; a line each. Rows
  without curves (written before they were recorded) are left out; "" if none has one."""
  histories = []
  for r in rows:
    for tag, kind in (("precise_bn_test_error", "precise BN"), ("test_error", "running")):
      series = _history(r, tag)
      if len(series):
        histories.append((f"{r['label']} (seed {r['seed']}), {kind}",
                          {round(e, 2): v for e, v in series}))
  if not histories:
    return ""
  epochs = sorted({e for _, h in histories for e in h})
  lines = ["| model, statistics | " + " | ".join(f"{e:g}" for e in epochs) + " |",
           "|---|" + "---|" * len(epochs)]
  for name, h in histories:
    lines.append(f"| {name} | " + " | ".join(f"{h[e]:.2f}" if e in h else "-" for e in epochs)
                 + " |")
  return "\n".join(lines)


def plot_curves(rows: list[dict[str, Any]], path: str, title: str) -> None:
  """Training loss and test error against epochs, one colour per row; a run that also
  evaluated with precise BN during training gets that test error as a dashed line."""
  plt = _pyplot()
  from matplotlib.ticker import MaxNLocator

  entries = sum(1 + (_error_curve(r)[1] == "precise BN") for r in rows)
  legend_rows = -(-entries // 3)  # the legend below the plots, three entries a line
  height = 4 + 0.18 * legend_rows
  fig, (loss_ax, err_ax) = plt.subplots(1, 2, figsize=(10, height))
  for i, r in enumerate(rows):
    name, color = f"{r['label']} (seed {r['seed']})", f"C{i % 10}"
    loss, error = _history(r, "train_loss"), _history(r, "test_error")
    if len(loss):  # rows kept from before curves were recorded may lack some
      loss_ax.plot(loss[:, 0], loss[:, 1], color=color, label=name)
    if len(error):
      err_ax.plot(error[:, 0], error[:, 1], marker=".", color=color, label=name)
    precise, kind = _error_curve(r)
    if kind == "precise BN":
      err_ax.plot(precise[:, 0], precise[:, 1], marker="x", linestyle="--", color=color,
                  label=name + ", precise BN")
  loss_ax.set_ylabel("training loss")
  err_ax.set_ylabel("test error (%)")
  for ax in (loss_ax, err_ax):
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(nbins=8, steps=[1, 2, 5, 10]))
    ax.grid(alpha=0.3)
  fig.legend(*err_ax.get_legend_handles_labels(), loc="lower center", ncol=3, fontsize=7,
             frameon=False)
  fig.suptitle(title, fontsize=9)
  fig.tight_layout(rect=(0, 0.18 * legend_rows / height + 0.02, 1, 1))
  fig.savefig(path, dpi=100)
  plt.close(fig)


def _load(path: str) -> list[dict[str, Any]]:
  with open(path) as f:
    return json.load(f)


def main(argv: list[str] | None = None) -> None:
  console.quiet()
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdirs", nargs="+", default=[], help="trained workdirs, a row each")
  parser.add_argument("--keep", metavar="JSON",
                      help="an earlier results_NAME.json whose rows stay in the table")
  parser.add_argument("--compare", nargs="+", metavar="JSON",
                      help="results_NAME.json files, one protocol each: print them side by side")
  parser.add_argument("--out", help="folder for the JSON and PNG files (with --workdirs)")
  parser.add_argument("--name", default="results", help="suffix of the written files")
  parser.add_argument("--title", default="CIFAR-10 (JPEG q75)", help="title of the figures")
  args = parser.parse_args(argv)
  if args.compare:
    if args.workdirs or args.keep:
      parser.error("--compare takes neither --workdirs nor --keep")
    try:
      print(protocol_comparison([_load(path) for path in args.compare]))
    except (ValueError, OSError, KeyError) as e:
      raise SystemExit(f"error: {e}") from None
    return
  if not (args.workdirs or args.keep):
    parser.error("give --workdirs, --keep or --compare")
  if not args.out:
    parser.error("--workdirs and --keep need --out")
  try:
    kept = _load(args.keep) if args.keep else []
    rows = merge(kept, [summarize(w) for w in args.workdirs])
  except (ValueError, OSError, KeyError) as e:
    raise SystemExit(f"error: {e}") from None
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, f"results_{args.name}.json"), "w") as f:
    json.dump(rows, f, indent=2)
  plot_error_vs_params(rows, os.path.join(args.out, f"error_vs_params_{args.name}.png"),
                       args.title)
  plot_curves(rows, os.path.join(args.out, f"curves_{args.name}.png"), args.title)
  print(markdown(rows))
  print("\nRuns:\n" + provenance(rows))
  history = eval_history(rows)
  if history:
    print("\nTest error % by epoch:\n" + history)
  seeds = seed_summary(rows)
  if seeds:
    print("\n" + seeds)

if __name__ == "__main__":
  main()
