"""The results table, Fig. 4 (test error against parameters) and training curves, read from
trained workdirs (their config.json, runs.jsonl and TensorBoard event files; no dataset).

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

A protocol is named by the training its rows' runs had before their evaluation: "20 epochs",
or "60 steps" where that is not a whole number of epochs. The figures' title names the dataset
and protocol (``--title`` replaces it: the workdir cannot tell an imported JPEG copy of a
dataset from the original, say).
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from regnet_jax import console


def _load(path: str) -> list[dict[str, Any]]:
  with open(path) as f:
    return json.load(f)


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdirs", nargs="+", default=[], help="trained workdirs, a row each")
  parser.add_argument("--keep", metavar="JSON",
                      help="an earlier results_NAME.json whose rows stay in the table")
  parser.add_argument("--compare", nargs="+", metavar="JSON",
                      help="results_NAME.json files, one protocol each: print them side by side")
  parser.add_argument("--out", help="folder for the JSON and PNG files (with --workdirs)")
  parser.add_argument("--name", default="results", help="suffix of the written files")
  parser.add_argument("--title", default=None,
                      help="title of the figures (default: the datasets and protocols)")
  return parser


def _report(rows: list[dict[str, Any]], out: str, name: str, title: str | None) -> None:
  """Writes the JSON and the figures to ``out`` and prints the tables."""
  from regnet_jax.analysis import plots, tables

  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, f"results_{name}.json"), "w") as f:
    json.dump(rows, f, indent=2)
  title = title or plots.default_title(rows)
  plots.plot_error_vs_params(rows, os.path.join(out, f"error_vs_params_{name}.png"), title)
  plots.plot_curves(rows, os.path.join(out, f"curves_{name}.png"), title)
  print(tables.markdown(rows))
  print("\nRuns:\n" + tables.provenance(rows))
  history = tables.eval_history(rows)
  if history:
    print("\nTest error % by epoch:\n" + history)
  seeds = tables.seed_summary(rows)
  if seeds:
    print("\n" + seeds)


def main(argv: list[str] | None = None) -> None:
  console.quiet()
  parser = _parser()
  args = parser.parse_args(argv)
  if args.compare and (args.workdirs or args.keep):
    parser.error("--compare takes neither --workdirs nor --keep")
  if not (args.compare or args.workdirs or args.keep):
    parser.error("give --workdirs, --keep or --compare")
  if not (args.compare or args.out):
    parser.error("--workdirs and --keep need --out")
  # After the flags: --help imports none of JAX, TensorFlow or matplotlib.
  from regnet_jax.analysis import rows as rows_lib
  from regnet_jax.analysis import tables

  try:
    if args.compare:
      print(tables.protocol_comparison([_load(path) for path in args.compare]))
      return
    kept = _load(args.keep) if args.keep else []
    rows = rows_lib.merge(kept, [rows_lib.summarize(w) for w in args.workdirs])
  except (ValueError, OSError, KeyError) as e:
    raise SystemExit(f"error: {e}") from None
  _report(rows, args.out, args.name, args.title)


if __name__ == "__main__":
  main()
