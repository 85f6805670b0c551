"""RNN-regulated ResNets (RegNet, Xu et al., arXiv 2101.00590) in JAX/Flax."""

__version__ = "0.1.0"
