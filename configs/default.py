"""Base config: the paper's CIFAR recipe (Sec. IV-A) for ResNet-20 on CIFAR-10.

Every experiment config imports this and overrides only what differs.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  # Model: a name from `regnet_jax.models.list_models()`.
  config.model = "resnet20"
  # Model attributes passed to `create_model` (see regnet_jax/models/networks.py `Network`).
  config.model_args = ml_collections.ConfigDict()
  config.model_args.cell_conv = "light"  # 'light' (two-step) or 'dense3x3' gates (Table I).
  config.model_args.cell_sharing = "stage"  # One cell per 'stage' (RNN) or per 'block'.
  config.model_args.pairing = "interleave"  # Light gates' channel pairs: 'interleave' (x_k with
  #                                           h_k) or 'concat' (channels 2k, 2k+1 of [x, h]).
  config.model_args.regulated_stages = ()  # 1-based stages with a regulator; () = all (Table V).
  config.model_args.shortcut = "B"  # 'B': 1x1 projection + BN where shapes change; 'A': zero-pad.
  config.model_args.carry_normed_h = True  # Carry ReLU(BN(h)) to the next block, or the raw h.
  config.model_args.cell_bias = True  # A bias on every gate of the cell.
  config.model_args.scan_unroll = -1  # Scan steps per loop iteration; -1: all (fast on CPU).

  # Implementation: the same parameters and results, computed another way; chosen once, before
  # tracing, for the backend (regnet_jax/cpu, docs/performance.md).
  config.implementation = ml_collections.ConfigDict()
  config.implementation.cell_impl = "auto"  # auto (CPU: C++ gate kernels), reference, kernel.
  config.implementation.conv_grad = "auto"  # Conv kernel grad: auto (CPU: swapped),
  #                                           reference, swapped, kernel (C++; AVX-512 only).

  # Data.
  # cifar10, cifar100, imagenet2012, imagenette; tfds:NAME, any tfds image classification
  # dataset (e.g. tfds:oxford_flowers102); folder:DIR, images in class subfolders of DIR
  # (or of DIR/train, with DIR/val or DIR/test held out): see regnet_jax/data/folder.py.
  config.dataset = "cifar10"
  config.input = "tfds"  # 'tfds' (host pipeline: tfds or folder) or 'resident' (small images
  #                        held on the devices).
  config.data_dir = ml_collections.config_dict.placeholder(str)  # tfds data_dir; None: tfds's.
  # Splits (tfds split syntax, e.g. 'train[:90%]'); None: the dataset's train split, and its
  # validation split, else its test split. A folder's eval_split picks its held-out folder
  # (val, validation, test); a folder has no train_split.
  config.train_split = ml_collections.config_dict.placeholder(str)
  config.eval_split = ml_collections.config_dict.placeholder(str)
  # folder:DIR without a held-out folder: this share of each class's images is held out for
  # evaluation (None: 0.1), chosen by holdout_seed (None: 0; not seed, so that every run
  # evaluates on the same images).
  config.holdout_fraction = ml_collections.config_dict.placeholder(float)
  config.holdout_seed = ml_collections.config_dict.placeholder(int)
  # Inputs; None: what suits the data (small images, at most 64 pixels a side, CIFAR-style at
  # their size; photos with the ImageNet crops at 224).
  config.image_size = ml_collections.config_dict.placeholder(int)  # Model input side, pixels.
  config.augment = ml_collections.config_dict.placeholder(str)  # 'cifar' (pad S/8, random
  #   crop, flip; eval: whole image) or 'imagenet' (Inception crop, flip; eval: centre crop).
  # Per-channel (R, G, B) mean and standard deviation on the 0-255 scale that inputs are
  # normalised with; None: the dataset's (ImageNet's for tfds:NAME and folder:DIR).
  # `python -m regnet_jax.data.stats --config=...` computes them for a dataset.
  config.data_mean = ml_collections.config_dict.placeholder(tuple)
  config.data_std = ml_collections.config_dict.placeholder(tuple)
  config.shuffle_buffer = 50_000  # Examples in the shuffle buffer (a whole CIFAR epoch); a
  #                                 folder's order is a whole permutation without it.
  config.prefetch_batches = 2  # Batches placed on the devices ahead of the train step.
  # Images that cannot be decoded: False stops the run naming the image; True leaves them out,
  # counted in a warning (training and evaluation).
  config.skip_bad_images = False
  # With several processes: 'process' (each reads only its share of the training records) or
  # 'global' (each reads them all; the batches then do not depend on the process count).
  config.input_sharding = "process"
  # Bilinear resizes (ImageNet crops, training and eval; small images of another size): False
  # samples a shrinking image at the output pixels only (as big_vision does); True antialiases
  # like torchvision/PIL, at about 1.7x the host's preprocessing time per photo
  # (benchmarks/preprocess.py).
  config.resize_antialias = False

  # Optimisation: SGD with momentum, weight decay on kernels only (not BN or biases).
  config.batch_size = 64  # Global batch, split evenly over all devices of all processes.
  config.num_epochs = 150.0  # Training length in epochs (used when num_train_steps is -1).
  config.num_train_steps = -1  # Training length in steps; -1: num_epochs * steps per epoch.
  config.learning_rate = 0.1  # Peak learning rate.
  config.lr_schedule = "step"  # 'step' (piecewise constant) or 'cosine' (with warm-up).
  config.lr_boundaries = (80.0,)  # 'step': epochs at which the rate is multiplied by lr_decay.
  config.lr_decay = 0.1  # 'step': the factor applied at each boundary.
  config.warmup_epochs = 0.0  # Linear warm-up from 0 (both schedules).
  config.momentum = 0.9  # SGD momentum.
  config.nesterov = False  # Nesterov momentum (the paper does not say; off).
  config.weight_decay = 1e-4  # L2 on conv/dense/cell kernels, added to the gradient.
  config.label_smoothing = 0.0  # Label smoothing of the cross-entropy target.
  config.half_precision = False  # bfloat16 compute (params, BN stats, loss stay float32);
  #                                 None: bfloat16 on GPUs and TPUs, float32 on CPUs.

  # Loop.
  config.log_every_steps = 100  # Train metrics to TensorBoard every this many steps.
  config.eval_every_steps = -1  # Evaluate every this many steps; -1: once per epoch.
  config.eval_precise_bn_batches = 0  # Each eval also with precise BN over N train batches; 0: off.
  config.checkpoint_every_steps = -1  # Save every this many steps; -1: once per epoch.
  config.keep_checkpoints = 3  # Newest checkpoints kept on disk.
  config.seed = 0  # Seeds initialisation, data order and augmentation.
  # Fine-tuning: the first start takes its parameters and BatchNorm statistics from a trained
  # run instead of a random initialisation (the optimizer starts fresh; a resumed run restores
  # its own checkpoint): WORKDIR (its newest checkpoint), WORKDIR:STEP, or a weights file of
  # `python -m regnet_jax.export`. The model must be the source's; a classifier of another
  # class count is re-initialised. None: a random initialisation.
  config.init_from = ml_collections.config_dict.placeholder(str)
  return config
