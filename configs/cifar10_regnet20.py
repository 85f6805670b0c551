"""RegNet-20 (ConvLSTM, the paper's best CIFAR-10 RegNet-20) with the paper's CIFAR recipe."""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.model = "regnet20_lstm"
  return config
