"""The sweep tests' sweep: two tiny models x two seeds (`tests/sweep/tiny_config.py`), or with
`:failing`, a diverging run beside a good one."""

import ml_collections


def get_sweep(arg: str = "") -> ml_collections.ConfigDict:
  sweep = ml_collections.ConfigDict()
  sweep.config = "tests/sweep/tiny_config.py:{model}"  # Each run's main.py config.
  sweep.models = (["resnet20-diverge", "resnet20"] if arg == "failing"
                  else ["resnet20", "regnet20_gru"])  # The model entries.
  sweep.variants = {"diverge": {"learning_rate": 1e6}}  # A learning rate that diverges.
  sweep.seeds = [0] if arg == "failing" else [0, 1]  # Each entry's seeds.
  sweep.overrides = {}  # Nothing else changed (the tests add --set.data_dir).
  return sweep
