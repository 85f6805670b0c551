"""``python -m regnet_jax.export``: :mod:`regnet_jax.train.weights`'s command line."""

from regnet_jax.train.weights import main

if __name__ == "__main__":
  main()
