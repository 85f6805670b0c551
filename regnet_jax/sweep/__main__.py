"""The sweep command: a paper's table, or any set of models and seeds, in one resumable command.

    python -m regnet_jax.sweep run --sweep=configs/sweeps.py:table3 --root=runs/table3
    python -m regnet_jax.sweep status --sweep=configs/sweeps.py:table3 --root=runs/table3
    python -m regnet_jax.sweep report --sweep=configs/sweeps.py:table3 --root=runs/table3 \
        --out=reports/table3

``run`` trains every unfinished run of the sweep in ``ROOT/<entry>_seed<seed>`` (resuming it
exactly, as main.py does) and skips the finished ones; rerun it after a stop. ``--set.FIELD=
VALUE`` sets a config field of every run (give ``status`` and ``report`` the same).
"""

from __future__ import annotations

import argparse
import os
import sys

from regnet_jax import console
from regnet_jax.sweep import spec

COMMANDS = {
    "run": "train every unfinished run (exit status 0: all done; 75: stopped, run it again; "
           "1: a run failed)",
    "status": "a line per run: done / step N of M / failed: why / not started, wall time, "
              "time left",
    "report": "the results rows, figures and tables of the done runs, and the mean over seeds "
              "against each model's baseline and the paper",
}


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="python -m regnet_jax.sweep",
                                   description=__doc__.split("\n\n")[0])
  commands = parser.add_subparsers(dest="command", required=True)
  for name, text in COMMANDS.items():
    sub = commands.add_parser(name, help=text, description=text, epilog=(
        "--set.FIELD=VALUE (repeatable) sets a config field of every run, as main.py's "
        "--config.FIELD=VALUE does."))
    sub.add_argument("--sweep", required=True, metavar="FILE[:ARG]",
                     help="the sweep file and its argument (configs/sweeps.py:table3)")
    sub.add_argument("--root", required=True, help="the folder of the runs' workdirs")
    if name != "report":
      sub.add_argument("--shard", metavar="I/N", help="only shard I of N (counting from 0); "
                       "run: by default a SLURM array task's own")
    if name == "run":
      sub.add_argument("--deadline_s", type=float, help="stop every run with a checkpoint "
                       "this many seconds after the start; the same command continues")
      sub.add_argument("--parallel", type=int, help="runs side by side (default: one per "
                       "GPU for CIFAR-sized runs on a host with several, else one)")
    if name == "report":
      sub.add_argument("--out", required=True, help="folder for the rows, figures and tables")
      sub.add_argument("--name", help="suffix of the written files (default: the sweep's)")
  return parser


def _sets(extra: list[str], parser: argparse.ArgumentParser) -> dict[str, str]:
  """``--set.FIELD=VALUE`` arguments -> ``{FIELD: VALUE}``; anything else is an error."""
  sets = {}
  for arg in extra:
    field, equals, value = arg.removeprefix("--set.").partition("=")
    if not arg.startswith("--set.") or not equals or not field:
      parser.error(f"unrecognized argument {arg} (config fields: --set.FIELD=VALUE)")
    sets[field] = value
  return sets


def main(argv: list[str] | None = None) -> int:
  console.quiet()
  parser = _parser()
  args, extra = parser.parse_known_args(argv)
  sets = _sets(extra, parser)
  if os.path.exists(args.root) and not os.path.isdir(args.root):
    raise SystemExit(f"error: --root={args.root} is a file; give a folder for the runs' "
                     "workdirs (it is made if missing)")
  try:
    shard = (spec.parse_shard(args.shard) if getattr(args, "shard", None)
             else spec.slurm_shard(dict(os.environ)) if args.command == "run" else None)
    if getattr(args, "parallel", None) is not None and args.parallel < 1:
      raise ValueError(f"--parallel={args.parallel}: give 1 or more runs side by side")
    if getattr(args, "deadline_s", None) is not None and not args.deadline_s > 0:
      raise ValueError(f"--deadline_s={args.deadline_s}: give a positive number of seconds")
    sweep = spec.load(args.sweep, sets)
  except ValueError as e:
    raise SystemExit(f"error: {e}") from None
  runs = sweep.shard(*shard) if shard else sweep.runs
  where = f" shard {shard[0]}/{shard[1]}" if shard else ""
  if args.command == "status":
    from regnet_jax.sweep import status

    print(f"{sweep.label}{where} in {args.root}:")
    print(status.table(status.read(runs, args.root)))
    return 0
  if args.command == "report":
    from regnet_jax.sweep import report

    try:
      report.report(runs, args.root, args.out, args.name or sweep.name, sweep.label)
    except ValueError as e:
      raise SystemExit(f"error: {e}") from None
    return 0
  return _run(args, sweep, runs, where)


def _run(args: argparse.Namespace, sweep: spec.Sweep, runs: tuple[spec.Run, ...],
         where: str) -> int:
  from regnet_jax.sweep import runner

  gpus = runner.local_gpus(dict(os.environ))
  parallel = args.parallel or runner.default_parallel(gpus, [r.config for r in runs])
  devices = (f"{len(gpus)} GPU{'s' * (len(gpus) > 1)}" if gpus else "the CPU")
  print(f"sweep: {sweep.label}{where}: {len(runs)} of {len(sweep.runs)} runs in {args.root}; "
        f"{parallel} at a time on {devices}", flush=True)
  try:
    os.makedirs(args.root, exist_ok=True)
  except OSError as e:
    raise SystemExit(f"error: cannot make --root={args.root}: {e.strerror or e}") from None
  sweeper = runner.Runner(runs, args.root, sweep.import_path, runner.slots(gpus, parallel),
                          args.deadline_s)
  code = sweeper.run()
  outcomes = {k: v for k, v in sweeper.outcomes.items() if v}
  print("sweep: " + "; ".join(f"{len(v)} {k}" + (f" ({', '.join(v)})" if k != "done" else "")
                              for k, v in outcomes.items()), flush=True)
  if code == runner.STOPPED:
    print(f"sweep: stopped by {sweeper.reason}; run the same command to continue", flush=True)
  elif code:
    print("sweep: `status` shows why runs failed; the same command retries them", flush=True)
  return code


if __name__ == "__main__":
  sys.exit(main())
