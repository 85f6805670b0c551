"""The 20-epoch reduced CIFAR-10 protocol of docs/results.md: the 10-epoch one, twice as long.

    --config=configs/cifar10_reduced20.py:regnet20_gru

Everything but the length is `cifar10_reduced10`'s: `cifar10_reduced`'s recipe (batch 128,
cosine decay, half an epoch of warm-up, the paper's optimiser and augmentation) with precise-BN
evaluations. Never tuned per model.
On 2 CPU cores with AVX-512 a RegNet-20 ConvGRU trains it in about 80 minutes and a ResNet-20
in about 47 (docs/results.md).
"""

import ml_collections

from configs import cifar10_reduced


def get_config(model: str = "resnet20") -> ml_collections.ConfigDict:
  config = cifar10_reduced.get_config(model)
  config.num_epochs = 20.0  # Twice the 10-epoch protocol; 7,800 steps at batch 128.
  config.eval_precise_bn_batches = 64  # Also evaluate with BN statistics over 64 batches.
  return config
