"""``python -m regnet_jax.import_data``: :mod:`regnet_jax.data.import_data`'s command line."""

from regnet_jax.data.import_data import main

if __name__ == "__main__":
  main()
