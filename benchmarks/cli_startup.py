"""How long each analysis command takes to print its ``--help``, a fresh interpreter each time;
prints a table.

    python -m benchmarks.cli_startup [--repeats 5] [--modules regnet_jax.analysis.results ...]

The commands run in turn, ``--repeats`` rounds; the table gives the median and the slowest wall
time of each, and which heavy packages (JAX, TensorFlow, flax, matplotlib, ...) it imported
(read from one more run under ``python -X importtime``). The first row, ``python -c pass``, is
the interpreter's own start-up on this machine.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

COMMANDS = tuple(f"regnet_jax.analysis.{name}"
                 for name in ("results", "summary", "bn_check", "block_probe", "feature_maps"))
# Packages that take a second or more to import; --help should need none of them.
HEAVY = ("jax", "jaxlib", "flax", "optax", "orbax", "tensorflow", "tensorflow_datasets",
         "tensorboard", "matplotlib", "torch")
BASELINE = "python -c pass"


def run_help(module: str, trace_imports: bool = False) -> tuple[float, set[str]]:
  """Runs ``python -m module --help``: its wall time (s) and, with ``trace_imports``, the
  top-level packages it imported (``-X importtime``), else an empty set.

  Raises:
    RuntimeError: the command failed or printed no usage.
  """
  args = ["-c", "pass"] if module == BASELINE else ["-m", module, "--help"]
  start = time.perf_counter()
  done = subprocess.run([sys.executable, *(["-X", "importtime"] if trace_imports else []),
                         *args], capture_output=True, text=True, timeout=600)
  seconds = time.perf_counter() - start
  if done.returncode != 0 or (module != BASELINE and not done.stdout.startswith("usage: ")):
    raise RuntimeError(f"{module} --help failed (exit status {done.returncode}): "
                       f"{done.stderr.strip()[-500:]}")
  imported = {line.rsplit("|", 1)[1].strip().split(".")[0] for line in done.stderr.splitlines()
              if trace_imports and line.startswith("import time:")}
  return seconds, imported


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--modules", nargs="+", default=list(COMMANDS),
                      help="the commands (python -m MODULE --help) to time")
  parser.add_argument("--repeats", type=int, default=5, help="rounds over the commands")
  args = parser.parse_args(argv)
  names = [BASELINE, *args.modules]
  times: dict[str, list[float]] = {name: [] for name in names}
  for _ in range(args.repeats):
    for name in names:
      times[name].append(run_help(name)[0])
  print(f"# {sys.executable}, {args.repeats} rounds")
  print("| command | median s | max s | heavy imports |")
  print("|---|---|---|---|")
  for name in names:
    heavy = sorted(run_help(name, trace_imports=True)[1] & set(HEAVY))
    print(f"| {name if name == BASELINE else name + ' --help'} | "
          f"{statistics.median(times[name]):.2f} | {max(times[name]):.2f} | "
          f"{', '.join(heavy) or '-'} |")


if __name__ == "__main__":
  main()
