"""Training: the train state and steps, the loop, checkpoints, evaluation, multi-process set-up.

- :mod:`~regnet_jax.train.steps`: the state, the data-parallel train and eval steps, precise BN.
- :mod:`~regnet_jax.train.loop`: the one training loop, for either data source.
- :mod:`~regnet_jax.train.checkpoint`: orbax checkpoints and the run's config.
- :mod:`~regnet_jax.train.evaluate`: evaluating a workdir, loading a model for inference.
- :mod:`~regnet_jax.train.init_from`: a fine-tuning run's first state from a trained run.
- :mod:`~regnet_jax.train.weights`: weights files (export) and ``load_pretrained``.
- :mod:`~regnet_jax.train.distributed`: joining a multi-process run.
"""
