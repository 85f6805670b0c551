"""The results tool: event files read without TensorFlow, a row from a workdir's own files (no
dataset), protocol labels from the steps trained, titles from the dataset, one evaluation
protocol per error column, the published tables regenerated from their kept rows, and every
analysis command's --help without heavy imports."""

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys

import jax
import pytest
from PIL import Image

from benchmarks import cli_startup
from regnet_jax import models
from regnet_jax.analysis import events, plots, results, rows, tables
from regnet_jax.models import counts
from regnet_jax.train import checkpoint, evaluate, factory
from tests.conftest import REPO
from tests.train.test_loop import STEPS, scalars


def _read_with_tensorflow(folder):
  """What :func:`events.read_scalars` reads, read instead by TensorBoard's accumulator through
  TensorFlow's record reader: ``{tag: [(step, value, wall_time), ...]}`` of the numeric
  scalars."""
  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
  from tensorboard.compat import tf

  assert tf.__version__ != "stub"  # TensorFlow's reader, not the stub that events uses
  acc = EventAccumulator(folder, size_guidance={"tensors": 0})
  acc.Reload()
  out = {}
  for tag in acc.Tags()["tensors"]:
    found = [(e.step, tf.make_ndarray(e.tensor_proto), e.wall_time) for e in acc.Tensors(tag)]
    if all(v.size == 1 and v.dtype.kind in "fiu" for _, v, _ in found):
      out[tag] = sorted((s, float(v.reshape(())), t) for s, v, t in found)
  return out


def test_events_read_what_tensorflow_reads_without_importing_it(run):
  ours = events.read_scalars(events.event_files(run))
  assert {"train_loss", "learning_rate", "eval_top1_error",
          "precise_bn_eval_top1_error"} <= ours.keys()
  assert ours == _read_with_tensorflow(run)
  code = ("import sys; from regnet_jax.analysis import events; "
          f"events.read_scalars(events.event_files({run!r})); "
          "print(sorted(m for m in ('tensorflow', 'jax') if m in sys.modules))")
  out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                       check=True)
  assert out.stdout.strip() == "[]"


def _copy(run, to, data_dir=None, facts=True):
  """A copy of the run's workdir (without checkpoints): its config's data_dir replaced, its
  start record without the reports' facts (as training wrote it before recording them)."""
  shutil.copytree(run, to, ignore=shutil.ignore_patterns("checkpoints"))
  if data_dir is not None:
    config = json.loads((to / "config.json").read_text())
    (to / "config.json").write_text(json.dumps({**config, "data_dir": data_dir}))
  if not facts:
    starts = [{k: v for k, v in s.items() if k not in rows.FACTS}
              for s in checkpoint.read_runs(str(to))]
    (to / checkpoint.RUNS_FILE).write_text("".join(json.dumps(s) + "\n" for s in starts))
  return str(to)


def test_training_records_what_reports_need_and_the_row_reads_no_dataset(run, tmp_path):
  [start] = checkpoint.read_runs(run)
  trained = factory.build_model(checkpoint.read_config(run), 10)  # the CPU kernels here
  assert {k: start[k] for k in rows.FACTS} == {
      "steps_per_epoch": 32, "num_train_steps": STEPS,  # 512 training images at batch 16
      "params": counts.count_params(trained, 32),
      # The conventional MACs, whichever implementation trained it.
      "macs": counts.count_macs(models.create_model("regnet20_gru", 10, depth=14), 32)}
  row = rows.summarize(_copy(run, tmp_path / "moved", data_dir=str(tmp_path / "no_data")))
  assert {k: row[k] for k in rows.FACTS} == {k: start[k] for k in rows.FACTS}
  assert row["step"] == STEPS and row["epochs"] == STEPS / 32
  # A workdir trained before the start record had them: computed from the dataset, the same.
  old = _copy(run, tmp_path / "old", facts=False)
  assert rows.summarize(old) == {**rows.summarize(run), "workdir": old,
                                 "runs": checkpoint.read_runs(old)}
  # ... and where its dataset is not prepared, one line says why.
  old_elsewhere = _copy(run, tmp_path / "old_elsewhere", str(tmp_path / "no_data"), facts=False)
  with pytest.raises(SystemExit, match=r"^error: .*runs.jsonl predates the recorded steps per "
                     r"epoch, so they are read from the dataset, which is not here: "):
    results.main(["--workdirs", old_elsewhere, "--out", str(tmp_path)])


def test_results_table_and_figures(run, tmp_path, capsys, monkeypatch):
  reference = scalars(run)  # TensorBoard's own reader
  row = rows.summarize(run)
  assert row["label"] == "regnet20_gru interleave" and row["paper_error"] == 7.42
  assert row["pairing"] == "interleave"
  assert row["test_error"] == pytest.approx(100 * reference["eval_top1_error"][STEPS])
  assert row["test_error_precise_bn"] == pytest.approx(
      100 * reference["precise_bn_eval_top1_error"][STEPS])
  assert row["test_error_source"] == row["precise_bn_source"] == "training"
  # Provenance: the code's commit (this checkout's), the machine and the command.
  head = subprocess.run(["git", "rev-parse", "--short=10", "HEAD"], capture_output=True,
                        text=True, cwd=os.path.dirname(results.__file__)).stdout.strip()
  [start] = row["runs"]
  assert start["code"].removesuffix("+dirty") == (head or start["code"])
  assert start["devices"] == f"{jax.device_count()} x cpu" and start["processes"] == 1
  titles = []
  draw = plots.plot_curves
  monkeypatch.setattr(plots, "plot_curves", lambda r, path, title: (titles.append(title),
                                                                    draw(r, path, title)))
  results.main(["--workdirs", run, "--out", str(tmp_path), "--name", "t"])
  assert titles == ["CIFAR-10, 6 steps"]  # 6 steps: not a whole number of epochs
  out = capsys.readouterr().out
  assert (f"| regnet20_gru interleave | 0 | {row['params']:,} | {row['macs'] / 1e6:.1f}M | "
          f"{row['test_error']:.2f} | {row['test_error_precise_bn']:.2f} | 7.42 | ") in out
  assert f"| regnet20_gru interleave | 0 | {start['started']} | {start['code']} | " in out
  # 32 steps per epoch: evaluations at steps 3 and 6.
  precise = reference["precise_bn_eval_top1_error"]
  assert out.split("Test error % by epoch:\n")[1].splitlines()[:3] == [
      "| model, statistics | 0.09 | 0.19 |", "|---|---|---|",
      f"| regnet20_gru interleave (seed 0), precise BN | {100 * precise[3]:.2f} | "
      f"{100 * precise[6]:.2f} |"]
  saved = json.loads((tmp_path / "results_t.json").read_text())
  assert saved[0]["step"] == STEPS
  assert saved[0]["history"]["precise_bn_test_error"] == [
      [pytest.approx(s / 32), pytest.approx(100 * e)] for s, e in sorted(precise.items())]
  assert [s for s, _ in saved[0]["history"]["train_loss"]] == pytest.approx(
      [s / 32 for s in sorted(reference["train_loss"])])
  assert Image.open(tmp_path / "error_vs_params_t.png").size == (600, 400)
  curves_size = Image.open(tmp_path / "curves_t.png").size
  assert curves_size[0] == 1000 and curves_size[1] > 400  # the legend below the plots
  # The JSON alone redraws everything once the workdir is gone; re-adding the workdir
  # replaces its row instead of duplicating it.
  for extra in ([], ["--workdirs", run]):
    (tmp_path / "curves_t.png").unlink()
    results.main(["--keep", str(tmp_path / "results_t.json"), *extra, "--out", str(tmp_path),
                  "--name", "t", "--title", "given"])
    assert capsys.readouterr().out == out
    assert json.loads((tmp_path / "results_t.json").read_text()) == saved
    assert Image.open(tmp_path / "curves_t.png").size == curves_size
  assert titles[1:] == ["given", "given"]
  results.main(["--compare", str(tmp_path / "results_t.json")])
  assert capsys.readouterr().out.startswith("| model | 6 steps: error % (seeds) | 6 steps: vs ")
  with pytest.raises(SystemExit, match=r"error: .*No such file"):
    results.main(["--keep", str(tmp_path / "missing.json"), "--out", str(tmp_path)])


def test_precise_bn_column_takes_training_evaluations_and_says_when_rows_differ(run, tmp_path):
  """``--mode=eval --precise_bn`` (events in ``workdir/eval``) never replaces the precise-BN
  evaluation made during training; a row that has only that one says so in the table."""
  eval_dir = evaluate.EVAL_EVENTS_DIR
  only_eval = tmp_path / "only_eval"  # training's events gone: only --mode=eval's
  shutil.copytree(run, only_eval, ignore=shutil.ignore_patterns("events.out.tfevents.*"))
  evaluate.evaluate_workdir(str(only_eval), precise_bn_batches=1)
  [(step, separate, _)] = events.read_scalars(events.event_files(str(
      only_eval / eval_dir)))["precise_bn_eval_top1_error"]
  other = rows.summarize(str(only_eval))
  assert other["precise_bn_only"] and other["step"] == step == STEPS
  assert other["test_error"] == other["test_error_precise_bn"] == pytest.approx(100 * separate)
  assert other["test_error_source"] == other["precise_bn_source"] == "eval"
  both = tmp_path / "both"  # training's events, and a --mode=eval --precise_bn of 50% error
  shutil.copytree(run, both, ignore=shutil.ignore_patterns("checkpoints"))
  (both / eval_dir).mkdir()
  _write_events(str(both / eval_dir / "events.out.tfevents.1.a"),
                [("precise_bn_eval_top1_error", STEPS, 0.5, 1.0)])
  row = rows.summarize(str(both))
  in_training = scalars(run)["precise_bn_eval_top1_error"][STEPS]
  assert row["test_error_precise_bn"] == pytest.approx(100 * in_training) != 50
  assert row["precise_bn_source"] == row["test_error_source"] == "training"
  assert row == {**rows.summarize(run), "workdir": str(both)}
  cells = [line.split(" | ")[4:6] for line in tables.markdown([row, other]).splitlines()[2:]]
  assert cells == [
      [f"{row['test_error']:.2f} (during training)",
       f"{100 * in_training:.2f} (during training)"],
      [f"{100 * separate:.2f} (precise BN, main.py --mode=eval)",
       f"{100 * separate:.2f} (main.py --mode=eval)"]]


def _row(label, seed, error, precise, source, precise_source="training"):
  """A row as ``results_NAME.json`` holds it (the fields the tables read)."""
  return {"label": label, "seed": seed, "params": 272570, "macs": 40813184,
          "test_error": error, "test_error_source": source, "precise_bn_only": False,
          "test_error_precise_bn": precise, "precise_bn_source": precise_source,
          "paper_error": 8.38, "train_img_s": 385.4, "hours": 0.49}


def test_each_error_column_says_how_it_was_evaluated_only_when_rows_differ():
  same = [_row("resnet20", 0, 18.0, 17.88, "training"), _row("resnet20", 1, 18.43, None,
                                                               "training")]
  assert tables.markdown(same).splitlines()[2:] == [
      "| resnet20 | 0 | 272,570 | 40.8M | 18.00 | 17.88 | 8.38 | +9.62 | 385 | 0.49 |",
      "| resnet20 | 1 | 272,570 | 40.8M | 18.43 | - | 8.38 | +10.05 | 385 | 0.49 |"]
  mixed = [*same, _row("resnet20", 2, 18.2, 18.1, "training", precise_source="eval")]
  assert [line.split(" | ")[5] for line in tables.markdown(mixed).splitlines()[2:]] == [
      "17.88 (during training)", "-", "18.10 (main.py --mode=eval)"]
  kept = {k: v for k, v in same[0].items() if not k.endswith("source")}  # before the fields
  assert tables.markdown([kept, same[1]]).splitlines()[2].split(" | ")[4:6] == [
      "18.00 (not recorded how)", "17.88"]  # the second row has no precise-BN value


def test_protocol_labels_count_the_steps_trained():
  def row(step, planned, per_epoch=390):
    return {"step": step, "num_train_steps": planned, "steps_per_epoch": per_epoch}

  assert rows.protocol_label(row(60, 60)) == "60 steps"  # num_epochs=150 in its config
  assert rows.protocol_label(row(3900, 3900)) == "10 epochs"
  assert rows.protocol_label(row(390, 390)) == "1 epoch"
  assert rows.protocol_label(row(1, 1)) == "1 step"
  assert rows.protocol_label(row(1170, 58500)) == "3 epochs (of 150 epochs)"  # stopped early
  assert rows.protocol_label(row(400, 58500)) == "400 steps (of 150 epochs)"
  assert rows.protocol_label({"epochs": 5.0, "step": 1950}) == "5 epochs"  # kept from before


def test_figure_titles_name_the_dataset_and_protocol():
  def row(dataset, step):
    return {"dataset": dataset, "step": step, "num_train_steps": step, "steps_per_epoch": 10}

  assert plots.default_title([row("cifar10", 60), row("cifar10", 60)]) == "CIFAR-10, 6 epochs"
  assert plots.default_title([row("imagenette", 5), row("cifar100", 20)]) == (
      "Imagenette, 5 steps; CIFAR-100, 2 epochs")
  assert plots.default_title([row("imagenet2012", 7)]) == "ImageNet, 7 steps"


def _tables(text):
  """The Markdown tables of a printout, each as one string."""
  return [t.rstrip("\n") for t in re.findall(r"(?m)(?:^\|.*\n?)+", text)]


def test_the_published_tables_regenerate_from_their_kept_rows(tmp_path, capsys):
  """docs/results.md's tables of the 10- and 20-epoch protocols and the 5- against 10-epoch
  comparison are what the results command prints from the kept JSON files, and rewriting the
  JSON leaves it byte for byte the same."""
  published = (REPO / "docs" / "results.md").read_text()
  for name, count in (("reduced10", 2), ("reduced20", 3)):  # table, runs (, by epoch)
    kept = REPO / "docs" / f"results_{name}.json"
    results.main(["--keep", str(kept), "--out", str(tmp_path), "--name", name])
    printed = _tables(capsys.readouterr().out)
    assert [t in published for t in printed[:count]] == [True] * count
    assert (tmp_path / f"results_{name}.json").read_text() == kept.read_text()
  results.main(["--compare", str(REPO / "docs" / "results_reduced.json"),
                str(REPO / "docs" / "results_reduced10.json")])
  [comparison] = _tables(capsys.readouterr().out)
  assert comparison in published


def test_merge_replaces_rows_of_the_same_model_seed_and_protocol():
  def row(label, seed, error, epochs=10.0):
    return {"label": label, "seed": seed, "test_error": error, "dataset": "cifar10",
            "epochs": epochs, "batch_size": 128, "schedule": "cosine"}

  kept = [row("resnet20", 0, 18.0), row("regnet20_gru", 0, 18.7), row("resnet20", 0, 22.6, 5.0)]
  new = [row("regnet20_gru", 0, 17.9), row("regnet20_gru", 1, 18.2)]
  assert rows.merge(kept, new) == [row("resnet20", 0, 18.0), row("regnet20_gru", 0, 17.9),
                                   row("resnet20", 0, 22.6, 5.0), row("regnet20_gru", 1, 18.2)]
  # A new run of the same length (3900 steps of 390) replaces a row kept from before steps
  # per epoch were recorded.
  rerun = {**row("resnet20", 0, 17.5, 3900 / 390), "step": 3900, "num_train_steps": 3900,
           "steps_per_epoch": 390}
  assert rows.merge(kept, [rerun])[0] == rerun


def test_labels_name_the_table_variants():
  from tests.train.test_loop import tiny_config

  config = tiny_config(None)
  assert rows.label(config) == "regnet20_gru interleave"  # the light gates' pairing
  assert rows.paper_error("cifar10", "regnet20_gru interleave") == 7.42
  config.model_args.pairing = "concat"
  assert rows.label(config) == "regnet20_gru concat"
  del config.model_args["pairing"]  # a config from before the field: the literal pairing
  assert rows.label(config) == "regnet20_gru concat"
  config.model_args.pairing = "interleave"
  config.model_args.cell_conv = "dense3x3"
  assert rows.label(config) == "regnet20_gru dense3x3"
  assert rows.PAPER_ERROR[("cifar10", rows.label(config))] == 7.35
  config.model_args.cell_conv = "light"
  config.model_args.regulated_stages = (2,)
  assert rows.label(config) == "regnet20_gru stages 2 interleave"


def _write_events(path, events_):
  """A TensorBoard event file of ``(tag, step, value, wall_time)`` scalars."""
  import tensorflow as tf
  from tensorboard.compat.proto import event_pb2, summary_pb2

  with tf.io.TFRecordWriter(path) as writer:
    for tag, step, value, wall_time in events_:
      summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag,
                                                                     simple_value=value)])
      writer.write(event_pb2.Event(wall_time=wall_time, step=step,
                                   summary=summary).SerializeToString())


def test_training_hours_sum_each_process_and_skip_gaps(tmp_path):
  """A run interrupted and resumed: two event files. Hours count each process's span, not the
  gap between them, nor a later precise-BN re-evaluation."""
  first = tmp_path / "events.out.tfevents.1.a"
  _write_events(str(first), [("train_loss", 1, 2.0, 1000.0), ("train_loss", 2, 1.5, 1900.0)])
  _write_events(str(tmp_path / "events.out.tfevents.2.b"),
                [("train_loss", 2, 1.25, 5000.0), ("eval_top1_error", 3, 0.5, 5600.0),
                 ("precise_bn_eval_top1_error", 3, 0.375, 9000.0)])
  assert events.training_hours(str(tmp_path)) == pytest.approx((900 + 600) / 3600)
  expected = {"train_loss": [(1, 2.0, 1000.0), (2, 1.25, 5000.0)],  # resumed value wins
              "eval_top1_error": [(3, 0.5, 5600.0)],
              "precise_bn_eval_top1_error": [(3, 0.375, 9000.0)]}
  assert events.read_scalars(events.event_files(str(tmp_path))) == expected
  # A process killed while writing a record: the file ends where the record was cut short.
  with open(first, "ab") as f:
    f.write(first.read_bytes()[:20])
  assert events.read_scalars(events.event_files(str(tmp_path))) == expected


def test_seed_summary_groups_models_with_several_seeds():
  rows_ = [{"label": "resnet20", "seed": 0, "test_error": 22.6},
           {"label": "regnet20_gru", "seed": 1, "test_error": 23.0},
           {"label": "resnet20", "seed": 1, "test_error": 23.1},
           {"label": "regnet20_gru", "seed": 0, "test_error": 23.5},
           {"label": "regnet20_lstm", "seed": 0, "test_error": 24.9}]
  assert tables.seed_summary(rows_).splitlines()[2:] == [
      "| resnet20 | 0, 1 | 22.60, 23.10 | 22.85 | 0.50 |",
      "| regnet20_gru | 0, 1 | 23.50, 23.00 | 23.25 | 0.50 |"]
  assert tables.seed_summary(rows_[-1:]) == ""


def test_seed_noise_pools_the_models_with_several_seeds():
  rows_ = [{"label": "a", "test_error": 1.0}, {"label": "b", "test_error": 2.0},
           {"label": "a", "test_error": 3.0}, {"label": "b", "test_error": 2.0},
           {"label": "b", "test_error": 5.0}, {"label": "c", "test_error": 9.0}]
  # Squares about each mean: a 1 + 1, b 1 + 1 + 4; degrees of freedom 1 + 2.
  assert tables.seed_noise(rows_) == pytest.approx(((8 / 3) ** 0.5, 3))
  assert tables.seed_noise(rows_[-1:]) is None


def test_protocol_comparison_means_over_seeds_against_resnet20(tmp_path, capsys):
  def row(label, seed, error, epochs):
    return {"label": label, "seed": seed, "test_error": error, "dataset": "cifar10",
            "epochs": epochs, "batch_size": 128, "schedule": "cosine"}

  five = [row("resnet20", 0, 22.6, 5.0), row("resnet20", 1, 23.0, 5.0),
          row("regnet20_gru", 0, 24.0, 5.0), row("se_resnet20", 0, 23.5, 5.0)]
  ten = [row("regnet20_gru", 0, 15.5, 10.0), row("resnet20", 0, 16.0, 10.0)]
  # Seed noise at 5 epochs: ResNet-20's two seeds, sqrt(0.08 / 1) = 0.283; a one-seed mean
  # against a two-seed one has standard error 0.283 * sqrt(1 + 1/2) = 0.35.
  expected = [
      "| resnet20 | 22.80 (2) | +0.00 | 16.00 (1) | +0.00 | 8.38 | +0.00 |",
      "| regnet20_gru | 24.00 (1) | +1.20 ± 0.35 | 15.50 (1) | -0.50 | 7.42 | -0.96 |",
      "| se_resnet20 | 23.50 (1) | +0.70 ± 0.35 | - | - | 8.02 | -0.36 |",
      "",
      "Seed noise, the pooled standard deviation of one run's test error over the models with "
      "several seeds (± above: the difference's standard error from it):",
      "- 5 epochs: 0.28 points, 1 degree of freedom",
      "- 10 epochs: no model has several seeds"]
  lines = tables.protocol_comparison([five, ten]).splitlines()
  assert lines[0].startswith("| model | 5 epochs: error % (seeds) | 5 epochs: vs resnet20 | "
                             "10 epochs: error % (seeds) |")
  assert lines[2:] == expected
  # Without ResNet-20 in a table there is nothing to measure against.
  assert tables.protocol_comparison([ten[:1]]).splitlines()[2] == (
      "| regnet20_gru | 15.50 (1) | - | 7.42 | -0.96 |")
  with pytest.raises(ValueError, match="mixes protocols"):
    tables.protocol_comparison([five + ten])
  with pytest.raises(ValueError, match="different datasets"):
    tables.protocol_comparison([five, [dict(ten[0], dataset="cifar100")]])
  paths = []
  for name, rows_ in (("a", five), ("b", ten)):
    paths.append(str(tmp_path / f"results_{name}.json"))
    pathlib.Path(paths[-1]).write_text(json.dumps(rows_))
  results.main(["--compare", *paths])
  assert capsys.readouterr().out.splitlines()[2:] == expected
  pathlib.Path(paths[0]).write_text(json.dumps(five + ten))
  with pytest.raises(SystemExit, match=r"error: .*mixes protocols"):
    results.main(["--compare", paths[0]])


@pytest.mark.parametrize("command", cli_startup.COMMANDS)
def test_help_imports_nothing_heavy(command):
  """``--help`` prints before JAX, TensorFlow, flax or matplotlib would be imported (its time
  is measured by ``python -m benchmarks.cli_startup``)."""
  _, imported = cli_startup.run_help(command, trace_imports=True)
  assert "regnet_jax" in imported  # the import trace was read
  assert not imported & set(cli_startup.HEAVY)
