"""The reduced CIFAR-10 protocol of docs/results.md: every model, identically, in ~1 CPU hour.

    --config=configs/cifar10_reduced.py:regnet20_gru

The paper trains 150 epochs (step schedule, batch 64); a 2-core CPU cannot. This protocol
keeps the paper's optimiser (SGD 0.9, weight decay 1e-4, the same augmentation) and shortens
the schedule to 5 epochs of cosine decay at batch 128. It is never tuned per model.
"""

import ml_collections

from configs import default


def get_config(model: str = "resnet20") -> ml_collections.ConfigDict:
  config = default.get_config()
  config.model = model  # Any CIFAR model of `regnet_jax.models.list_models()`.
  config.dataset = "cifar10"  # CIFAR-10 only: the protocol's results are on CIFAR-10.
  config.batch_size = 128  # Twice the paper's 64: CPU throughput; 390 steps per epoch.
  config.num_epochs = 5.0  # Reduced from 150 to fit ~1 hour per RegNet-20 on 2 CPU cores.
  config.lr_schedule = "cosine"  # Cosine decay suits a short schedule better than steps.
  config.warmup_epochs = 0.5  # Linear warm-up over the first half epoch.
  config.log_every_steps = 50  # Denser training curves for the short run.
  return config
