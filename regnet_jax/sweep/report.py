"""``report``: a sweep's finished runs through ``python -m regnet_jax.analysis.results`` (the
results rows ``OUT/results_NAME.json``, the figures and the tables it prints), then the mean
over seeds with standard errors against each model's baseline and the paper
(:mod:`regnet_jax.analysis.means`), printed and written to ``OUT/table_NAME.md``."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

from regnet_jax.sweep import state
from regnet_jax.sweep.spec import Run


def report(runs: Sequence[Run], root: str, out: str, name: str, label: str) -> None:
  """Reports the done runs of ``runs`` (in ``root``) to ``out`` under ``name``.

  Raises:
    ValueError: no run is done yet.
  """
  import jax

  jax.config.update("jax_platforms", "cpu")  # counting parameters needs no accelerator
  from regnet_jax.analysis import means, results

  done = [r for r in runs if state.read(os.path.join(root, r.name), r.config).done]
  if not done:
    raise ValueError(f"no run of {label} in {root} is done yet (status shows where they are)")
  results.main(["--workdirs", *[os.path.join(root, r.name) for r in done], "--out", out,
                "--name", name])
  with open(os.path.join(out, f"results_{name}.json")) as f:
    rows = json.load(f)
  table = means.markdown(rows)
  with open(os.path.join(out, f"table_{name}.md"), "w") as f:
    f.write(table + "\n")
  print(f"\nMean over seeds ({label}; {os.path.join(out, f'table_{name}.md')}):\n{table}")
  finished = {r.name for r in done}
  missing = [r.name for r in runs if r.name not in finished]
  if missing:
    print(f"\nNot in the tables, not done yet: {', '.join(missing)}")
