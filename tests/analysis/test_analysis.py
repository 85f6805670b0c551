"""The paper's analyses (Fig. 1(a), 1(b), 4, training curves) on a real tiny trained run."""

import json
import os
import pathlib
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from regnet_jax import models
from regnet_jax.analysis import block_probe, bn_check, feature_maps, results
from regnet_jax.models import counts
from regnet_jax.train import checkpoint, evaluate, loop
from regnet_jax.train import steps as train_steps
from tests.train.test_loop import STEPS, scalars, tiny_config


@pytest.fixture(scope="module")
def run(tfds_dir, tmp_path_factory):
  """The tiny RegNet run of tests/train/test_loop.py (same config, so its compiled steps are
  cached), also evaluated half-way, and with precise BN each time."""
  workdir = str(tmp_path_factory.mktemp("analysis_run"))
  loop.train_and_evaluate(tiny_config(tfds_dir, eval_every_steps=STEPS // 2,
                                       eval_precise_bn_batches=1), workdir)
  return workdir


@pytest.mark.parametrize("name", ["resnet20", "regnet20_lstm"])
def test_block_outputs_in_network_order(name):
  """Nine block outputs at 32/16/8 px; GAP + FC on the last one is the model's own logits."""
  model = models.create_model(name, 10)
  x = jax.random.normal(jax.random.key(1), (2, 32, 32, 3))
  variables = jax.jit(lambda: model.init(jax.random.key(0, impl="rbg"), x, train=False))()
  logits, state = jax.jit(lambda v: model.apply(v, x, train=False, mutable=["intermediates"]))(
      variables)
  outs = block_probe.block_outputs(state["intermediates"])
  assert [o.shape[1:] for o in outs] == [(32, 32, 16)] * 3 + [(16, 16, 32)] * 3 + [
      (8, 8, 64)] * 3
  fc = variables["params"]["fc"]
  np.testing.assert_allclose(outs[-1].mean((1, 2)) @ fc["kernel"] + fc["bias"], logits,
                             rtol=1e-5, atol=1e-5)
  hidden = block_probe.block_outputs(state["intermediates"], "hidden", stages=(2,))
  assert len(hidden) == (3 if name.startswith("regnet") else 0)
  labels = jnp.argmax(logits, -1)
  counts = block_probe.probe_counts(model, variables, x, labels, jnp.ones(2), last=3)
  assert counts.tolist()[-1] == 2  # the last block reproduces the model's predictions


def test_block_probe_last_block_is_the_test_accuracy(run, capsys):
  probe = block_probe.probe_workdir(run, last=2, batch_size=64)
  assert probe["blocks"] == [5, 6] and probe["step"] == STEPS  # depth 14: 3 stages of 2
  error = scalars(run)["eval_top1_error"][STEPS]
  assert probe["accuracy"][-1] == pytest.approx(1 - error, abs=1.5 / 200)  # <= 1 tie of 200
  block_probe.main(["--workdirs", run, "--blocks", "1", "--precise_bn", "2"])
  assert "| regnet20_gru | 6 | " in capsys.readouterr().out
  with pytest.raises(SystemExit, match="--blocks=3 must be between 1 and the 2 blocks of "
                     "regnet20_gru's last stage"):
    block_probe.main(["--workdirs", run, "--blocks", "3"])


def test_feature_maps_png(run, tmp_path):
  paths = feature_maps.save_feature_maps(run, str(tmp_path), stage=2, num_images=2)
  assert [os.path.basename(p) for p in paths] == [
      "regnet20_gru_stage2_image0.png", "regnet20_gru_stage2_image1.png"]
  assert Image.open(paths[0]).size == (640, 320)  # 4 columns x 2 blocks at 160 px
  model, variables, _ = evaluate.load_from_workdir(run)
  images = np.random.RandomState(0).randn(1, 32, 32, 3).astype(np.float32)
  maps = feature_maps.stage_maps(model, variables, images, stage=3)
  assert [len(maps[k]) for k in "IHO"] == [2, 2, 2]
  np.testing.assert_array_equal(maps["I"][1], maps["O"][0])  # I of block 2 is O of block 1
  # I of block 1 is the stage's input: the output of stage 2's last block.
  stage2 = feature_maps.stage_maps(model, variables, images, stage=2)
  np.testing.assert_array_equal(maps["I"][0], stage2["O"][-1])
  with pytest.raises(SystemExit, match="--stage=4 must be between 1 and 3"):
    feature_maps.main(["--workdir", run, "--out", str(tmp_path), "--stage", "4"])


def test_results_table_and_figures(run, tmp_path, capsys):
  ours = results.read_scalars(run)
  reference = scalars(run)  # TensorBoard's own reader
  for tag in ("train_loss", "eval_top1_error", "learning_rate"):
    assert {s: v for s, v, _ in ours[tag]} == pytest.approx(reference[tag], rel=1e-7)
  row = results.summarize(run)
  model = train_steps.build_model(checkpoint.read_config(run), 10)
  assert row["label"] == "regnet20_gru interleave" and row["paper_error"] == 7.42
  assert row["pairing"] == "interleave"
  assert row["params"] == counts.count_params(model, 32)
  # The conventional MACs, whichever implementation trained it (the CPU kernels here).
  assert row["macs"] == counts.count_macs(models.create_model("regnet20_gru", 10, depth=14), 32)
  assert row["test_error"] == pytest.approx(100 * reference["eval_top1_error"][STEPS])
  assert row["test_error_precise_bn"] == pytest.approx(
      100 * reference["precise_bn_eval_top1_error"][STEPS])
  # Provenance: the code's commit (this checkout's), the machine and the command.
  head = subprocess.run(["git", "rev-parse", "--short=10", "HEAD"], capture_output=True,
                        text=True, cwd=os.path.dirname(results.__file__)).stdout.strip()
  [start] = row["runs"]
  assert start["code"].removesuffix("+dirty") == (head or start["code"])
  assert start["devices"] == f"{jax.device_count()} x cpu" and start["processes"] == 1
  results.main(["--workdirs", run, "--out", str(tmp_path), "--name", "t"])
  out = capsys.readouterr().out
  assert "| regnet20_gru interleave | 0 |" in out
  assert f"| regnet20_gru interleave | 0 | {start['started']} | {start['code']} | " in out
  # 32 steps per epoch (512 training images at batch 16): evaluations at steps 3 and 6.
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
                  "--name", "t"])
    assert capsys.readouterr().out == out
    assert json.loads((tmp_path / "results_t.json").read_text()) == saved
    assert Image.open(tmp_path / "curves_t.png").size == curves_size
  with pytest.raises(SystemExit, match=r"error: .*No such file"):
    results.main(["--keep", str(tmp_path / "missing.json"), "--out", str(tmp_path)])


def test_merge_replaces_rows_of_the_same_model_seed_and_protocol():
  def row(label, seed, error, epochs=10.0):
    return {"label": label, "seed": seed, "test_error": error, "dataset": "cifar10",
            "epochs": epochs, "batch_size": 128, "schedule": "cosine"}

  kept = [row("resnet20", 0, 18.0), row("regnet20_gru", 0, 18.7), row("resnet20", 0, 22.6, 5.0)]
  new = [row("regnet20_gru", 0, 17.9), row("regnet20_gru", 1, 18.2)]
  assert results.merge(kept, new) == [row("resnet20", 0, 18.0), row("regnet20_gru", 0, 17.9),
                                      row("resnet20", 0, 22.6, 5.0), row("regnet20_gru", 1, 18.2)]


def test_labels_name_the_table_variants():
  config = tiny_config(None)
  assert results.label(config) == "regnet20_gru interleave"  # the light gates' pairing
  assert results.paper_error("cifar10", "regnet20_gru interleave") == 7.42
  config.model_args.pairing = "concat"
  assert results.label(config) == "regnet20_gru concat"
  del config.model_args["pairing"]  # a config from before the field: the literal pairing
  assert results.label(config) == "regnet20_gru concat"
  config.model_args.pairing = "interleave"
  config.model_args.cell_conv = "dense3x3"
  assert results.label(config) == "regnet20_gru dense3x3"
  assert results.PAPER_ERROR[("cifar10", results.label(config))] == 7.35
  config.model_args.cell_conv = "light"
  config.model_args.regulated_stages = (2,)
  assert results.label(config) == "regnet20_gru stages 2 interleave"


def _write_events(path, events):
  """A TensorBoard event file of ``(tag, step, value, wall_time)`` scalars."""
  import tensorflow as tf
  from tensorboard.compat.proto import event_pb2, summary_pb2

  with tf.io.TFRecordWriter(path) as writer:
    for tag, step, value, wall_time in events:
      summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag,
                                                                     simple_value=value)])
      writer.write(event_pb2.Event(wall_time=wall_time, step=step,
                                   summary=summary).SerializeToString())


def test_training_hours_sum_each_process_and_skip_gaps(tmp_path):
  """A run interrupted and resumed: two event files. Hours count each process's span, not the
  gap between them, nor a later precise-BN re-evaluation."""
  _write_events(str(tmp_path / "events.out.tfevents.1.a"),
                [("train_loss", 1, 2.0, 1000.0), ("train_loss", 2, 1.5, 1900.0)])
  _write_events(str(tmp_path / "events.out.tfevents.2.b"),
                [("train_loss", 2, 1.25, 5000.0), ("eval_top1_error", 3, 0.5, 5600.0),
                 ("precise_bn_eval_top1_error", 3, 0.4, 9000.0)])
  assert results.training_hours(str(tmp_path)) == pytest.approx((900 + 600) / 3600)
  scalars = results.read_scalars(str(tmp_path))
  assert scalars["train_loss"] == [(1, 2.0, 1000.0), (2, 1.25, 5000.0)]  # resumed value wins


def test_a_workdir_evaluated_only_with_precise_bn_makes_a_row(run, tmp_path):
  """A run whose only evaluation is ``--mode=eval --precise_bn`` (in ``eval/``): its row takes
  that error and says so; the training events are read as before."""
  import shutil

  copy = tmp_path / "run"
  shutil.copytree(run, copy, ignore=shutil.ignore_patterns("events.out.tfevents.*"))
  evaluate.evaluate_workdir(str(copy), precise_bn_batches=1)
  row = results.summarize(str(copy))
  assert row["precise_bn_only"] and row["test_error"] == row["test_error_precise_bn"]
  assert "(precise BN) |" in results.markdown([row])


def test_seed_summary_groups_models_with_several_seeds():
  rows = [{"label": "resnet20", "seed": 0, "test_error": 22.6},
          {"label": "regnet20_gru", "seed": 1, "test_error": 23.0},
          {"label": "resnet20", "seed": 1, "test_error": 23.1},
          {"label": "regnet20_gru", "seed": 0, "test_error": 23.5},
          {"label": "regnet20_lstm", "seed": 0, "test_error": 24.9}]
  assert results.seed_summary(rows).splitlines()[2:] == [
      "| resnet20 | 0, 1 | 22.60, 23.10 | 22.85 | 0.50 |",
      "| regnet20_gru | 0, 1 | 23.50, 23.00 | 23.25 | 0.50 |"]
  assert results.seed_summary(rows[-1:]) == ""


def test_seed_noise_pools_the_models_with_several_seeds():
  rows = [{"label": "a", "test_error": 1.0}, {"label": "b", "test_error": 2.0},
          {"label": "a", "test_error": 3.0}, {"label": "b", "test_error": 2.0},
          {"label": "b", "test_error": 5.0}, {"label": "c", "test_error": 9.0}]
  # Squares about each mean: a 1 + 1, b 1 + 1 + 4; degrees of freedom 1 + 2.
  assert results.seed_noise(rows) == pytest.approx(((8 / 3) ** 0.5, 3))
  assert results.seed_noise(rows[-1:]) is None


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
  lines = results.protocol_comparison([five, ten]).splitlines()
  assert lines[0].startswith("| model | 5 epochs: error % (seeds) | 5 epochs: vs resnet20 | "
                             "10 epochs: error % (seeds) |")
  assert lines[2:] == expected
  # Without ResNet-20 in a table there is nothing to measure against.
  assert results.protocol_comparison([ten[:1]]).splitlines()[2] == (
      "| regnet20_gru | 15.50 (1) | - | 7.42 | -0.96 |")
  with pytest.raises(ValueError, match="mixes protocols"):
    results.protocol_comparison([five + ten])
  with pytest.raises(ValueError, match="different datasets"):
    results.protocol_comparison([five, [dict(ten[0], dataset="cifar100")]])
  paths = []
  for name, rows in (("a", five), ("b", ten)):
    paths.append(str(tmp_path / f"results_{name}.json"))
    pathlib.Path(paths[-1]).write_text(json.dumps(rows))
  results.main(["--compare", *paths])
  assert capsys.readouterr().out.splitlines()[2:] == expected
  pathlib.Path(paths[0]).write_text(json.dumps(five + ten))
  with pytest.raises(SystemExit, match=r"error: .*mixes protocols"):
    results.main(["--compare", paths[0]])


def test_bn_stats_comparison_exact():
  running = {"a": {"bn": {"mean": np.array([0.0, 1.0]), "var": np.array([1e-13, 4.0])}}}
  precise = {"a": {"bn": {"mean": np.array([0.003, 2.0]), "var": np.array([1e-13, 16.0])}}}
  [row] = bn_check.compare_stats(running, precise, constant_var=1e-8, eps=0.0)
  assert row["layer"] == "a/bn" and row["constant"] == 1 and row["channels"] == 2
  assert row["max_shift"] == pytest.approx(0.003 / np.sqrt(1e-13))
  assert row["max_std_ratio"] == pytest.approx(2.0)
  mixed = bn_check.replace_constant_channels(running, precise, constant_var=1e-8)
  np.testing.assert_array_equal(mixed["a"]["bn"]["mean"], [0.003, 1.0])
  np.testing.assert_array_equal(mixed["a"]["bn"]["var"], [1e-13, 4.0])


def test_bn_check_on_a_run(capsys, run):
  """With every channel counted as constant, the mixed statistics are the precise ones: the
  two test errors must match exactly (replace_constant_channels' selection is tested above)."""
  bn_check.main(["--workdir", run, "--batches", "2", "--all", "--constant_var", "inf"])
  out = capsys.readouterr().out
  assert f"step {STEPS}, precise statistics over 2 training batches" in out
  assert "| stem_bn |" in out and "| stage1/block0/regulator/bn_h |" in out
  errors = dict(line.removeprefix("test error with ").split(" statistics: ")
                for line in out.splitlines() if line.startswith("test error"))
  assert errors["running, constant channels precise"] == errors["precise"]
