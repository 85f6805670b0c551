"""A tiny sweep (2 models x 2 seeds, 6 steps) run as users run it: stopped by SIGTERM during its
second run, continued under a deadline, then finished, with one run started by hand with
main.py and one stopped during its final evaluation. Every run ends exactly as an uninterrupted
one, and finished runs are left untouched. A run that fails does not stop the others."""

import contextlib
import os
import signal
import subprocess
import sys
import types

import pytest

from regnet_jax import data
from regnet_jax.sweep import spec, state
from regnet_jax.sweep.__main__ import main as sweep_main
from regnet_jax.train import loop
from regnet_jax.train.mesh import DataParallel
from tests.conftest import REPO
from tests.train.test_loop import scalars

SWEEP = "tests/sweep/tiny_sweep.py"
# The children skip main.py's re-execution: the tests' XLA flags are its CPU settings already.
ENV = {**os.environ, "REGNET_NO_REEXEC": "1"}


def load(tfds_dir: str, arg: str = "") -> spec.Sweep:
  with contextlib.chdir(REPO):
    return spec.load(f"{SWEEP}{':' + arg if arg else ''}", {"data_dir": tfds_dir})


def sweep_command(command: str, tfds_dir: str, root, *extra: str, arg: str = "") -> list[str]:
  return [sys.executable, "-m", "regnet_jax.sweep", command,
          f"--sweep={SWEEP}{':' + arg if arg else ''}", f"--root={root}", *extra,
          f"--set.data_dir={tfds_dir}"]


@pytest.fixture
def run_sweep(monkeypatch, capsys):
  """``run_sweep(command, tfds_dir, root, *flags, arg=...)``: the sweep command in this process
  (it starts its runs as processes all the same), returning its exit status and output."""
  monkeypatch.chdir(REPO)
  monkeypatch.setenv("REGNET_NO_REEXEC", ENV["REGNET_NO_REEXEC"])

  def run(*args, **kwargs) -> tuple[int, str]:
    capsys.readouterr()
    code = sweep_main(sweep_command(*args, **kwargs)[3:])
    return code, capsys.readouterr().out

  return run


def final(workdir) -> dict:
  """Every step's training loss and the final evaluation, from training's events and
  ``--mode=eval``'s."""
  tags = scalars(str(workdir))
  if os.path.isdir(os.path.join(workdir, "eval")):
    for tag, values in scalars(os.path.join(workdir, "eval")).items():
      tags.setdefault(tag, {}).update(values)
  return {"train_loss": tags["train_loss"], "eval_top1_error": tags["eval_top1_error"][6],
          "eval_loss": tags["eval_loss"][6]}


def snapshot(workdir) -> dict[str, tuple[int, bytes]]:
  """Every file under ``workdir``: its modification time (ns) and contents."""
  out = {}
  for folder, _, files in os.walk(workdir):
    for name in files:
      path = os.path.join(folder, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, workdir)] = (os.stat(path).st_mtime_ns, f.read())
  return out


@pytest.fixture(scope="module")
def references(tfds_dir, tmp_path_factory):
  """Each run of the sweep trained uninterrupted, in this process: its final metrics."""
  root = tmp_path_factory.mktemp("uninterrupted")
  out = {}
  for run in load(tfds_dir).runs:
    loop.train_and_evaluate(run.config, str(root / run.name))
    out[run.name] = final(root / run.name)
  return out


def stop_in_final_evaluation(config, workdir: str) -> None:
  """Trains ``config`` with a SIGINT as its final evaluation starts: the evaluation is
  abandoned and the last step's checkpoint saved without it."""
  real = data.create_source(config, DataParallel().data_sharding)

  def eval_batches():
    for i, batch in enumerate(real.eval_batches()):
      if i == 0:
        os.kill(os.getpid(), signal.SIGINT)  # served by the loop's handler
      yield batch

  loop.train_and_evaluate(config, workdir, source=types.SimpleNamespace(
      steps_per_epoch=real.steps_per_epoch, train_batches=real.train_batches,
      eval_batches=eval_batches))


def test_a_stopped_sweep_run_again_ends_every_run_as_an_uninterrupted_one(references, tfds_dir,
                                                                         tmp_path, run_sweep):
  sweep = load(tfds_dir)
  a0, b0, a1, b1 = sweep.runs
  root = tmp_path / "root"
  workdir = {r.name: root / r.name for r in sweep.runs}
  # A1 was started by hand with main.py, with the sweep's own command line: one step.
  hand = subprocess.run([sys.executable, "main.py", *a1.args, f"--workdir={workdir[a1.name]}",
                         "--deadline_s=0"], cwd=REPO, env=ENV, capture_output=True, text=True,
                        timeout=600)
  assert hand.returncode == 0, hand.stderr[-2000:]
  assert state.checkpoint_step(str(workdir[a1.name])) == 1
  hand_config = (workdir[a1.name] / "config.json").read_text()
  # B1 was stopped as its final evaluation began: its last checkpoint lacks the evaluation.
  stop_in_final_evaluation(b1.config, str(workdir[b1.name]))
  assert state.read(str(workdir[b1.name]), b1.config).missing_evals == (0,)
  later = {r.name: snapshot(workdir[r.name]) for r in (a1, b1)}

  # SIGTERM to the sweep during its second run: passed on, that run stops with a checkpoint.
  proc = subprocess.Popen(sweep_command("run", tfds_dir, root), cwd=REPO, env=ENV, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
  lines = []
  for line in proc.stdout:
    lines.append(line)
    if line.startswith(f"[{b0.name}]") and "[3] " in line and "train_loss" in line:
      proc.send_signal(signal.SIGTERM)
      break
  output = "".join(lines) + proc.stdout.read()
  assert proc.wait(timeout=300) == 75, output[-3000:]
  assert "sweep: SIGTERM: stopping every run with a checkpoint" in output
  assert f"[{b0.name}] stopped (step " in output
  assert "Stopped by SIGTERM at step" in (workdir[b0.name] / state.SWEEP_LOG).read_text()
  stopped_at = state.checkpoint_step(str(workdir[b0.name]))
  assert 4 <= stopped_at <= 6, output[-3000:]
  assert state.read(str(workdir[a0.name]), a0.config).done
  finished = snapshot(workdir[a0.name])
  assert {r.name: snapshot(workdir[r.name]) for r in (a1, b1)} == later  # not started

  # With a deadline of one second: B0 goes on for one step (or evaluates), nothing else starts.
  code, out = run_sweep("run", tfds_dir, root, "--deadline_s=1")
  assert code == 75, out[-3000:]
  assert "sweep: the deadline has passed: starting no more runs" in out
  if stopped_at < 6:
    assert state.checkpoint_step(str(workdir[b0.name])) == stopped_at + 1
    assert "Stopped by the deadline at step" in out
  else:
    assert state.read(str(workdir[b0.name]), b0.config).done
  assert {r.name: snapshot(workdir[r.name]) for r in (a1, b1)} == later

  # Run again: everything finishes; B1 by evaluating its last checkpoint.
  code, out = run_sweep("run", tfds_dir, root)
  assert code == 0, out[-3000:]
  assert out.splitlines()[-1] == "sweep: 4 done"
  for run in sweep.runs:
    assert final(workdir[run.name]) == references[run.name], run.name
  assert snapshot(workdir[a0.name]) == finished
  assert f"--workdir={workdir[b1.name]} --mode=eval --step=6" in out
  # The hand-started run was adopted: the sweep's run wrote main.py's config, and its command.
  assert (workdir[a1.name] / "config.json").read_text() == hand_config
  commands = [r["command"] for r in state.checkpoint.read_runs(str(workdir[a1.name]))]
  assert commands == [" ".join(["main.py", *a1.args, f"--workdir={workdir[a1.name]}",
                                "--deadline_s=0"]),
                      " ".join(["main.py", f"--workdir={workdir[a1.name]}", *a1.args])]

  # Nothing left to do: nothing is started and no file changes.
  before = {r.name: snapshot(workdir[r.name]) for r in sweep.runs}
  code, out = run_sweep("run", tfds_dir, root)
  assert code == 0 and out.splitlines()[1:] == ["sweep: 4 done"], out
  assert {r.name: snapshot(workdir[r.name]) for r in sweep.runs} == before
  _, out = run_sweep("status", tfds_dir, root)
  assert [line.split()[-1] for line in out.splitlines()[2:6]] == ["done"] * 4
  assert out.splitlines()[6] == "4 runs: 4 done"


def test_a_failing_run_is_recorded_and_the_others_go_on(references, tfds_dir, tmp_path,
                                                        run_sweep):
  """A diverging run beside a good one (two at a time): it fails with its error recorded and
  shown by status; the other finishes as it would alone."""
  root = tmp_path / "root"
  code, out = run_sweep("run", tfds_dir, root, "--parallel=2", arg="failing")
  assert code == 1, out[-3000:]
  assert "2 at a time on the CPU" in out.splitlines()[0]
  log = (root / "resnet20-diverge_seed0" / state.SWEEP_LOG).read_text().splitlines()
  error = next(line for line in reversed(log) if line.startswith("error: ")).removeprefix(
      "error: ")
  assert error.startswith("non-finite ")
  assert state.read_record(str(root / "resnet20-diverge_seed0"))[-1]["error"] == error
  assert f"[resnet20-diverge_seed0] failed: {error}" in out
  assert final(root / "resnet20_seed0") == references["resnet20_seed0"]
  status = run_sweep("status", tfds_dir, root, arg="failing")[1].splitlines()
  assert status[2].startswith("resnet20-diverge_seed0 ")
  assert status[2].endswith(f"  failed: {error}")
  assert status[3].startswith("resnet20_seed0 ") and status[3].endswith("  done")
  assert status[4] == "2 runs: 1 done, 1 failed"
