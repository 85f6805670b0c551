"""The networks: regulator cells, regulated blocks, scanned stages, the CIFAR and ImageNet
networks and the registry of named presets. Pure JAX/Flax; nothing here knows of training,
data or the CPU kernels.

- :mod:`~regnet_jax.models.cells`: the ConvRNN / ConvGRU / ConvLSTM equations and their gate
  convolutions.
- :mod:`~regnet_jax.models.blocks`: the regulated basic and bottleneck blocks.
- :mod:`~regnet_jax.models.stage`: a stage, its blocks scanned with ``nn.scan``.
- :mod:`~regnet_jax.models.networks`: the CIFAR and ImageNet networks.
- :mod:`~regnet_jax.models.registry`: names -> presets, :func:`create_model`.
"""

from regnet_jax.models.cells import ConvCell, DenseGateConv, LightGateConv
from regnet_jax.models.networks import CLASSIFIER, CifarResNet, ImageNetResNet, Network
from regnet_jax.models.registry import MODELS, ModelSpec, create_model, get_spec, list_models

__all__ = [
    "CLASSIFIER",
    "MODELS",
    "CifarResNet",
    "ConvCell",
    "DenseGateConv",
    "ImageNetResNet",
    "LightGateConv",
    "ModelSpec",
    "Network",
    "create_model",
    "get_spec",
    "list_models",
]
