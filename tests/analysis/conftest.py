"""The tiny trained run the analysis tests read."""

import pytest

from regnet_jax.train import loop
from tests.train.test_loop import STEPS, tiny_config


@pytest.fixture(scope="session")
def run(tfds_dir, tmp_path_factory):
  """The tiny RegNet run of tests/train/test_loop.py (same config, so its compiled steps are
  cached), also evaluated half-way, and with precise BN each time: STEPS steps, not a whole
  number of epochs (32 steps per epoch: 512 training images at batch 16)."""
  workdir = str(tmp_path_factory.mktemp("analysis_run"))
  loop.train_and_evaluate(tiny_config(tfds_dir, eval_every_steps=STEPS // 2,
                                       eval_precise_bn_batches=1), workdir)
  return workdir
