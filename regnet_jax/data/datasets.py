"""What the code knows about each dataset: tfds name, splits, classes, image size, statistics,
and :func:`normalize`, the models' input transform.

No TensorFlow, so that code which never reads through tfds can use it too.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """What the pipeline needs to know about a dataset."""

  tfds_name: str
  train_split: str
  eval_split: str
  num_classes: int
  kind: str  # 'cifar' (32x32 pixels) or 'imagenet' (encoded JPEGs)
  image_size: int
  mean: tuple[float, float, float]  # per-channel, on the 0-255 scale
  std: tuple[float, float, float]
  importable: bool  # `python -m regnet_jax.import_data` can import a local copy


_IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
_IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)

DATASETS = {
    "cifar10": DatasetSpec("cifar10", "train", "test", 10, "cifar", 32,
                           (0.4914 * 255, 0.4822 * 255, 0.4465 * 255),
                           (0.2470 * 255, 0.2435 * 255, 0.2616 * 255), True),
    "cifar100": DatasetSpec("cifar100", "train", "test", 100, "cifar", 32,
                            (0.5071 * 255, 0.4865 * 255, 0.4409 * 255),
                            (0.2673 * 255, 0.2564 * 255, 0.2762 * 255), False),
    "imagenet2012": DatasetSpec("imagenet2012", "train", "validation", 1000, "imagenet", 224,
                                _IMAGENET_MEAN, _IMAGENET_STD, False),
    "imagenette": DatasetSpec("imagenette/full-size-v2", "train", "validation", 10, "imagenet",
                              224, _IMAGENET_MEAN, _IMAGENET_STD, True),
}


def get_spec(name: str) -> DatasetSpec:
  """The spec of dataset ``name``; a ValueError naming the valid datasets if unknown."""
  if name not in DATASETS:
    raise ValueError(f"unknown dataset {name!r}; valid datasets: {', '.join(DATASETS)}")
  return DATASETS[name]


def normalize(images: jax.Array, dataset: str | DatasetSpec) -> jax.Array:
  """Pixels on the 0-255 scale (uint8 or float, ``[..., 3]`` RGB) -> the models' input:
  float32 ``(x - mean) / std`` per channel with the dataset's statistics."""
  spec = get_spec(dataset) if isinstance(dataset, str) else dataset
  return (jnp.asarray(images, jnp.float32) - jnp.asarray(spec.mean)) / jnp.asarray(spec.std)
