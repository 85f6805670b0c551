"""Fine-tuning (``config.init_from``): the first state takes every parameter and BatchNorm
statistic from the source (the classifier too, unless the class count differs), with a fresh
optimizer; the workdir records its source; a resumed run restores its own checkpoint; a source
that does not fit is refused in one line, naming the parameter, and nothing is written."""

import dataclasses
import json
import shutil

import jax
import numpy as np
import pytest
from flax import traverse_util

from regnet_jax import models
from regnet_jax.data.datasets import IMAGENETTE_CLASSES
from regnet_jax.train import checkpoint, evaluate, factory, init_from, loop, optim, steps, weights
from tests.conftest import TESTDATA
from tests.data.test_folder import write_images
from tests.train.conftest import TRAINED_STEPS
from tests.train.test_loop import tiny_config


def start_state(config, workdir, monkeypatch):
  """The state the loop would start training ``config`` from in ``workdir`` (training
  itself skipped)."""
  monkeypatch.setattr(loop._Run, "train", lambda self, state, *args: state)
  return jax.device_get(loop.train_and_evaluate(config, workdir))


def assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  jax.tree.map(np.testing.assert_array_equal, a, b)


def fresh_state(config, num_classes):
  """The random initial state of ``config``'s model (what a run without init_from starts
  from)."""
  model = factory.build_model(config, num_classes)
  tx = optim.create_optimizer(config, optim.learning_rate_schedule(config, 32, 6))
  return jax.device_get(steps.create_train_state(model, tx, config.seed, 32))


def test_finetuning_onto_another_dataset_starts_from_every_source_variable(
    trained_run, tfds_dir, tmp_path, monkeypatch, caplog):
  """CIFAR-10 -> Imagenette (photos, also 10 classes): at step 0 every parameter, the
  classifier included, and every BatchNorm statistic is the source's; the optimizer is fresh;
  config.json and runs.jsonl say where the run started from."""
  caplog.set_level("INFO")
  config = tiny_config(tfds_dir, dataset="imagenette", init_from=trained_run)
  state = start_state(config, str(tmp_path), monkeypatch)
  _, source, _ = evaluate.load_from_workdir(trained_run)
  assert int(state.step) == 0
  assert_trees_equal(state.params, jax.device_get(source["params"]))
  assert_trees_equal(state.batch_stats, jax.device_get(source["batch_stats"]))
  assert_trees_equal(state.opt_state, fresh_state(config, 10).opt_state)
  assert all(not np.any(x) for x in jax.tree.leaves(state.opt_state))  # momentum: zeros
  assert (f"Initialising from {trained_run} (step {TRAINED_STEPS}): every parameter and "
          "BatchNorm statistic; a fresh optimizer") in caplog.text
  assert checkpoint.read_config(str(tmp_path)).init_from == trained_run
  [run] = checkpoint.read_runs(str(tmp_path))
  assert run["init_from"] == {"path": trained_run, "workdir": trained_run,
                              "step": TRAINED_STEPS,
                              "code": checkpoint.read_runs(trained_run)[-1]["code"],
                              "precise_bn_batches": 0}


def test_finetuning_from_a_file_of_another_class_count_reinitialises_the_classifier(
    trained_run, tfds_dir, tmp_path, monkeypatch, caplog):
  """A 5-class weights file (the trained run's with its classifier cut to 5 classes) onto
  CIFAR-10's 10: every variable but the classifier is the file's; the classifier is the one a
  run without init_from starts with."""
  caplog.set_level("INFO")
  _, variables, info = weights.load_workdir(trained_run)
  variables = jax.device_get(variables)
  fc = variables["params"][models.CLASSIFIER]
  variables["params"][models.CLASSIFIER] = {"kernel": fc["kernel"][:, :5], "bias": fc["bias"][:5]}
  path = str(tmp_path / "five.safetensors")
  weights.write(path, variables, dataclasses.replace(info, num_classes=5,
                                                     class_names=info.class_names[:5]))
  config = tiny_config(tfds_dir, init_from=path)
  state = start_state(config, str(tmp_path / "run"), monkeypatch)
  fresh = fresh_state(config, 10)
  head = state.params.pop(models.CLASSIFIER)
  variables["params"].pop(models.CLASSIFIER)
  assert_trees_equal(state.params, variables["params"])
  assert_trees_equal(state.batch_stats, variables["batch_stats"])
  assert_trees_equal(head, fresh.params[models.CLASSIFIER])
  assert (f"Initialising from {path} (step {TRAINED_STEPS}): every parameter and BatchNorm "
          "statistic but the classifier (fc), re-initialised for 10 classes (the source has 5); "
          "a fresh optimizer") in caplog.text
  [run] = checkpoint.read_runs(str(tmp_path / "run"))
  assert run["init_from"]["path"] == path and run["init_from"]["workdir"] == trained_run


def test_finetuning_onto_a_folder_of_three_classes_keeps_all_but_the_classifier(
    trained_run, tfds_dir, tmp_path, monkeypatch, caplog):
  """CIFAR-10's 10 classes onto a folder of 3 classes of photos (trained at 32 pixels): at
  step 0 every parameter and BatchNorm statistic but the classifier is the source's; the
  classifier is the one a run without init_from starts with, for 3 classes."""
  caplog.set_level("INFO")
  root = tmp_path / "three"
  for split in ("train", "val"):
    write_images(root / split, TESTDATA / "imagenette" / f"{split}-jpeg.npz", IMAGENETTE_CLASSES)
    for name in IMAGENETTE_CLASSES[3:]:
      shutil.rmtree(root / split / name)
  config = tiny_config(tfds_dir, dataset=f"folder:{root}", image_size=32, batch_size=8,
                       init_from=trained_run)
  state = start_state(config, str(tmp_path / "run"), monkeypatch)
  _, source, _ = evaluate.load_from_workdir(trained_run)
  source = jax.device_get(source)
  head = state.params.pop(models.CLASSIFIER)
  source["params"].pop(models.CLASSIFIER)
  assert_trees_equal(state.params, source["params"])
  assert_trees_equal(state.batch_stats, source["batch_stats"])
  assert head["kernel"].shape[-1] == 3
  assert_trees_equal(head, fresh_state(config, 3).params[models.CLASSIFIER])
  assert "but the classifier (fc), re-initialised for 3 classes (the source has 10)" in caplog.text


def shapes(model, num_classes, **model_args):
  """The variables of a CIFAR model of depth 14 (two blocks per stage; shapes only)."""
  net = models.create_model(model, num_classes, **{"depth": 14, **model_args})
  return jax.eval_shape(lambda: net.init(jax.random.PRNGKey(0), np.zeros((1, 32, 32, 3)),
                                         train=False))


@pytest.mark.parametrize("num_classes", [10, 100])
def test_transfer_keeps_the_classifier_unless_the_class_count_differs(num_classes):
  source, fresh = shapes("regnet20_gru", 10), shapes("regnet20_gru", num_classes)
  out = traverse_util.flatten_dict(init_from.transfer(source, fresh, 10, num_classes, "S"))
  src, new = traverse_util.flatten_dict(source), traverse_util.flatten_dict(fresh)
  assert sorted(out) == sorted(new)
  head = {k for k in out if k[:2] == ("params", "fc")}
  assert len(head) == 2 and len(out) > 40
  for name, value in out.items():
    assert value is (new[name] if name in head and num_classes != 10 else src[name]), name


@pytest.mark.parametrize("model, num_classes, args, difference", [
    ("regnet20_gru", 10, {"depth": 20},  # three blocks per stage: two scanned, not one
     "params.stage1.blocks.bn1.bias has shape (1, 16) in S, (2, 16) in this config's model"),
    ("regnet20_gru", 10, {"cell_conv": "dense3x3"},
     "params.stage1.cell.h.bias is in S but not in this config's model"),
    ("resnet20", 100, {}, "params.stage1.block0.bn_fuse.bias is in S but not in this config's "
     "model"),
    ("se_regnet20_gru", 7, {}, "params.stage1.block0.se.expand.kernel is missing from S"),
])
def test_transfer_refuses_any_other_difference_naming_the_parameter(model, num_classes, args,
                                                                    difference):
  with pytest.raises(ValueError) as e:
    init_from.transfer(shapes("regnet20_gru", 10), shapes(model, num_classes, **args), 10,
                       num_classes, "S")
  assert str(e.value) == (f"cannot initialise from S: {difference}; fine-tuning needs the "
                          "source's model and model_args (only the class count may differ)")


def _copy_without_checkpoints(trained_run, tmp_path):
  (tmp_path / "empty").mkdir()
  shutil.copy(f"{trained_run}/config.json", tmp_path / "empty")
  return str(tmp_path / "empty")


@pytest.mark.parametrize("case, error, match", [
    ("missing", FileNotFoundError, r"init_from='{tmp}/nope': no weights file or workdir "
     r"{tmp}/nope; give a file of python -m regnet_jax\.export"),
    ("not a weights file", ValueError, r"init_from='{tmp}/x\.bin': {tmp}/x\.bin is not a weights "
     r"file: it cannot be read as safetensors"),
    ("no checkpoints", FileNotFoundError, r"init_from='{tmp}/empty': no checkpoint in "
     r"{tmp}/empty/checkpoints: train first"),
    ("no such step", FileNotFoundError, r"init_from='{run}:7': no checkpoint 7 in "
     r"{run}/checkpoints; it has steps 3$"),
    ("another model", ValueError, r"cannot initialise from {run}: params\.stage1\.cell\.\w+\.\w+ "
     r"is (missing from|in) {run}"),
])
def test_a_source_that_cannot_be_used_is_refused_in_one_line_and_nothing_is_written(
    trained_run, tfds_dir, tmp_path, case, error, match):
  source = {"missing": str(tmp_path / "nope"), "not a weights file": str(tmp_path / "x.bin"),
            "no checkpoints": _copy_without_checkpoints(trained_run, tmp_path),
            "no such step": f"{trained_run}:7", "another model": trained_run}[case]
  (tmp_path / "x.bin").write_bytes(b"\x00" * 64)
  config = tiny_config(tfds_dir, init_from=source,
                       model="regnet20_lstm" if case == "another model" else "regnet20_gru")
  workdir = tmp_path / "w"
  with pytest.raises(error, match=match.format(tmp=tmp_path, run=trained_run)) as e:
    loop.train_and_evaluate(config, str(workdir))
  assert "\n" not in str(e.value)
  assert not workdir.exists()


def test_a_resumed_finetune_restores_its_own_checkpoint(trained_run, tfds_dir, tmp_path,
                                                         monkeypatch):
  """Fine-tuned for 2 steps from a source that is then deleted, the run resumes from its own
  checkpoint (the source is not read again; no init_from recorded at the resume); another
  source is refused as another recipe."""
  source = tmp_path / "source"
  shutil.copytree(trained_run, source)
  config = tiny_config(tfds_dir, init_from=str(source), num_train_steps=2,
                       checkpoint_every_steps=2)
  trained = jax.device_get(loop.train_and_evaluate(config, str(tmp_path / "run")))
  shutil.rmtree(source)
  state = start_state(config, str(tmp_path / "run"), monkeypatch)
  assert int(state.step) == 2
  assert_trees_equal(state.params, trained.params)
  assert_trees_equal(state.opt_state, trained.opt_state)
  first, resumed = checkpoint.read_runs(str(tmp_path / "run"))
  assert first["init_from"]["step"] == TRAINED_STEPS and "init_from" not in resumed
  with pytest.raises(ValueError, match=r"another recipe \(init_from: '.+/source' -> "
                     r"'.+/other'\)"):
    loop.train_and_evaluate(tiny_config(tfds_dir, init_from=str(tmp_path / "other"),
                                        num_train_steps=2, checkpoint_every_steps=2),
                            str(tmp_path / "run"))
  assert json.loads((tmp_path / "run" / "config.json").read_text())["init_from"] == str(source)
