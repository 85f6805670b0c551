"""The Markdown tables of the results: one row per run (:mod:`~regnet_jax.analysis.rows`),
their provenance, test error by epoch, the seeds' spread, and protocols side by side."""

from __future__ import annotations

import statistics
from typing import Any

from regnet_jax.analysis import rows as rows_lib

BASELINE = "resnet20"  # what protocol_comparison measures every model against, within a protocol

# How an error column's value was evaluated (rows.EVALUATED; None: the row does not say).
EVALUATED_NOTES = {"training": "during training", "eval": "main.py --mode=eval",
                   None: "not recorded how"}
# An error column -> the row's field that says how it was evaluated.
_EVALUATED_FIELDS = {"test_error": "test_error_source",
                     "test_error_precise_bn": "precise_bn_source"}


def by_label(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
  """The rows grouped by label (the model and its variant), labels in order of appearance."""
  groups: dict[str, list[dict[str, Any]]] = {}
  for r in rows:
    groups.setdefault(r["label"], []).append(r)
  return groups


def evaluated(row: dict[str, Any], column: str) -> str | None:
  """How the row's ``column`` (``'test_error'`` or ``'test_error_precise_bn'``) was
  evaluated: one of ``rows.EVALUATED``, or None where the row does not say."""
  return row.get(_EVALUATED_FIELDS[column])


def _error_cells(rows: list[dict[str, Any]], column: str) -> list[str]:
  """Each row's ``column`` (%), or "-"; where the column's values were not all evaluated the
  same way, each value says how. A test error made with precise BN only says so."""
  ways = {evaluated(r, column) for r in rows if r.get(column) is not None}
  cells = []
  for r in rows:
    if r.get(column) is None:
      cells.append("-")
      continue
    notes = ["precise BN"] if column == "test_error" and r.get("precise_bn_only") else []
    if len(ways) > 1:
      notes.append(EVALUATED_NOTES[evaluated(r, column)])
    cells.append(f"{r[column]:.2f}" + (f" ({', '.join(notes)})" if notes else ""))
  return cells


def markdown(rows: list[dict[str, Any]]) -> str:
  """The results table: ours (with the running BatchNorm averages, and with precise BN where
  it was evaluated) beside the paper's 150-epoch error; the delta uses the former. A column
  whose values were evaluated in different ways (during training, by ``--mode=eval``) says
  how on each row."""
  lines = ["| model | seed | params | MACs | test error % | precise-BN error % | paper error % "
           "| ours - paper | train img/s | hours |", "|---|---|---|---|---|---|---|---|---|---|"]
  columns = zip(rows, _error_cells(rows, "test_error"),
                _error_cells(rows, "test_error_precise_bn"), strict=True)
  for r, error, precise in columns:
    paper = r["paper_error"]
    delta = f"{r['test_error'] - paper:+.2f}" if paper is not None else "-"
    speed = f"{r['train_img_s']:.0f}" if r["train_img_s"] else "-"
    lines.append(
        f"| {r['label']} | {r['seed']} | {r['params']:,} | {r['macs'] / 1e6:.1f}M | {error} | "
        f"{precise} | {f'{paper:.2f}' if paper is not None else '-'} | {delta} | {speed} | "
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


def eval_history(rows: list[dict[str, Any]]) -> str:
  """Each run's test error (%) at every evaluation, by epoch: with precise BN where the run
  evaluated that way during training, and with the running averages; a line each. Rows
  without curves (written before they were recorded) are left out; "" if none has one."""
  histories = []
  for r in rows:
    for tag, kind in (("precise_bn_test_error", "precise BN"), ("test_error", "running")):
      series = rows_lib.history(r, tag)
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


def seed_summary(rows: list[dict[str, Any]]) -> str:
  """Models trained with more than one seed: each seed's test error, their mean and range, so
  a difference between models can be read against the spread between seeds."""
  lines = ["| model | seeds | test error % per seed | mean | max - min |", "|---|---|---|---|---|"]
  for name, group in by_label(rows).items():
    if len({r["seed"] for r in group}) < 2:
      continue
    group = sorted(group, key=lambda r: r["seed"])
    errors = [r["test_error"] for r in group]
    lines.append(f"| {name} | {', '.join(str(r['seed']) for r in group)} | "
                 f"{', '.join(f'{e:.2f}' for e in errors)} | {statistics.mean(errors):.2f} | "
                 f"{max(errors) - min(errors):.2f} |")
  return "\n".join(lines) if len(lines) > 2 else ""


def seed_noise(rows: list[dict[str, Any]]) -> tuple[float, int] | None:
  """The pooled standard deviation of one run's test error (points) over every model trained
  with several seeds, and its degrees of freedom (runs minus models); None without repeats."""
  repeated = [[r["test_error"] for r in g] for g in by_label(rows).values() if len(g) > 1]
  dof = sum(len(g) - 1 for g in repeated)
  if not dof:
    return None
  squares = sum((e - statistics.mean(g)) ** 2 for g in repeated for e in g)
  return (squares / dof) ** 0.5, dof


def _comparison_cells(mean: dict[str, tuple[float, int]], noise: tuple[float, int] | None,
                      name: str) -> list[str]:
  """One protocol's two cells of a model: its mean error (seeds), and its difference to the
  baseline's mean with that difference's standard error."""
  if name not in mean:
    return ["-", "-"]
  error, n = mean[name]
  if BASELINE not in mean:
    return [f"{error:.2f} ({n})", "-"]
  delta = f"{error - mean[BASELINE][0]:+.2f}"
  if noise is not None and name != BASELINE:
    delta += f" ± {noise[0] * (1 / n + 1 / mean[BASELINE][1]) ** 0.5:.2f}"
  return [f"{error:.2f} ({n})", delta]


def protocol_comparison(tables: list[list[dict[str, Any]]]) -> str:
  """Each model's test error (mean over its seeds) under each protocol (one table of rows, as
  ``results_NAME.json`` holds them), and its difference to ResNet-20's mean under the same
  protocol with that difference's standard error (from the protocol's ``seed_noise``), beside
  the paper's error and difference; then each protocol's seed noise. Each protocol is headed
  by its training length (:func:`rows.protocol_label`)."""
  heads, means, noises, datasets_seen = [], [], [], set()
  for rows in tables:
    protocols = {rows_lib.protocol(r) for r in rows}
    if len(protocols) != 1:
      raise ValueError(f"a table mixes protocols {sorted(protocols)}; compare one per table")
    dataset, length, _, _ = protocols.pop()
    datasets_seen.add(dataset)
    heads.append(length)
    means.append({name: (statistics.mean(r["test_error"] for r in group), len(group))
                  for name, group in by_label(rows).items()})
    noises.append(seed_noise(rows))
  if len(datasets_seen) != 1:
    raise ValueError(f"the tables are on different datasets {sorted(datasets_seen)}")
  labels = list(dict.fromkeys(k for m in means for k in m))
  lines = ["| model | " + " | ".join(f"{h}: error % (seeds) | {h}: vs {BASELINE}" for h in heads)
           + f" | paper error % | paper: vs {BASELINE} |",
           "|---|" + "---|---|" * len(heads) + "---|---|"]
  base = rows_lib.paper_error(dataset, BASELINE)
  for name in labels:
    paper = rows_lib.paper_error(dataset, name)
    cells = [c for m, noise in zip(means, noises, strict=True)
             for c in _comparison_cells(m, noise, name)]
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
