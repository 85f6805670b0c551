"""The paper's analyses, run on trained workdirs.

- :mod:`~regnet_jax.analysis.results`: the command that writes the results table, Fig. 4 (error
  vs parameters) and the training curves, from
  :mod:`~regnet_jax.analysis.events` (TensorBoard event files, read without TensorFlow),
  :mod:`~regnet_jax.analysis.rows` (a workdir as a row of the table),
  :mod:`~regnet_jax.analysis.tables` (the Markdown tables) and
  :mod:`~regnet_jax.analysis.plots` (the figures).
- :mod:`~regnet_jax.analysis.summary`: every model's parameters and MACs beside the paper's.
- :mod:`~regnet_jax.analysis.block_probe`: Fig. 1(b), accuracy of GAP + the final FC on the
  outputs of the last blocks.
- :mod:`~regnet_jax.analysis.feature_maps`: Fig. 1(a), feature maps I, H, O as PNG.
- :mod:`~regnet_jax.analysis.bn_check`: running BatchNorm averages against precise statistics.
"""
