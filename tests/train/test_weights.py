"""Weights in one file: an exported workdir loads to the same variables and the same logits as
the workdir itself; bad files and workdirs are refused in one line, and nothing is
half-written."""

import dataclasses
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
import safetensors
import safetensors.numpy
import tensorflow_datasets as tfds
from flax import traverse_util

import regnet_jax
from regnet_jax import data
from regnet_jax.train import checkpoint, evaluate, weights
from regnet_jax.train.mesh import DataParallel
from tests.conftest import REPO
from tests.train.conftest import TRAINED_STEPS
from tests.train.test_loop import scalars

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                 "truck"]


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory):
  """``trained_run`` exported by the command line; its output."""
  out = tmp_path_factory.mktemp("export") / "model.safetensors"
  run = subprocess.run([sys.executable, "-m", "regnet_jax.export", f"--workdir={trained_run}",
                        f"--out={out}"], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert run.returncode == 0, run.stderr[-2000:]
  return str(out), run.stdout


def test_the_file_is_plain_safetensors_with_the_model_described(trained_run, exported):
  path, stdout = exported
  assert stdout.startswith(f"Exported step {TRAINED_STEPS} of {trained_run} (regnet20_gru, 10 "
                           f"classes, running BatchNorm averages) to {path} (")
  arrays = safetensors.numpy.load_file(path)
  _, variables, config = evaluate.load_from_workdir(trained_run)
  flat = traverse_util.flatten_dict(jax.device_get(variables), sep="/")
  assert sorted(arrays) == sorted(flat)
  for name, value in flat.items():
    np.testing.assert_array_equal(arrays[name], value)
  with safetensors.safe_open(path, framework="numpy") as f:
    header = f.metadata()
  assert header["format"] == "regnet_jax.weights" and header["version"] == "1"
  _, _, info = regnet_jax.load_pretrained(path)
  spec = data.get_spec("cifar10")
  assert (info.model, info.num_classes, info.dataset, info.image_size) == (
      "regnet20_gru", 10, "cifar10", 32)
  assert info.model_args == {**config.model_args.to_dict(), "regulated_stages": ()}
  assert info.model_args["depth"] == 14 and info.half_precision is False
  assert list(info.class_names) == CIFAR10_NAMES
  assert (info.mean, info.std) == (spec.mean, spec.std)
  assert info.source == {"workdir": trained_run, "step": TRAINED_STEPS,
                         "code": checkpoint.read_runs(trained_run)[-1]["code"],
                         "precise_bn_batches": 0}
  assert info.config.to_dict() == checkpoint.read_config(trained_run).to_dict()


def test_load_pretrained_gives_the_logits_of_evaluating_the_workdir(trained_run, exported,
                                                                     tfds_dir):
  """The exported file's model on the test images: the logits of the workdir's checkpoint,
  bit for bit, and over the whole test split the top-1 error the run logged."""
  model_w, variables_w, config = evaluate.load_from_workdir(trained_run)
  model, variables, info = regnet_jax.load_pretrained(exported[0])
  test = tfds.as_numpy(tfds.load("cifar10", split="test[:16]", data_dir=tfds_dir, batch_size=-1))
  expected = model_w.apply(variables_w, data.normalize(test["image"], config.dataset),
                           train=False)
  logits = model.apply(variables, info.normalize(test["image"]), train=False)
  assert logits.shape == (16, 10)
  np.testing.assert_array_equal(logits, expected)

  dp = DataParallel()
  result = evaluate.evaluate(evaluate.compile_eval_step(dp, model, data.get_spec("cifar10")),
                             dp.replicate(variables), dp,
                             evaluate.eval_source(config, dp).eval_batches())
  logged = scalars(trained_run)
  assert result["eval_examples"] == 200
  # (TensorBoard keeps float32)
  assert np.float32(result["eval_top1_error"]) == logged["eval_top1_error"][TRAINED_STEPS]
  assert result["eval_loss"] == pytest.approx(logged["eval_loss"][TRAINED_STEPS], rel=1e-6)


def test_a_workdir_and_its_export_load_to_the_same_variables(trained_run, exported):
  _, from_workdir, info_w = regnet_jax.load_pretrained(trained_run)
  _, from_file, info_f = regnet_jax.load_pretrained(exported[0])
  assert jax.tree.structure(from_workdir) == jax.tree.structure(from_file)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(from_workdir),
               jax.device_get(from_file))
  assert info_w == info_f
  _, at_step, _ = regnet_jax.load_pretrained(trained_run, step=TRAINED_STEPS)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(at_step),
               jax.device_get(from_workdir))


def test_export_with_precise_bn_holds_the_recomputed_statistics(trained_run, tmp_path):
  info = weights.export(trained_run, str(tmp_path / "m.safetensors"), precise_bn_batches=2)
  assert info.source["precise_bn_batches"] == 2
  _, expected, _ = evaluate.load_from_workdir(trained_run, precise_bn_batches=2)
  _, running, _ = evaluate.load_from_workdir(trained_run)
  _, variables, _ = regnet_jax.load_pretrained(str(tmp_path / "m.safetensors"))
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(variables),
               jax.device_get(expected))
  assert not any(np.array_equal(a, b) for a, b in zip(  # (not the running averages)
      jax.tree.leaves(variables["batch_stats"]), jax.tree.leaves(running["batch_stats"]),
      strict=True))


def _weights_file_with(path, exported, change):
  """``exported`` rewritten to ``path`` with ``change(arrays, metadata)`` applied."""
  with safetensors.safe_open(exported, framework="numpy") as f:
    metadata = f.metadata()
    arrays = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (not a dict)
  change(arrays, metadata)
  safetensors.numpy.save_file(arrays, path, metadata=metadata)
  return path


def _no_checkpoints(workdir, tmp_path):
  shutil.copy(pathlib.Path(workdir, "config.json"), tmp_path / "config.json")
  return str(tmp_path)


@pytest.mark.parametrize("case, error, match", [
    ("missing", FileNotFoundError, r"^no weights file or workdir {tmp}/nope\.safetensors; give a "
     r"file of python -m regnet_jax\.export --workdir=W --out=FILE or a training workdir$"),
    ("not safetensors", ValueError, r"^{tmp}/bad\.safetensors is not a weights file: it cannot "
     r"be read as safetensors \(.+\); export one with python -m regnet_jax\.export"),
    ("not an export", ValueError, r"^{tmp}/other\.safetensors is a safetensors file but not a "
     r"regnet-jax weights file \(its header has no format 'regnet_jax\.weights'\); export one "
     r"with python -m regnet_jax\.export --workdir=W --out=FILE$"),
    ("mismatched shape", ValueError, r"^{tmp}/cut\.safetensors does not fit its own model: "
     r"params\.fc\.bias has shape \(9,\) in the file, \(10,\) in its regnet20_gru; export it "
     r"again with python -m regnet_jax\.export"),
    ("newer version", ValueError, r"^{tmp}/new\.safetensors is a weights file of version 2, "
     r"newer than this regnet-jax reads \(1\); upgrade regnet-jax$"),
    ("incomplete", ValueError, r"^{tmp}/part\.safetensors is an incomplete weights file: its "
     r"header has no mean, std; export it again with python -m regnet_jax\.export"),
    ("no checkpoints", FileNotFoundError, r"^no checkpoint in {tmp}/checkpoints: train first"),
    ("no such step", FileNotFoundError, r"^no checkpoint 7 in .+/checkpoints; it has steps 3$"),
    ("step of a file", ValueError, r"^step=3 is for workdirs; the weights file .+ holds one step"),
])
def test_bad_input_is_refused_in_one_line(trained_run, exported, tmp_path, case, error, match):
  path, step = {
      "missing": lambda: (str(tmp_path / "nope.safetensors"), None),
      "not safetensors": lambda: (str(tmp_path / "bad.safetensors"), None),
      "not an export": lambda: (_weights_file_with(
          str(tmp_path / "other.safetensors"), exported[0], lambda a, m: m.clear()), None),
      "mismatched shape": lambda: (_weights_file_with(
          str(tmp_path / "cut.safetensors"), exported[0],
          lambda a, m: a.update({"params/fc/bias": a["params/fc/bias"][:9]})), None),
      "newer version": lambda: (_weights_file_with(
          str(tmp_path / "new.safetensors"), exported[0],
          lambda a, m: m.update(version="2")), None),
      "incomplete": lambda: (_weights_file_with(
          str(tmp_path / "part.safetensors"), exported[0],
          lambda a, m: (m.pop("mean"), m.pop("std"))), None),
      "no checkpoints": lambda: (_no_checkpoints(trained_run, tmp_path), None),
      "no such step": lambda: (trained_run, 7),
      "step of a file": lambda: (exported[0], TRAINED_STEPS),
  }[case]()
  (tmp_path / "bad.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00not json")
  with pytest.raises(error, match=match.format(tmp=tmp_path)) as e:
    regnet_jax.load_pretrained(path, step)
  assert "\n" not in str(e.value)


def test_export_cli_refuses_in_one_line_and_leaves_the_file_alone(trained_run, tmp_path):
  out = tmp_path / "out" / "model.safetensors"
  out.parent.mkdir()
  out.write_bytes(b"an earlier export")
  run = subprocess.run([sys.executable, "-m", "regnet_jax.export", f"--workdir={trained_run}",
                        "--step=7", f"--out={out}"], cwd=REPO, capture_output=True, text=True,
                       timeout=300)
  assert run.returncode == 1 and "Traceback" not in run.stderr
  assert run.stderr.strip().splitlines()[-1] == (
      f"error: no checkpoint 7 in {trained_run}/checkpoints; it has steps 3"), run.stderr[-2000:]
  assert os.listdir(out.parent) == ["model.safetensors"]
  assert out.read_bytes() == b"an earlier export"


def test_a_failed_write_leaves_no_file_and_keeps_the_old_one(trained_run, exported, tmp_path,
                                                             monkeypatch):
  """The file is written under a temporary name and renamed once complete: a write that fails
  half-way leaves the previous file as it was and no temporary file."""
  out = tmp_path / "model.safetensors"
  out.write_bytes(b"an earlier export")

  def half_written(arrays, filename, metadata=None):
    pathlib.Path(filename).write_bytes(b"half")
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(safetensors.numpy, "save_file", half_written)
  _, variables, info = regnet_jax.load_pretrained(exported[0])
  with pytest.raises(OSError, match=rf"^cannot write {out}: No space left on device$"):
    weights.write(str(out), variables, info)
  assert os.listdir(tmp_path) == ["model.safetensors"]
  assert out.read_bytes() == b"an earlier export"


def test_class_names_unknown_to_tfds_are_left_empty_with_a_warning(trained_run, caplog):
  """Class names are optional: a dataset tfds has no metadata for exports with none."""
  spec = dataclasses.replace(data.get_spec("cifar10"), tfds_name="no_such_dataset",
                             class_names=())
  assert weights.class_names(checkpoint.read_config(trained_run), spec) == ()
  assert "No class names for cifar10 (DatasetNotFoundError: " in caplog.text
