"""RNN-regulated ResNets (RegNet, Xu et al., arXiv 2101.00590) in JAX/Flax.

``regnet_jax.load_pretrained(PATH)`` loads a trained model from a weights file or a workdir
(:func:`regnet_jax.train.weights.load_pretrained`); it is imported on first use, so that
``import regnet_jax`` stays light.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["load_pretrained"]


def __getattr__(name: str) -> Any:
  if name == "load_pretrained":
    from regnet_jax.train.weights import load_pretrained

    return load_pretrained
  raise AttributeError(f"module 'regnet_jax' has no attribute {name!r}")
