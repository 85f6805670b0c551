"""``status``: a line per run of a sweep (done / step N of M / failed: why / not started), its
wall time and an estimate of the time it has left, then the totals.

The wall time is the span of the run's events (from its first logged step to its last event,
evaluations included, summed over its starts; start-up and compilation are not in it). The
estimate is the run's measured time per step (its wall time over the steps it has logged) times
the steps it has left; a run without a measurement of its own takes the mean of the measured
runs of the same model entry (its other seeds).
"""

from __future__ import annotations

import dataclasses
import os
import statistics
from collections.abc import Sequence

from regnet_jax.sweep import state
from regnet_jax.sweep.spec import Run


@dataclasses.dataclass(frozen=True)
class Line:
  """One run's line of the status."""

  run: Run
  current: state.State
  wall_s: float  # wall time of its training processes
  per_step_s: float | None  # measured seconds per step (None: nothing logged yet)

  def text(self) -> str:
    s = self.current
    if s.running:
      return f"step {s.step} of {s.num_steps or '?'}, running"
    if s.done:
      return "done"
    if s.error:
      return f"failed: {s.error}"
    if not s.started:
      return "not started"
    if s.num_steps is not None and s.step >= s.num_steps:
      return f"step {s.step} of {s.num_steps}, final evaluation missing"
    return f"step {s.step} of {s.num_steps or '?'}"


def duration(seconds: float | None) -> str:
  """``42 s``, ``12 min``, ``3.4 h``; ``-`` for None."""
  if seconds is None:
    return "-"
  if seconds < 60:
    return f"{seconds:.0f} s"
  return f"{seconds / 60:.0f} min" if seconds < 3600 else f"{seconds / 3600:.1f} h"


def read(runs: Sequence[Run], root: str) -> list[Line]:
  """Each run's line, from its workdir in ``root``."""
  lines = []
  for run in runs:
    workdir = os.path.join(root, run.name)
    current = state.read(workdir, run.config)
    logged = state.scalars(workdir) if os.path.isdir(workdir) else {}
    wall = 3600 * state.hours(workdir) if logged else 0.0
    steps = max((s for s, _, _ in logged.get("train_loss", [])), default=0)
    lines.append(Line(run, current, wall, wall / steps if steps and wall else None))
  return lines


def left_s(lines: Sequence[Line]) -> dict[str, float | None]:
  """Each unfinished run's estimated time left (None without a rate to go by); failed runs,
  which do not go on by themselves, are left out."""
  rates: dict[str, list[float]] = {}
  for line in lines:
    if line.per_step_s is not None:
      rates.setdefault(line.run.entry, []).append(line.per_step_s)
  out = {}
  for line in lines:
    s = line.current
    if s.done or (s.error and not s.running):
      continue
    rate = line.per_step_s or (statistics.mean(rates[line.run.entry])
                               if line.run.entry in rates else None)
    out[line.run.name] = (None if rate is None or s.num_steps is None
                          else rate * max(s.num_steps - s.step, 0))
  return out


def table(lines: Sequence[Line]) -> str:
  """The status: a line per run (its name, wall time, time left and state), then the counts
  and the total time left."""
  left = left_s(lines)
  width = max(len(line.run.name) for line in lines)
  texts = [line.text() for line in lines]
  out = [f"{'run':<{width}}  {'wall':>7}  {'left':>7}  state"]
  for line, text in zip(lines, texts, strict=True):
    name = line.run.name
    out.append(f"{name:<{width}}  {duration(line.wall_s or None):>7}  "
               f"{duration(left[name]) if name in left else '':>7}  {text}")
  counts = {"done": sum(line.current.done for line in lines),
            "running": sum(line.current.running for line in lines),
            "failed": sum(bool(line.current.error) and not line.current.running
                          and not line.current.done for line in lines),
            "not started": sum(t == "not started" for t in texts)}
  counts["stopped part-way"] = len(lines) - sum(counts.values())
  known = [s for s in left.values() if s is not None]
  out.append(f"{len(lines)} runs: " + ", ".join(f"{n} {what}" for what, n in counts.items()
                                                if n))
  unknown = len(left) - len(known)
  if known:
    out.append(f"time left: about {duration(sum(known))} of training, one run at a time"
               + (f", plus {unknown} run{'s' * (unknown > 1)} without a measured rate yet"
                  if unknown else ""))
  elif unknown:
    out.append("time left: unknown until a run of each model has logged its steps")
  return "\n".join(out)
