"""A table of each model's mean test error over its seeds, with its standard error, its
difference to its baseline (the ResNet it adds a regulator to) and the paper's numbers: what
``python -m regnet_jax.sweep report`` prints for a sweep's rows (:mod:`rows`' rows, as
``results_NAME.json`` holds them).

The standard errors come from the seed noise of the rows (:func:`tables.seed_noise`, the
pooled standard deviation of one run over every model trained with several seeds): the mean of
n seeds has ``sd / sqrt(n)``, a difference of two means ``sd * sqrt(1/n + 1/m)``.
"""

from __future__ import annotations

import re
import statistics
from typing import Any

from regnet_jax.analysis import rows as rows_lib
from regnet_jax.analysis import tables


def baseline_model(model: str) -> str:
  """The model without its regulator: ``regnet32_gru`` -> ``resnet32``, ``se_regnet20_lstm``
  -> ``se_resnet20``, ``regnet50`` -> ``resnet50``; a ResNet is its own."""
  return re.sub(r"_(rnn|gru|lstm)$", "", model.replace("regnet", "resnet"))


def markdown(rows: list[dict[str, Any]]) -> str:
  """The table, a line per model (its label: the model and its variant), in the rows' order,
  then the seed noise it used. A model's baseline is the row label that is just
  :func:`baseline_model` of it ("-" where the rows have none)."""
  groups: dict[str, list[dict[str, Any]]] = {}
  for r in rows:
    groups.setdefault(r["label"], []).append(r)
  means = {name: statistics.mean(r["test_error"] for r in group)
           for name, group in groups.items()}
  noise = tables.seed_noise(rows)
  sd = noise[0] if noise else None
  lines = ["| model | seeds | test error % | baseline | vs baseline | paper error % "
           "| paper vs baseline | ours - paper |", "|---|---|---|---|---|---|---|---|"]
  for name, group in groups.items():
    dataset, n = group[0]["dataset"], len(group)
    error = f"{means[name]:.2f}" + (f" ± {sd / n ** 0.5:.2f}" if sd is not None else "")
    base = baseline_model(group[0]["model"])
    paper, paper_base = rows_lib.paper_error(dataset, name), rows_lib.paper_error(dataset, base)
    if base == name or base not in groups:
      versus = "-"
    else:
      m = len(groups[base])
      versus = f"{means[name] - means[base]:+.2f}" + (
          f" ± {sd * (1 / n + 1 / m) ** 0.5:.2f}" if sd is not None else "")
    paper_versus = ("-" if base == name or paper is None or paper_base is None
                    else f"{paper - paper_base:+.2f}")
    lines.append(
        f"| {name} | {', '.join(str(r['seed']) for r in sorted(group, key=lambda r: r['seed']))}"
        f" | {error} | {base if base != name else '-'} | {versus} | "
        f"{f'{paper:.2f}' if paper is not None else '-'} | {paper_versus} | "
        f"{f'{means[name] - paper:+.2f}' if paper is not None else '-'} |")
  if noise is None:
    lines.append("\nNo model has several seeds: no standard errors.")
  else:
    lines.append(f"\n± is one standard error, from the seed noise: the pooled standard "
                 f"deviation of one run, {noise[0]:.2f} points ({noise[1]} degree"
                 f"{'s' * (noise[1] > 1)} of freedom).")
  return "\n".join(lines)
