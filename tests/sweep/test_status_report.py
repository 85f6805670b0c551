"""``status`` and ``report`` against workdirs whose contents are known exactly: checkpoints,
TensorBoard events with chosen values and wall times, and the sweep's records."""

import json
import os

import pytest

from regnet_jax.sweep import spec, state
from regnet_jax.sweep.__main__ import main as sweep_main
from tests.conftest import REPO

SWEEP = "tests/sweep/tiny_sweep.py"
T0 = 1.8e9  # wall time of the synthetic runs' first event (seconds since 1970)
NAN_ERROR = ("non-finite training loss (nan) in steps 2-2; the last good checkpoint in W is "
             "kept (lower the learning rate?)")


def write_events(workdir, scalars: dict[str, list[tuple[int, float, float]]]) -> None:
  """An event file with ``{tag: [(step, value, wall_time), ...]}``, as training writes them."""
  import tensorflow as tf
  from tensorboard.compat.proto import event_pb2, summary_pb2

  events = sorted((t, step, tag, v) for tag, points in scalars.items() for step, v, t in points)
  with tf.io.TFRecordWriter(os.path.join(workdir, "events.out.tfevents.1800000000.test")) as f:
    for t, step, tag, value in events:
      summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag,
                                                                     simple_value=value)])
      f.write(event_pb2.Event(wall_time=t, step=step, summary=summary).SerializeToString())


def fake_run(root, run: spec.Run, checkpoints=(), losses=(), evaluation=None, records=()):
  """A workdir of ``run`` with checkpoint folders, the train loss of steps 1, 2, ... logged
  at the given wall times (``losses``: [(wall_time, loss), ...]), an evaluation ``(step,
  wall_time, top-1 error)`` and sweep records."""
  workdir = root / run.name
  for step in checkpoints:
    (workdir / "checkpoints" / str(step)).mkdir(parents=True)
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / "config.json").write_text(run.config.to_json(indent=2))
  scalars = {"train_loss": [(s, v, t) for s, (t, v) in enumerate(losses, 1)]}
  if evaluation:
    step, t, error = evaluation
    scalars["eval_top1_error"] = [(step, error, t)]
  if losses or evaluation:
    write_events(str(workdir), scalars)
  for fields in records:
    state.record(str(workdir), **fields)


@pytest.fixture
def tiny(tfds_dir, monkeypatch):
  monkeypatch.chdir(REPO)
  return spec.load(SWEEP, {"data_dir": tfds_dir})


def test_status_lines_states_wall_times_and_time_left(tiny, tmp_path, capsys):
  """Done (550 s of events), stopped at checkpoint 4 of 6 (240 s over 5 logged steps: 48 s a
  step, 2 steps left), failed (the recorded error), and not started (its entry's other seed's
  48 s a step, 6 steps)."""
  a0, b0, a1, _ = tiny.runs
  root = tmp_path / "root"
  fake_run(root, a0, [2, 4, 6], [(T0 + 100 * s, 2.0) for s in range(1, 7)], (6, T0 + 650, 0.3))
  fake_run(root, b0, [2, 4], [(T0 + 60 * s, 2.0) for s in range(1, 6)])
  fake_run(root, a1, records=[{"event": "start"},
                              {"event": "end", "outcome": "failed", "error": NAN_ERROR}])
  assert sweep_main(["status", f"--sweep={SWEEP}", f"--root={root}",
                     f"--set.data_dir={tiny.runs[0].config.data_dir}"]) == 0
  assert capsys.readouterr().out.splitlines() == [
      f"{SWEEP} in {root}:",
      "run                    wall     left  state",
      "resnet20_seed0        9 min           done",
      "regnet20_gru_seed0    4 min    2 min  step 4 of 6",
      f"resnet20_seed1            -           failed: {NAN_ERROR}",
      "regnet20_gru_seed1        -    5 min  not started",
      "4 runs: 1 done, 1 failed, 1 not started, 1 stopped part-way",
      "time left: about 6 min of training, one run at a time"]


def test_a_running_run_and_a_missing_final_evaluation(tiny, tmp_path):
  """A run whose lock a sweep holds is running; a last checkpoint without its evaluation is
  not done (the sweep evaluates it)."""
  from regnet_jax.sweep import status

  a0, b0, *_ = tiny.runs
  root = tmp_path / "root"
  fake_run(root, a0, [6], [(T0 + s, 2.0) for s in range(1, 7)])
  fake_run(root, b0, [2], [(T0 + s, 2.0) for s in range(1, 3)])
  fd = state.lock(str(root / b0.name))
  try:
    lines = status.read(tiny.runs[:2], str(root))
  finally:
    os.close(fd)
  assert [line.text() for line in lines] == ["step 6 of 6, final evaluation missing",
                                             "step 2 of 6, running"]
  assert state.read(str(root / a0.name), a0.config).missing_evals == (0,)
  assert not state.locked(str(root / b0.name))


def test_report_rows_figures_and_the_mean_over_seeds(tiny, tmp_path, capsys):
  """ResNet-20 at 30% and 34% (mean 32), RegNet-20 at 28% and 26% (mean 27): pooled seed
  noise sqrt((2^2 + 2^2 + 1 + 1) / 2) = 2.24, so each mean's standard error is 2.24 / sqrt 2
  = 1.58 and the difference's 2.24 * sqrt(1/2 + 1/2) = 2.24."""
  root, out = tmp_path / "root", tmp_path / "out"
  for run, error in zip(tiny.runs, (0.30, 0.28, 0.34, 0.26), strict=True):
    fake_run(root, run, [6], [(T0 + s, 2.0) for s in range(1, 7)], (6, T0 + 7, error))
  assert sweep_main(["report", f"--sweep={SWEEP}", f"--root={root}", f"--out={out}",
                     f"--set.data_dir={tiny.runs[0].config.data_dir}"]) == 0
  printed = capsys.readouterr().out
  table = [
      "| model | seeds | test error % | baseline | vs baseline | paper error % "
      "| paper vs baseline | ours - paper |",
      "|---|---|---|---|---|---|---|---|",
      "| resnet20 | 0, 1 | 32.00 ± 1.58 | - | - | 8.38 | - | +23.62 |",
      "| regnet20_gru interleave | 0, 1 | 27.00 ± 1.58 | resnet20 | -5.00 ± 2.24 | 7.42 "
      "| -0.96 | +19.58 |",
      "",
      "± is one standard error, from the seed noise: the pooled standard deviation of one "
      "run, 2.24 points (2 degrees of freedom)."]
  assert (out / "table_tiny_sweep.md").read_text().splitlines() == table
  assert "\n".join(table) in printed
  rows = json.loads((out / "results_tiny_sweep.json").read_text())
  assert [(r["label"], r["seed"], round(r["test_error"], 4)) for r in rows] == [  # (float32)
      ("resnet20", 0, 30.0), ("regnet20_gru interleave", 0, 28.0), ("resnet20", 1, 34.0),
      ("regnet20_gru interleave", 1, 26.0)]
  assert "| regnet20_gru interleave | 1 |" in printed  # the results CLI's own table
  assert (out / "error_vs_params_tiny_sweep.png").stat().st_size > 0
  assert (out / "curves_tiny_sweep.png").stat().st_size > 0


def test_report_without_a_done_run_says_so(tiny, tmp_path):
  root = tmp_path / "root"
  fake_run(root, tiny.runs[0], [2], [(T0 + s, 2.0) for s in range(1, 3)])
  with pytest.raises(SystemExit, match=rf"^error: no run of {SWEEP} in {root} is done yet "
                     r"\(status shows where they are\)$"):
    sweep_main(["report", f"--sweep={SWEEP}", f"--root={root}", f"--out={tmp_path / 'out'}",
                f"--set.data_dir={tiny.runs[0].config.data_dir}"])
  assert not (tmp_path / "out").exists()
