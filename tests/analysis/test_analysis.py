"""The paper's Fig. 1 analyses and the BatchNorm check on a real tiny trained run."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from regnet_jax import models
from regnet_jax.analysis import block_probe, bn_check, feature_maps
from regnet_jax.train import evaluate
from tests.train.test_loop import STEPS, scalars


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
