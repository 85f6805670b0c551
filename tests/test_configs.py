"""Every experiment config loads and passes the trainer's checks; the reduced protocols of
docs/results.md differ only where they say they do."""

import importlib
import pathlib

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
