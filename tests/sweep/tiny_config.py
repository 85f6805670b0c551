"""The sweep tests' config: test_loop's tiny_config at depth 8 (one block per stage), 6 steps
of batch 16 on the shipped CIFAR-10 slice (its data_dir given on the command line).

    --config=tests/sweep/tiny_config.py:regnet20_gru
"""

import ml_collections

from configs import default


def get_config(model: str = "resnet20") -> ml_collections.ConfigDict:
  config = default.get_config()
  config.model = model  # A CIFAR model of `regnet_jax.models.list_models()`.
  config.model_args.depth = 8  # One block per stage: the fastest network of each kind.
  config.batch_size = 16  # Two examples on each of the tests' 8 fake devices.
  config.num_train_steps = 6  # A few steps: the tests compare runs, not accuracy.
  config.learning_rate = 0.05  # Stable at batch 16.
  config.shuffle_buffer = 512  # The whole training slice.
  config.log_every_steps = 1  # Every step's loss, to compare runs step by step.
  config.eval_every_steps = 6  # Evaluate at the end only.
  config.checkpoint_every_steps = 2  # Checkpoints at steps 2, 4 and 6.
  return config
