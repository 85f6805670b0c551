"""Running a sweep's unfinished runs, each as its own ``main.py`` process, one or several at a
time, and stopping them all with a checkpoint on a signal or at a deadline.

Each run is a child process (``python -m regnet_jax.main``, in a process group of its own): a
run that fails does not stop the others, and it is recorded with its error in its workdir's
``sweep.jsonl``. Its output goes to its workdir's ``sweep.log`` and, each line headed by the
run's name, to the sweep's own output.

Side by side: on a host with several NVIDIA GPUs, runs too small to gain from data parallelism
(32x32 images at batch <= 128: CIFAR) go one per GPU, each process seeing only its GPU
(``CUDA_VISIBLE_DEVICES``) and allocating GPU memory as it needs it
(``XLA_PYTHON_CLIENT_PREALLOCATE=false``); other runs go one at a time on every GPU. A CPU runs
one at a time. ``--parallel=N`` sets the number side by side: the GPUs are split into N equal
groups (or, for more runs than GPUs, shared in turn).

Stopping: SIGTERM or SIGINT to the sweep is passed to every run as SIGTERM (each stops within
a step with a checkpoint), and the sweep exits once they have; so does the sweep's deadline,
which each run also gets as its own ``--deadline_s`` (the time left), and a run still going
:data:`GRACE_S` after it (starting up, evaluating) is sent SIGTERM. A child also gets SIGTERM
when the sweep dies (Linux), so a killed sweep leaves no run training on its own.
"""

from __future__ import annotations

import collections
import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from typing import IO, TYPE_CHECKING

from regnet_jax.sweep import state

if TYPE_CHECKING:
  import ml_collections

  from regnet_jax.sweep.spec import Run

GRACE_S = 60.0  # how long past the deadline a run may take to stop by itself
POLL_S = 0.2  # how often the sweep looks at its runs
STOPPED = 75  # the exit status of a sweep stopped with runs unfinished: run it again
SMALL_IMAGE, SMALL_BATCH = 32, 128  # a run this small goes one per GPU


def local_gpus(env: dict[str, str], nvidia_smi: str = "nvidia-smi") -> list[str]:
  """The NVIDIA GPUs runs may use, as ``CUDA_VISIBLE_DEVICES`` entries, found without touching
  them (this process never starts JAX on a device): ``CUDA_VISIBLE_DEVICES`` where set, else
  ``nvidia-smi -L``'s list; none where ``JAX_PLATFORMS`` puts JAX on the CPU."""
  if env.get("JAX_PLATFORMS", "").split(",")[0].strip() == "cpu":
    return []
  if "CUDA_VISIBLE_DEVICES" in env:
    gpus = []
    for entry in env["CUDA_VISIBLE_DEVICES"].split(","):
      if not entry.strip() or entry.strip().startswith("-"):
        break  # CUDA ignores the entries from an invalid one on
      gpus.append(entry.strip())
    return gpus
  try:
    listing = subprocess.run([nvidia_smi, "-L"], capture_output=True, text=True, timeout=60,
                             check=True).stdout
  except (OSError, subprocess.SubprocessError):
    return []
  return [str(i) for i in range(sum(line.startswith("GPU ") for line in listing.splitlines()))]


def small(config: ml_collections.ConfigDict) -> bool:
  """Whether a run is too small to gain from several GPUs: CIFAR-sized images at batch 128 or
  less."""
  from regnet_jax import data

  return (data.get_spec(config).image_size <= SMALL_IMAGE
          and config.batch_size <= SMALL_BATCH)


def default_parallel(gpus: Sequence[str], configs: Sequence[ml_collections.ConfigDict]) -> int:
  """Runs side by side by default: one per GPU where there are several and every run is
  :func:`small`, else one."""
  return len(gpus) if len(gpus) > 1 and all(small(c) for c in configs) else 1


def slots(gpus: Sequence[str], parallel: int) -> list[dict[str, str]]:
  """The environment each of ``parallel`` side-by-side runs gets (one run: nothing changed)."""
  if parallel == 1:
    return [{}]
  own = {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
  if not gpus:
    return [dict(own) for _ in range(parallel)]
  if parallel <= len(gpus):
    size = len(gpus) // parallel
    return [{**own, "CUDA_VISIBLE_DEVICES": ",".join(gpus[i * size:(i + 1) * size])}
            for i in range(parallel)]
  return [{**own, "CUDA_VISIBLE_DEVICES": gpus[i % len(gpus)]} for i in range(parallel)]


if sys.platform.startswith("linux"):
  _prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before any fork

  def _die_with_parent() -> None:
    _prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: SIGTERM when the sweep dies
else:
  _die_with_parent = None


def error_line(lines: Sequence[str], returncode: int) -> str:
  """Why a process failed, from the last lines of its output: its ``error:`` line, else its
  last line, else how it ended."""
  for line in reversed(lines):
    if line.startswith("error: "):
      return line.removeprefix("error: ")
  if returncode < 0:
    return f"killed by {signal.Signals(-returncode).name}"
  return next((line for line in reversed(lines) if line.strip()), f"exit status {returncode}")


class _Job:
  """A run's processes, one after the other: training, or the evaluations its last
  checkpoint lacks."""

  def __init__(self, run: Run, workdir: str, commands: list[list[str]], env: dict[str, str],
               lock_fd: int, out: IO[str], out_lock: threading.Lock):
    self.run, self.workdir, self.commands, self.env = run, workdir, commands, env
    self.lock_fd, self.out, self.out_lock = lock_fd, out, out_lock
    self.tail: collections.deque[str] = collections.deque(maxlen=40)
    self.returncodes: list[int] = []
    self.signalled = False
    self.started = time.monotonic()
    self._start(commands[0])

  def _start(self, command: list[str]) -> None:
    self.log = open(os.path.join(self.workdir, state.SWEEP_LOG), "ab")  # noqa: SIM115
    self.log.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(command)}\n".encode())
    self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 env=self.env, start_new_session=True,
                                 preexec_fn=_die_with_parent, pass_fds=(self.lock_fd,))
    self.reader = threading.Thread(target=self._read, daemon=True)
    self.reader.start()
    state.record(self.workdir, event="start", host=socket.gethostname(), pid=self.proc.pid,
                 command=" ".join(command))
    self.say(f"started: {' '.join(command)}")

  def _read(self) -> None:
    for raw in self.proc.stdout:
      self.log.write(raw)
      text = raw.decode(errors="replace").rstrip()
      self.tail.append(text)
      self.say(text)

  def say(self, text: str) -> None:
    with self.out_lock:
      print(f"[{self.run.name}] {text}", file=self.out, flush=True)

  def poll(self) -> bool:
    """Whether every process has ended (the next one is started when one ends well)."""
    if self.proc.poll() is None:
      return False
    self.reader.join()
    self.log.close()
    self.returncodes.append(self.proc.returncode)
    more = len(self.returncodes) < len(self.commands)
    if self.proc.returncode == 0 and more and not self.signalled:
      self._start(self.commands[len(self.returncodes)])
      return False
    return True

  def terminate(self) -> None:
    """SIGTERM, once: the run stops within a step with a checkpoint."""
    if not self.signalled and self.proc.poll() is None:
      self.proc.send_signal(signal.SIGTERM)
    self.signalled = True


class Runner:
  """Runs a shard's runs in ``root`` with ``slots`` of them side by side."""

  def __init__(self, runs: Sequence[Run], root: str, import_path: str,
               slot_envs: list[dict[str, str]], deadline_s: float | None = None,
               out: IO[str] | None = None):
    self.pending = collections.deque(runs)
    self.root, self.out = root, out or sys.stdout
    self.free = list(slot_envs)
    self.jobs: dict[_Job, dict[str, str]] = {}
    self.begin = time.monotonic()
    self.deadline = None if deadline_s is None else self.begin + deadline_s
    self.signal: str | None = None
    self.reason: str | None = None  # why the sweep is stopping
    self.outcomes: dict[str, list[str]] = collections.defaultdict(list)
    self.out_lock = threading.Lock()
    pythonpath = [import_path, *filter(None, [os.environ.get("PYTHONPATH")])]
    self.env = {**os.environ, "PYTHONPATH": os.pathsep.join(pythonpath),
                "PYTHONUNBUFFERED": "1"}

  def say(self, text: str) -> None:
    with self.out_lock:
      print(f"sweep: {text}", file=self.out, flush=True)

  def run(self) -> int:
    """Runs until every run has ended or the sweep is stopped; returns the exit status: 0 when
    every run is done, :data:`STOPPED` when stopped before, 1 when a run failed."""
    previous = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
      while True:
        self._check_stop()
        while self.free and self.pending and self.reason is None:
          self._start(self.pending.popleft())
        if not self.jobs and (self.reason is not None or not self.pending):
          break
        for job in [j for j in self.jobs if j.poll()]:
          self._finish(job)
        time.sleep(POLL_S)
    finally:
      for s, handler in previous.items():
        signal.signal(s, handler)
    self.outcomes["not started"] += [r.name for r in self.pending]
    if self.reason is not None and (self.outcomes["stopped"] or self.pending):
      return STOPPED
    return 1 if self.outcomes["failed"] else 0

  def _handle(self, signum: int, frame: object) -> None:
    del frame
    self.signal = self.signal or signal.Signals(signum).name

  def _check_stop(self) -> None:
    now = time.monotonic()
    if self.reason is None and self.signal is not None:
      self.reason = self.signal
      self.say(f"{self.signal}: stopping every run with a checkpoint")
    if self.reason is None and self.deadline is not None and now >= self.deadline:
      self.reason = "the deadline"
      self.say("the deadline has passed: starting no more runs")
    if self.reason is not None and (self.reason != "the deadline"
                                    or now >= self.deadline + GRACE_S):
      for job in self.jobs:
        job.terminate()

  def _commands(self, run: Run, workdir: str, current: state.State) -> list[list[str]]:
    """Training (resuming), or the evaluations a finished run's last checkpoint lacks."""
    main = [sys.executable, "-m", "regnet_jax.main", f"--workdir={workdir}"]
    if current.num_steps is not None and current.step >= current.num_steps:
      return [[*main, "--mode=eval", f"--step={current.step}"]
              + ([f"--precise_bn={n}"] if n else []) for n in current.missing_evals]
    deadline = ([] if self.deadline is None else
                [f"--deadline_s={max(self.deadline - time.monotonic(), 0.0):.1f}"])
    return [[*main, *run.args, *deadline]]

  def _start(self, run: Run) -> None:
    workdir = os.path.join(self.root, run.name)
    if state.read(workdir, run.config).done:
      self.outcomes["done"].append(run.name)
      return
    try:
      fd = state.lock(workdir)
    except OSError as e:
      self.outcomes["failed"].append(run.name)
      self.say(f"{run.name}: failed: cannot use the workdir {workdir}: {e.strerror or e}")
      return
    if fd is None:
      self.outcomes["running elsewhere"].append(run.name)
      self.say(f"{run.name}: skipped, another sweep is running it")
      return
    current = state.read(workdir, run.config)  # (another sweep may have finished it)
    if current.done:
      os.close(fd)
      self.outcomes["done"].append(run.name)
      return
    env = {**self.env, **self.free[0]}
    job = _Job(run, workdir, self._commands(run, workdir, current), env, fd, self.out,
               self.out_lock)
    self.jobs[job] = self.free.pop(0)

  def _finish(self, job: _Job) -> None:
    self.free.append(self.jobs.pop(job))
    os.close(job.lock_fd)
    workdir, name = job.workdir, job.run.name
    current = state.read(workdir, job.run.config)
    failed = next((rc for rc in job.returncodes if rc != 0), None)
    minutes = (time.monotonic() - job.started) / 60
    of = f"step {current.step} of {current.num_steps or '?'}"
    if current.done:
      outcome, error = "done", None
    elif failed is None or job.signalled:
      outcome, error = "stopped", None
    else:
      outcome, error = "failed", error_line(list(job.tail), failed)
    state.record(workdir, event="end", outcome=outcome, step=current.step,
                 returncodes=job.returncodes, **({"error": error} if error else {}))
    self.outcomes[outcome].append(name)
    job.say(f"{outcome}{': ' + error if error else ''} ({of}, {minutes:.1f} min)")
