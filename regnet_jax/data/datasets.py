"""What the code knows about a dataset (:class:`DatasetSpec`: classes, splits, image size,
augmentation, statistics), resolved from the config by :func:`get_spec`, and :func:`normalize`,
the models' input transform.

``config.dataset`` names one of three kinds of dataset:

- a dataset of the paper: ``cifar10``, ``cifar100``, ``imagenet2012``, ``imagenette``
  (:data:`DATASETS`);
- ``tfds:NAME``: any tfds image classification dataset (an ``image`` and a ``label``
  feature), e.g. ``tfds:oxford_flowers102``; its classes and splits come from tfds's metadata;
- ``folder:DIR``: a folder of images in class subfolders (:mod:`regnet_jax.data.folder`).

Image size, augmentation and statistics follow the data unless the config sets them: images
of at most :data:`SMALL_SIDE` pixels a side are trained CIFAR-style at their own size, others
(photos) with the ImageNet crops at 224 pixels; new datasets are normalised with ImageNet's
statistics (``python -m regnet_jax.data.stats`` computes a dataset's own).

No TensorFlow for the paper's datasets and folders, so that code which never reads through
tfds can use it too; ``tfds:NAME`` asks tfds (which needs TensorFlow) for the metadata.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp

if TYPE_CHECKING:  # annotations only: the model and the steps run without ml_collections
  import ml_collections

TFDS_PREFIX = "tfds:"
FOLDER_PREFIX = "folder:"
AUGMENTATIONS = ("cifar", "imagenet")
# Images whose longer side is at most this many pixels are "small": trained CIFAR-style at
# their own size. Larger ones are photos: the ImageNet crops at PHOTO_SIZE pixels.
SMALL_SIDE = 64
PHOTO_SIZE = 224


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """What the pipeline and the model need to know about a dataset."""

  name: str  # as config.dataset names it: 'cifar10', 'tfds:NAME', 'folder:DIR'
  num_classes: int
  # Augmentation: 'cifar' (pad by size/8, random crop, flip; eval: the whole image) or
  # 'imagenet' (Inception crop and flip; eval: the centre crop).
  kind: str
  image_size: int  # the models' input side, in pixels
  mean: tuple[float, float, float]  # per-channel, on the 0-255 scale
  std: tuple[float, float, float]
  train_split: str
  eval_split: str
  tfds_name: str | None = None  # the tfds builder; None for a folder
  class_names: tuple[str, ...] = ()  # label i's name, where known
  jpeg: bool = False  # every stored image is a JPEG (its crops are decoded directly)
  importable: bool = False  # `python -m regnet_jax.import_data` can import a local copy


IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")
# CIFAR-100's fine classes (labels 0-99), its 20 superclasses (coarse labels) and each fine
# class's superclass, as in the official release's metadata.
CIFAR100_CLASSES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle",
    "bottle", "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle",
    "caterpillar", "cattle", "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch",
    "crab", "crocodile", "cup", "dinosaur", "dolphin", "elephant", "flatfish", "forest", "fox",
    "girl", "hamster", "house", "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion",
    "lizard", "lobster", "man", "maple_tree", "motorcycle", "mountain", "mouse", "mushroom",
    "oak_tree", "orange", "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree",
    "plain", "plate", "poppy", "porcupine", "possum", "rabbit", "raccoon", "ray", "road",
    "rocket", "rose", "sea", "seal", "shark", "shrew", "skunk", "skyscraper", "snail", "snake",
    "spider", "squirrel", "streetcar", "sunflower", "sweet_pepper", "table", "tank",
    "telephone", "television", "tiger", "tractor", "train", "trout", "tulip", "turtle",
    "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm")
CIFAR100_SUPERCLASSES = (
    "aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables",
    "household_electrical_devices", "household_furniture", "insects", "large_carnivores",
    "large_man-made_outdoor_things", "large_natural_outdoor_scenes",
    "large_omnivores_and_herbivores", "medium_mammals", "non-insect_invertebrates", "people",
    "reptiles", "small_mammals", "trees", "vehicles_1", "vehicles_2")
CIFAR100_SUPERCLASS_OF = (
    4, 1, 14, 8, 0, 6, 7, 7, 18, 3, 3, 14, 9, 18, 7, 11, 3, 9, 7, 11, 6, 11, 5, 10, 7, 6, 13,
    15, 3, 15, 0, 11, 1, 10, 12, 14, 16, 9, 11, 5, 5, 19, 8, 8, 15, 13, 14, 17, 18, 10, 16, 4,
    17, 4, 2, 0, 17, 4, 18, 17, 10, 3, 2, 12, 12, 16, 12, 1, 9, 19, 2, 10, 0, 1, 16, 12, 9, 13,
    15, 13, 16, 19, 2, 4, 6, 19, 5, 5, 8, 19, 18, 1, 2, 15, 6, 0, 17, 8, 14, 13)
IMAGENETTE_CLASSES = ("tench", "English springer", "cassette player", "chain saw", "church",
                      "French horn", "garbage truck", "gas pump", "golf ball", "parachute")

DATASETS = {
    "cifar10": DatasetSpec("cifar10", 10, "cifar", 32, (0.4914 * 255, 0.4822 * 255, 0.4465 * 255),
                           (0.2470 * 255, 0.2435 * 255, 0.2616 * 255), "train", "test",
                           "cifar10", CIFAR10_CLASSES, importable=True),
    "cifar100": DatasetSpec("cifar100", 100, "cifar", 32,
                            (0.5071 * 255, 0.4865 * 255, 0.4409 * 255),
                            (0.2673 * 255, 0.2564 * 255, 0.2762 * 255), "train", "test",
                            "cifar100", CIFAR100_CLASSES, importable=True),
    "imagenet2012": DatasetSpec("imagenet2012", 1000, "imagenet", PHOTO_SIZE, IMAGENET_MEAN,
                                IMAGENET_STD, "train", "validation", "imagenet2012", jpeg=True),
    "imagenette": DatasetSpec("imagenette", 10, "imagenet", PHOTO_SIZE, IMAGENET_MEAN,
                              IMAGENET_STD, "train", "validation", "imagenette/full-size-v2",
                              IMAGENETTE_CLASSES, jpeg=True, importable=True),
}
VALID = (f"{', '.join(DATASETS)}, {TFDS_PREFIX}NAME (a tfds image classification dataset) or "
         f"{FOLDER_PREFIX}DIR (a folder of class subfolders)")


def default_kind(sides: tuple[int | None, ...]) -> tuple[str, int]:
  """``(kind, image_size)`` for images of these sides (None: varying): CIFAR-style at the
  longest side for small images, the ImageNet crops at :data:`PHOTO_SIZE` for photos."""
  if sides and None not in sides and max(sides) <= SMALL_SIDE:
    return "cifar", int(max(sides))
  return "imagenet", PHOTO_SIZE


def check_config(config: ml_collections.ConfigDict) -> None:
  """Checks ``config.dataset``'s form and the config's input overrides without reading any
  data (a folder or tfds's metadata are read by :func:`get_spec`); ValueError in one line."""
  name = config.dataset
  for prefix in (TFDS_PREFIX, FOLDER_PREFIX):
    if name.startswith(prefix) and name != prefix:
      break
  else:
    if name not in DATASETS:
      raise ValueError(f"unknown dataset {name!r}; valid datasets: {VALID}")
  _overrides(config, name in DATASETS)


def get_spec(dataset: str | ml_collections.ConfigDict) -> DatasetSpec:
  """The spec of a dataset: a name (``config.dataset``'s syntax, with the data's own size,
  augmentation, statistics and splits) or a config (its ``dataset`` with the config's
  overrides: ``image_size``, ``augment``, ``data_mean``, ``data_std``, ``train_split``,
  ``eval_split``; for ``folder:DIR``, ``holdout_fraction`` and ``holdout_seed``).

  ``tfds:NAME`` reads tfds's metadata (downloading and preparing the dataset first where it
  can); ``folder:DIR`` lists the folder (once per process).

  Raises:
    ValueError: an unknown dataset, a bad folder or override, in one line.
    pipeline.DatasetNotFoundError: a ``tfds:NAME`` that is not prepared and cannot be.
  """
  if isinstance(dataset, str):
    if dataset in DATASETS:
      return DATASETS[dataset]
    import ml_collections

    dataset = ml_collections.ConfigDict({"dataset": dataset})
  config = dataset
  check_config(config)
  name = config.dataset
  if name.startswith(FOLDER_PREFIX):
    from regnet_jax.data import folder

    images = folder.from_config(config)
    kind, size = default_kind(images.sides)
    spec = DatasetSpec(name, len(images.classes), kind, size, IMAGENET_MEAN, IMAGENET_STD,
                       images.train_split, images.eval_split, class_names=images.classes)
  elif name.startswith(TFDS_PREFIX):
    from regnet_jax.data import pipeline

    spec = pipeline.tfds_spec(name, pipeline.get_builder(name, config.get("data_dir")),
                              config.get("train_split"), config.get("eval_split"))
  else:
    spec = DATASETS[name]
  return dataclasses.replace(spec, **_overrides(config, name in DATASETS))


def _overrides(config: ml_collections.ConfigDict, table: bool) -> dict[str, Any]:
  """The spec fields the config sets: image size, augmentation, statistics, and for a dataset
  of the paper (``table``) the splits (``tfds:NAME`` and folders resolve theirs themselves);
  ValueError in one line for a bad value."""
  changes: dict[str, Any] = {}
  size = config.get("image_size")
  if size is not None:
    if not isinstance(size, int) or size < 8:
      raise ValueError(f"image_size={size!r} is not valid; it must be an integer of at least 8 "
                       "(pixels), or None for the data's own")
    changes["image_size"] = size
  kind = config.get("augment")
  if kind is not None:
    if kind not in AUGMENTATIONS:
      raise ValueError(f"augment={kind!r} is not valid; choose one of {', '.join(AUGMENTATIONS)}"
                       " (or None: from the image size)")
    changes["kind"] = kind
  for field, attr in (("data_mean", "mean"), ("data_std", "std")):
    value = config.get(field)
    if value is not None:
      if (len(value) != 3 or not all(isinstance(v, int | float) for v in value)
          or (attr == "std" and min(value) <= 0)):
        raise ValueError(f"{field}={tuple(value)!r} is not valid; give three numbers (R, G, B) "
                         f"on the 0-255 scale{', all positive' if attr == 'std' else ''}")
      changes[attr] = tuple(float(v) for v in value)
  if table:
    for field in ("train_split", "eval_split"):
      if config.get(field) is not None:
        changes[field] = config.get(field)
  return changes


def normalize(images: jax.Array, dataset: str | ml_collections.ConfigDict | DatasetSpec
              ) -> jax.Array:
  """Pixels on the 0-255 scale (uint8 or float, ``[..., 3]`` RGB) -> the models' input:
  float32 ``(x - mean) / std`` per channel with the dataset's statistics (a spec, or what
  :func:`get_spec` resolves)."""
  spec = dataset if isinstance(dataset, DatasetSpec) else get_spec(dataset)
  return (jnp.asarray(images, jnp.float32) - jnp.asarray(spec.mean)) / jnp.asarray(spec.std)
