"""The paper's analyses, run on trained workdirs.

- :mod:`~regnet_jax.analysis.block_probe`: Fig. 1(b), accuracy of GAP + the final FC on the
  outputs of the last blocks.
- :mod:`~regnet_jax.analysis.feature_maps`: Fig. 1(a), feature maps I, H, O as PNG.
- :mod:`~regnet_jax.analysis.results`: the results table, Fig. 4 (error vs parameters) and the
  training curves from the TensorBoard event files.
"""
