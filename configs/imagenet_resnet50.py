"""ResNet-50 on ImageNet with the paper's recipe (Sec. IV-B): batch 128, 90 epochs, SGD with
learning rate 0.06 divided by 10 at epochs 50 and 70. Table VI/VII baselines:
`--config.model=resnet101` or `--config.model=se_resnet50`."""

import ml_collections

from configs import default


def get_config() -> ml_collections.ConfigDict:
  config = default.get_config()
  config.model = "resnet50"  # Table VI's baseline.
  config.dataset = "imagenet2012"  # Prepared by tfds from the official tar files.
  config.shuffle_buffer = 16 * 128  # Examples; ImageNet's JPEGs are large.
  config.batch_size = 128  # The paper's (on 4 GPUs).
  config.num_epochs = 90.0  # The paper's schedule.
  config.learning_rate = 0.06  # For batch 128; scale it linearly with another batch size.
  config.lr_boundaries = (50.0, 70.0)  # Divided by 10 at epochs 50 and 70.
  config.log_every_steps = 500  # 10,009 steps per epoch.
  # None: bfloat16 compute on GPUs and TPUs, float32 on CPUs; a bool-typed placeholder, so that
  # --config.half_precision=True or False can override it.
  config.half_precision = ml_collections.config_dict.placeholder(bool)
  config.model_args.stride_on = "3x3"  # Bottleneck stride on the 3x3 (v1.5) or the first 1x1.
  return config
