"""Shared by the training tests: a small trained workdir."""

import pytest

from regnet_jax.train import loop
from tests.train.test_loop import tiny_config

TRAINED_STEPS = 3


@pytest.fixture(scope="session")
def trained_run(tfds_dir, tmp_path_factory) -> str:
  """A workdir of the tiny RegNet-20 ConvGRU (two blocks per stage) trained for 3 steps on the
  CIFAR-10 slice, on all 8 (fake) devices, with one checkpoint (step 3)."""
  workdir = str(tmp_path_factory.mktemp("trained"))
  loop.train_and_evaluate(tiny_config(tfds_dir, num_train_steps=TRAINED_STEPS), workdir)
  return workdir
