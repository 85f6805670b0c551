"""The device-resident source of small images (``config.input = 'resident'``): CIFAR, or a
tfds dataset of small square RGB images.

On a GPU a CIFAR step takes a few milliseconds, less than the tfds pipeline needs to decode
and augment its batch on the host. Here the whole dataset lives on the devices as uint8 pixels
and every batch is gathered and augmented there, in one jitted call: the augmentation of the
tfds pipeline (zero padding of S/8 pixels, 4 for CIFAR, random S x S crop, random horizontal
flip). The training loop is the same as for the tfds source.

Epoch ``e``'s order and augmentation are a pure function of ``(seed, e)``, so a resumed run
matches an uninterrupted one. Random streams differ from the tfds pipeline's: the two sources
do not give bit-identical runs. Single-process only.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding

from regnet_jax.data.datasets import DatasetSpec

Arrays = dict[str, tuple[np.ndarray, np.ndarray]]


def load_arrays(data, spec: DatasetSpec) -> Arrays:
  """``{'train': (images, labels), 'test': ...}`` of a prepared tfds builder of small images
  (``spec.kind == 'cifar'``): images ``[N, S, S, 3] uint8``, labels ``[N] int32``. ValueError
  for other datasets (folders, photos, images of another size or not RGB)."""
  import tensorflow_datasets as tfds

  size = spec.image_size
  image = None if spec.tfds_name is None else data.info.features["image"]
  if spec.kind != "cifar" or image is None or tuple(image.shape) != (size, size, 3):
    raise ValueError(f"config.input='resident' is for CIFAR datasets and tfds datasets of "
                     f"{size}x{size} RGB images (held in device memory); {spec.name!r} is not "
                     "one: use input='tfds'")
  arrays = {}
  for key, split in (("train", spec.train_split), ("test", spec.eval_split)):
    batch = tfds.as_numpy(data.as_dataset(split=split, batch_size=-1))
    arrays[key] = (batch["image"], batch["label"].astype(np.int32))
  return arrays


def augment(images: jax.Array, key: jax.Array) -> jax.Array:
  """Zero padding of S/8 pixels (4 for CIFAR), a random S x S crop and a random horizontal
  flip per image. ``[B, S, S, 3] -> [B, S, S, 3]``, same dtype."""
  b, h, w, c = images.shape
  pad = h // 8
  crop_key, flip_key = jax.random.split(key)
  offsets = jax.random.randint(crop_key, (b, 2), 0, 2 * pad + 1)
  flips = jax.random.bernoulli(flip_key, 0.5, (b,))
  padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))

  def one(image, offset, flip):
    crop = jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (h, w, c))
    return jnp.where(flip, crop[:, ::-1], crop)
  return jax.vmap(one)(padded, offsets, flips)


def epoch_order(seed: int, epoch: int, num_examples: int, steps: int, batch: int
                ) -> tuple[jax.Array, jax.Array]:
  """Epoch ``epoch``'s example indices ``[steps, batch]`` (a permutation, remainder dropped)
  and one augmentation key per step ``[steps, 2]``: a pure function of ``(seed, epoch)``."""
  perm_key, aug_key = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(seed), epoch))
  order = jax.random.permutation(perm_key, num_examples)[:steps * batch]
  return order.reshape(steps, batch), jax.random.split(aug_key, steps)


class ResidentSource:
  """Small images held on the devices; batches as ``{'image': [B, S, S, 3] uint8, 'label': [B]
  int32}`` (and ``'mask': [B]`` for evaluation), global arrays sharded with
  ``data_sharding``."""

  def __init__(self, arrays: Arrays, spec: DatasetSpec, global_batch: int, seed: int,
               data_sharding: NamedSharding, eval_batch: int | None = None):
    if jax.process_count() > 1:
      raise ValueError("config.input='resident' runs in a single process; use input='tfds'")
    images, labels = arrays["train"]
    self.spec, self.global_batch, self.seed = spec, global_batch, seed
    self.num_examples = len(labels)
    self.steps_per_epoch = self.num_examples // global_batch
    if self.steps_per_epoch == 0:
      raise ValueError(f"batch_size={global_batch} is larger than the training split "
                       f"({self.num_examples} examples)")
    replicated = NamedSharding(data_sharding.mesh, jax.sharding.PartitionSpec())
    self._images, self._labels = jax.device_put((images, labels), replicated)
    self.eval_batch = eval_batch or global_batch
    test_images, test_labels = arrays["test"]
    self.num_eval_batches = math.ceil(len(test_labels) / self.eval_batch)
    pad = self.num_eval_batches * self.eval_batch - len(test_labels)
    mask = np.concatenate([np.ones(len(test_labels)), np.zeros(pad)]).astype(np.float32)
    self._test = jax.device_put(
        (np.pad(test_images, ((0, pad), (0, 0), (0, 0), (0, 0))), np.pad(test_labels, (0, pad)),
         mask), replicated)

    @jax.jit
    def train_batch(images, labels, idx, key):
      return jax.lax.with_sharding_constraint(
          {"image": augment(images[idx], key), "label": labels[idx]}, data_sharding)

    @jax.jit
    def eval_batch(test, i):
      n = self.eval_batch
      images, labels, mask = (jax.lax.dynamic_slice_in_dim(t, i * n, n) for t in test)
      return jax.lax.with_sharding_constraint(
          {"image": images, "label": labels, "mask": mask}, data_sharding)

    self._train_batch, self._eval_batch = train_batch, eval_batch

  def train_batches(self, start_step: int = 0) -> Iterator[dict[str, jax.Array]]:
    """The training batches from global step ``start_step`` on, epoch after epoch."""
    epoch, position = divmod(start_step, self.steps_per_epoch)
    while True:
      order, keys = epoch_order(self.seed, epoch, self.num_examples, self.steps_per_epoch,
                                self.global_batch)
      for i in range(position, self.steps_per_epoch):
        yield self._train_batch(self._images, self._labels, order[i], keys[i])
      epoch, position = epoch + 1, 0

  def eval_batches(self) -> Iterator[dict[str, jax.Array]]:
    """Every test example once, in batches of ``eval_batch``; the padding has ``mask == 0``."""
    for i in range(self.num_eval_batches):
      yield self._eval_batch(self._test, i)
