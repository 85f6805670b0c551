"""ResNet-50 on ImageNet with the paper's recipe (Sec. IV-B): batch 128, 90 epochs, SGD with
learning rate 0.06 divided by 10 at epochs 50 and 70. Table VI/VII baselines:
`--config.model=resnet101` or `--config.model=se_resnet50`."""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.model = "resnet50"
  config.dataset = "imagenet2012"
  config.shuffle_buffer = 16 * 128
  config.batch_size = 128
  config.num_epochs = 90.0
  config.learning_rate = 0.06
  config.lr_boundaries = (50.0, 70.0)
  config.log_every_steps = 500
  return config
