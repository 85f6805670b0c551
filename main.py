"""Trains or evaluates a RegNet / ResNet (the command line is :mod:`regnet_jax.main`).

    python main.py --config=configs/imagenet_regnet50.py --workdir=DIR
    python main.py --config=configs/cifar.py:regnet20_gru,cifar100 --workdir=DIR
    python main.py --workdir=DIR --mode=eval [--step=N]

Config files are Python code and are executed: only use configs you trust.
"""

from regnet_jax import main

if __name__ == "__main__":
  main.run()
