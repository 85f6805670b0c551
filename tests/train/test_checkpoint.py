"""Checkpointer: a save that does not land is an error, never a silent loss."""

import os

import jax.numpy as jnp
import numpy as np
import pytest

from regnet_jax.train import checkpoint

STATE = {"params": {"w": jnp.arange(6.0).reshape(2, 3)}, "step": jnp.int32(7)}


def test_saved_step_is_on_disk_and_restores(tmp_path):
  ckpt = checkpoint.Checkpointer(str(tmp_path))
  ckpt.save(7, STATE)
  ckpt.wait()
  assert os.listdir(ckpt.directory) == ["7"]
  restored = ckpt.restore(7, STATE, None)
  np.testing.assert_array_equal(restored["params"]["w"], STATE["params"]["w"])


def test_a_save_that_does_not_land_is_reported_on_wait(tmp_path, monkeypatch):
  ckpt = checkpoint.Checkpointer(str(tmp_path))
  ckpt.save(3, STATE)
  ckpt.wait()
  monkeypatch.setattr(ckpt.manager, "save", lambda *args, **kwargs: True)  # accepted, lost
  ckpt.save(5, STATE)
  with pytest.raises(checkpoint.CheckpointNotSavedError,
                     match=r"step 5 did not appear .*newest checkpoint there is 3"):
    ckpt.wait()


def test_a_declined_save_is_an_error(tmp_path, monkeypatch):
  ckpt = checkpoint.Checkpointer(str(tmp_path))
  monkeypatch.setattr(ckpt.manager, "save", lambda *args, **kwargs: False)
  with pytest.raises(checkpoint.CheckpointNotSavedError, match="declined to save step 4"):
    ckpt.save(4, STATE)


@pytest.mark.parametrize("flags, name", [("fpu sse2 avx2 avx512f avx512bw", "AMD EPYC (AVX-512)"),
                                         ("fpu sse2 avx2 fma", "AMD EPYC")])
def test_runs_record_the_cpu_and_whether_it_has_avx512(tmp_path, flags, name):
  """Two VMs that both call their CPU "AMD EPYC" train at 3x different speeds when only one
  has AVX-512, so the provenance says which."""
  cpuinfo = tmp_path / "cpuinfo"
  cpuinfo.write_text(f"processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: {flags}\n\n"
                     f"processor\t: 1\nmodel name\t: AMD EPYC\nflags\t\t: {flags}\n")
  assert checkpoint._cpu_name(str(cpuinfo)) == name


def test_evaluation_restores_parameters_without_the_optimizer_state(tmp_path):
  """A read-only Checkpointer restores the parts its target names (the parameters and
  BatchNorm statistics), whatever else the checkpoint holds."""
  state = {**STATE, "opt_state": {"momentum": jnp.ones((2, 3))}, "batch_stats": {"m": jnp.ones(3)}}
  writer = checkpoint.Checkpointer(str(tmp_path))
  writer.save(7, state)
  writer.wait()
  reader = checkpoint.Checkpointer(str(tmp_path), create=False)
  target = {"params": {"w": jnp.zeros((2, 3))}, "batch_stats": {"m": jnp.zeros(3)}}
  restored = reader.restore(7, target, None)
  assert sorted(restored) == ["batch_stats", "params"]
  np.testing.assert_array_equal(restored["params"]["w"], STATE["params"]["w"])
  np.testing.assert_array_equal(restored["batch_stats"]["m"], np.ones(3))
  with pytest.raises(checkpoint.CheckpointMismatchError, match=r"params\.w has shape \(2, 3\) in "
                     r"the checkpoint, \(3, 2\) in the model"):
    reader.restore(7, {"params": {"w": jnp.zeros((3, 2))}}, None)
  assert reader.saved_step() == 7
  with pytest.raises(FileNotFoundError, match=r"no checkpoint 5 in .*; it has steps 7$"):
    reader.saved_step(5)


def test_configs_of_older_versions_are_read_in_todays_layout():
  old = {"model": "regnet20_gru", "model_args": {"pairing": "concat", "cell_impl": "reference",
                                                 "conv_grad": "swapped"}}
  assert checkpoint.upgrade_config(old) == {
      "model": "regnet20_gru", "model_args": {"pairing": "concat"},
      "implementation": {"cell_impl": "reference", "conv_grad": "swapped"}}
  new = {"model": "resnet20", "model_args": {}, "implementation": {"cell_impl": "auto"}}
  assert checkpoint.upgrade_config(new) is new
