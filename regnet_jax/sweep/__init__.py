"""Sweeps: every run of a paper's table (models x seeds) in one resumable command,
``python -m regnet_jax.sweep run|status|report`` (:mod:`regnet_jax.sweep.__main__`).

- :mod:`~regnet_jax.sweep.spec`: sweep files, their runs and each run's main.py command line.
- :mod:`~regnet_jax.sweep.state`: where a run stands, read from its workdir.
- :mod:`~regnet_jax.sweep.runner`: the runs as child processes, side by side on several GPUs,
  stopped with a checkpoint on a signal or at a deadline.
- :mod:`~regnet_jax.sweep.status`, :mod:`~regnet_jax.sweep.report`: the ``status`` lines and
  the ``report`` through :mod:`regnet_jax.analysis.results`.
"""
