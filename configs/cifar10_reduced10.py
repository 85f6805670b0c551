"""The 10-epoch reduced CIFAR-10 protocol of docs/results.md: the 5-epoch one, twice as long.

    --config=configs/cifar10_reduced10.py:regnet20_gru

Everything but the length is `cifar10_reduced`'s (batch 128, cosine decay, half an epoch of
warm-up, the paper's optimiser and augmentation). A RegNet-20 trains it in about 40 minutes on
2 CPU cores with AVX-512 (1.5 hours without). Each epoch's evaluation is also repeated with
precise BN, which does not change training: with the literal channel pairing, RegNets' running
BatchNorm averages evaluate at chance mid-training (docs/results.md). Never tuned per model.
"""

import ml_collections

from configs import cifar10_reduced


def get_config(model: str = "resnet20") -> ml_collections.ConfigDict:
  config = cifar10_reduced.get_config(model)
  config.num_epochs = 10.0  # Twice the 5-epoch protocol; 3,900 steps at batch 128.
  config.eval_precise_bn_batches = 64  # Also evaluate with BN statistics over 64 batches.
  return config
