"""RegNet-50 (ConvLSTM regulators, Eq. 3) on ImageNet with the paper's recipe (Table VI)."""

import ml_collections

from configs import imagenet_resnet50


def get_config() -> ml_collections.ConfigDict:
  config = imagenet_resnet50.get_config()
  config.model = "regnet50"  # ConvLSTM regulators in every stage.
  return config
