"""Fine-tuning recipe: a trained run's weights trained further, on another dataset or the same,
for a few epochs at a tenth of the training recipe's learning rate, with a cosine decay.

    --config=configs/finetune.py:regnet20_gru,cifar100 --config.init_from=WORKDIR_OR_FILE

The argument is `MODEL[,DATASET]` as in `configs/cifar.py`; MODEL (and any
`--config.model_args`) must be the source's. `init_from` is a training workdir (its newest
checkpoint), `WORKDIR:STEP`, or a file of `python -m regnet_jax.export`. A starting point, not
tuned: with more data or a source far from the new images, more epochs help.
"""

import ml_collections

from configs import cifar


def get_config(arg: str = "resnet20,cifar10") -> ml_collections.ConfigDict:
  config = cifar.get_config(arg)
  config.num_epochs = 10.0  # A few epochs: the features are trained already.
  config.learning_rate = 0.01  # A tenth of the training recipe's 0.1 (batch 64).
  config.lr_schedule = "cosine"  # Decays to 0 by the last step.
  config.warmup_epochs = 0.0  # No warm-up: the weights are not random.
  return config
