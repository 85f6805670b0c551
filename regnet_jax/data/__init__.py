"""Data: dataset specs, the host pipeline (tfds datasets and image folders) and the
device-resident source (the offline import, ``python -m regnet_jax.import_data``, prepares
tfds's copies where tfds cannot download).

- :mod:`~regnet_jax.data.datasets`: what the code knows about a dataset, resolved from the
  config (:func:`get_spec`), and :func:`normalize`, the models' input transform.
- :mod:`~regnet_jax.data.folder`: a folder of images in class subfolders as a dataset.
- :mod:`~regnet_jax.data.pipeline`: the host input pipeline (tfds datasets and folders).
- :mod:`~regnet_jax.data.resident`: small images held on the devices.
- :mod:`~regnet_jax.data.stats`: a dataset's per-channel mean and standard deviation.

Both sources give the training loop the same interface: ``spec``, ``steps_per_epoch``,
``train_batches(start_step)`` and ``eval_batches()``.
"""

from __future__ import annotations

from typing import Any

from regnet_jax.checks import check_choice
from regnet_jax.data.datasets import DATASETS, DatasetSpec, check_config, get_spec, normalize

INPUTS = ("tfds", "resident")
# How the processes of a multi-process run share the training split (see pipeline's docstring).
SHARDINGS = ("process", "global")

__all__ = ["DATASETS", "INPUTS", "SHARDINGS", "DatasetSpec", "check_config", "create_source",
           "get_spec", "normalize"]


def create_source(config: Any, data_sharding: Any, eval_batch: int | None = None) -> Any:
  """The data source of ``config.input``: ``'tfds'`` (streamed from the host: a tfds dataset
  or an image folder) or ``'resident'`` (small images on the devices, batches placed with
  ``data_sharding``), for the dataset :func:`get_spec` resolves from ``config``.

  Raises:
    ValueError: an unknown input, the resident input for a dataset it cannot hold, a bad
      folder.
    pipeline.DatasetNotFoundError: the dataset is not prepared and cannot be downloaded.
  """
  from regnet_jax.data import pipeline

  kind = config.get("input", "tfds")
  check_choice("input", kind, INPUTS)
  spec = get_spec(config)
  dataset = pipeline.open_data(config)
  if kind == "resident":
    from regnet_jax.data import resident

    return resident.ResidentSource(resident.load_arrays(dataset, spec), spec, config.batch_size,
                                   config.seed, data_sharding, eval_batch)
  return pipeline.TfdsSource(dataset, spec, config.batch_size, config.seed,
                             shuffle_buffer=config.shuffle_buffer,
                             skip_bad_images=config.get("skip_bad_images", False),
                             sharding=config.get("input_sharding", "process"),
                             eval_batch=eval_batch,
                             antialias=config.get("resize_antialias", False))
