"""CIFAR experiments of Tables I, III, IV and V, parameterised by model and dataset.

    --config=configs/cifar.py:regnet20_lstm,cifar100

The argument is `MODEL[,DATASET]` (dataset default cifar10). Table I's dense cell:
`--config.model_args.cell_conv=dense3x3`; Table V's single-stage regulator:
`--config.model_args.regulated_stages='(2,)'`.
"""

import ml_collections

from configs import default


def get_config(arg: str = "resnet20,cifar10") -> ml_collections.ConfigDict:
  model, _, dataset = arg.partition(",")
  config = default.get_config()
  config.model = model
  config.dataset = dataset or "cifar10"
  return config
