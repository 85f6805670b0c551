"""The guard on resuming: a different recipe is refused, naming each field, unless allowed on
purpose (and then recorded); fields that do not change the result may differ."""

import json

import pytest

from configs import default
from regnet_jax.train import checkpoint, resume


def workdir_with_run(tmp_path, config):
  (tmp_path / "config.json").write_text(config.to_json())
  (tmp_path / "checkpoints" / "100").mkdir(parents=True)
  return str(tmp_path)


def test_result_changing_fields_are_refused_naming_old_and_new(tmp_path):
  old = default.get_config()
  workdir = workdir_with_run(tmp_path, old)
  new = default.get_config()
  new.learning_rate, new.batch_size, new.model_args.pairing = 0.5, 32, "concat"
  with pytest.raises(ValueError) as e:
    resume.check_resume(workdir, new, allow_changes=False)
  assert str(e.value) == (
      f"{workdir} holds a run with another recipe (batch_size: 64 -> 32; learning_rate: 0.1 -> "
      "0.5; model_args.pairing: 'interleave' -> 'concat'); resume it with its own config, use "
      "another --workdir, or pass --allow_config_change to continue it with this one on purpose")
  assert resume.check_resume(workdir, new, allow_changes=True) == {
      "batch_size": (64, 32), "learning_rate": (0.1, 0.5),
      "model_args.pairing": ("interleave", "concat")}


def test_fields_that_leave_the_result_alone_may_differ(tmp_path):
  workdir = workdir_with_run(tmp_path, default.get_config())
  new = default.get_config()
  new.update(dict(log_every_steps=7, eval_every_steps=9, checkpoint_every_steps=11,
                  keep_checkpoints=1, eval_precise_bn_batches=64, data_dir="/elsewhere",
                  prefetch_batches=4))
  new.implementation.cell_impl = "reference"
  new.model_args.scan_unroll = 1
  assert resume.check_resume(workdir, new, allow_changes=False) == {}


def test_nothing_to_guard_before_the_first_checkpoint(tmp_path):
  (tmp_path / "config.json").write_text(default.get_config().to_json())
  new = default.get_config()
  new.seed = 3
  assert resume.check_resume(str(tmp_path), new, allow_changes=False) == {}
  (tmp_path / "checkpoints" / "tmp-orbax").mkdir(parents=True)  # an unfinished save
  assert resume.check_resume(str(tmp_path), new, allow_changes=False) == {}


def test_a_workdir_of_an_older_version_compares_in_todays_layout(tmp_path):
  """Its config.json has the implementation choices inside model_args."""
  old = json.loads(default.get_config().to_json())
  old["model_args"].update(old.pop("implementation"))
  (tmp_path / "config.json").write_text(json.dumps(old))
  (tmp_path / "checkpoints" / "5").mkdir(parents=True)
  assert resume.check_resume(str(tmp_path), default.get_config(), allow_changes=False) == {}
  assert (json.loads(checkpoint.read_config(str(tmp_path)).to_json())
          == json.loads(default.get_config().to_json()))
