"""Every experiment config loads and passes the trainer's checks; the reduced protocols of
docs/results.md differ only where they say they do."""

import importlib
import pathlib

import numpy as np
import pytest

from regnet_jax import models
from regnet_jax.train.validate import validate_config
from tests.conftest import REPO

CONFIGS = sorted(p.stem for p in pathlib.Path(REPO, "configs").glob("*.py")
                 if "def get_config(" in p.read_text())  # (sweeps.py holds sweeps)


@pytest.mark.parametrize("name", CONFIGS)
def test_config_loads_and_validates(name):
  config = importlib.import_module(f"configs.{name}").get_config()
  assert config.model in models.list_models()
  validate_config(config)


@pytest.mark.parametrize("model", ["resnet20", "regnet20_gru", "se_regnet20_lstm"])
def test_reduced_protocols_differ_only_in_length_and_evaluation(model):
  five = importlib.import_module("configs.cifar10_reduced").get_config(model).to_dict()
  ten = importlib.import_module("configs.cifar10_reduced10").get_config(model).to_dict()
  assert (five.pop("num_epochs"), ten.pop("num_epochs")) == (5.0, 10.0)
  assert (five.pop("eval_precise_bn_batches"), ten.pop("eval_precise_bn_batches")) == (0, 64)
  assert five == ten
  assert ten["model"] == model and ten["batch_size"] == 128
  twenty = importlib.import_module("configs.cifar10_reduced20").get_config(model).to_dict()
  assert twenty.pop("num_epochs") == 20.0
  twenty.pop("eval_precise_bn_batches")
  assert twenty == ten


@pytest.mark.parametrize("name", CONFIGS)
def test_configs_import_at_most_two_levels_deep(name):
  """A config imports at most one other config, which imports at most one more (default)."""
  def imported(stem):
    text = pathlib.Path(REPO, "configs", f"{stem}.py").read_text()
    return [n for n in CONFIGS if f"from configs import {n}\n" in text]

  depth, frontier = 0, [name]
  while frontier:
    frontier = [child for stem in frontier for child in imported(stem)]
    depth += bool(frontier)
  assert depth <= 2


@pytest.mark.parametrize("override,expected", [(None, None), ("True", True), ("False", False)])
@pytest.mark.parametrize("name", ["imagenet_resnet50", "imagenet_regnet50"])
def test_half_precision_can_be_overridden_from_the_command_line(monkeypatch, name, override,
                                                                expected):
  """The ImageNet configs' default (None: bfloat16 on accelerators, float32 on CPUs) is a typed
  placeholder, so that main.py's flags (a locked config file flag) accept
  ``--config.half_precision=True`` and ``=False``."""
  from absl import flags
  from ml_collections import config_flags

  from regnet_jax.train import factory

  argv = ["main.py", f"--config=configs/{name}.py",
          *([f"--config.half_precision={override}"] if override else [])]
  monkeypatch.setattr("sys.argv", argv)  # config_flags reads the overrides from sys.argv
  monkeypatch.chdir(REPO)
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "", flag_values=flag_values, lock_config=True)
  flag_values(argv)
  assert flag_values.config.half_precision is expected
  dtype = factory.compute_dtype(flag_values.config.half_precision)
  assert np.dtype(dtype).name == ("bfloat16" if expected else "float32")  # None: on this CPU
