"""tfds input pipelines for CIFAR-10/100 and ImageNet (imagenet2012, and Imagenette for tests).

Training order and augmentation are a pure function of ``(seed, step)``: epoch e is shuffled
with seed ``seed + e`` and every example's random crop and flip use a stateless seed derived
from its position in the epoch's global batches, so a run resumed at step s sees exactly the
batches an uninterrupted run would. With several processes (hosts), the training split is
shared out in one of two ways (``SHARDINGS``, ``config.input_sharding``):

- ``'process'`` (the default): each process reads only its own even share of the records
  (``tfds.even_splits``) and shuffles it; in every epoch each example is read by one process
  at most, and once at most. Reading scales with the hosts. The batches depend on the process
  count, so a run resumes exactly only on the same count.
- ``'global'``: every process reads the whole split in one shuffled order and decodes only its
  rows of each global batch. The global batches are then those of one process whatever the
  count (a run can resume on another count), but each process reads every record.

With one process both are the same. Evaluation visits every example of the split exactly
once, each process its own slice (``tfds.split_for_jax_process``): the last batches are
padded and the padding masked out (``batch['mask'] == 0``).

Batches are dicts of numpy arrays: ``image [b, S, S, 3] uint8`` pixels (the train and eval
steps normalise them on the device, so the host moves a quarter of float32's bytes), ``label
[b] int32`` and, for evaluation, ``mask [b] float32``; ``b`` is the per-process batch.

ImageNet crops are resized bilinearly to ``S x S``, by default without antialiasing (as
big_vision's Inception crop does, and flax's ImageNet example with its bicubic resize): a
shrinking crop is sampled at the output pixels only, and the host preprocesses about 1.7x as
many images per core as with antialiasing. With ``antialias=True``
(``config.resize_antialias``) the filter widens as it shrinks, like torchvision's
``RandomResizedCrop`` and ``Resize`` (PIL), which the paper's PyTorch baselines used. Host
cost of each choice: ``benchmarks/preprocess.py``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import socket
from collections.abc import Iterator

import jax
import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from regnet_jax import console
from regnet_jax.data import SHARDINGS
from regnet_jax.data.datasets import DatasetSpec, get_spec

tf = console.import_tensorflow()  # without its routine native start-up lines on stderr

# TF only feeds data: keep it off GPUs and TPUs so that JAX has their memory.
tf.config.set_visible_devices([], "GPU")
tf.config.set_visible_devices([], "TPU")

AUTOTUNE = tf.data.AUTOTUNE


def _options() -> tf.data.Options:
  """tf.data threading as in flax's ImageNet example: one private pool of a thread per core,
  each map call single-threaded (parallelism comes from ``num_parallel_calls``)."""
  options = tf.data.Options()
  options.threading.private_threadpool_size = os.cpu_count() or 1
  options.threading.max_intra_op_parallelism = 1
  return options


class DatasetNotFoundError(RuntimeError):
  """The dataset is neither prepared in the data_dir nor downloadable; says how to get it."""


def get_builder(name: str, data_dir: str | None, download: bool = True) -> tfds.core.DatasetBuilder:
  """The prepared tfds builder of ``name``; downloads and prepares it first where tfds can.

  Raises:
    DatasetNotFoundError: not prepared and not downloadable here, with the command that
      imports a local copy (or, for ImageNet, where to put the manual download).
  """
  spec = get_spec(name)
  builder = tfds.builder(spec.tfds_name, data_dir=data_dir)
  if builder.is_prepared():
    return builder
  where = (f"--data_dir={data_dir}" if data_dir else
           f"{os.path.dirname(os.path.dirname(builder.data_dir))} (tfds's default data_dir)")
  if name == "imagenet2012":
    hint = ("ImageNet is downloaded by hand: put ILSVRC2012_img_train.tar and "
            "ILSVRC2012_img_val.tar into <data_dir>/downloads/manual (tfds's manual_dir) and "
            "run once: python -c \"import tensorflow_datasets as tfds; tfds.builder("
            f"'imagenet2012', data_dir={data_dir!r}).download_and_prepare()\"")
  elif spec.importable:
    hint = ("on a machine without internet access import a local copy with: python -m "
            f"regnet_jax.import_data --dataset={name} --source=DIR_WITH_NPZ_FILES "
            f"{where if data_dir else ''}".rstrip())
  else:
    hint = "prepare it with tfds on a machine with internet access and copy the data_dir here"
  if download and name != "imagenet2012" and _online():
    try:
      builder.download_and_prepare()
      return builder
    except Exception as e:  # tfds raises many kinds of errors on a failed download
      raise DatasetNotFoundError(
          f"dataset {name!r} is not prepared in {where} and tfds could not download it "
          f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); {hint}") from None
  raise DatasetNotFoundError(f"dataset {name!r} is not prepared in {where}; {hint}")


def _online(host: str = "storage.googleapis.com", timeout: float = 3.0) -> bool:
  """Whether tfds's download hosts are reachable (offline, tfds retries for minutes)."""
  try:
    socket.create_connection((host, 443), timeout=timeout).close()
    return True
  except OSError:
    return False


# ---------------------------------------------------------------------------------------------
# Preprocessing. `seed` arguments are stateless seeds: int tensors of shape [2].


def cifar_train(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """4-pixel zero padding, random 32x32 crop, random horizontal flip. ``[32, 32, 3]``."""
  crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  image = tf.pad(image, [[4, 4], [4, 4], [0, 0]])
  image = tf.image.stateless_random_crop(image, [32, 32, 3], seed=crop_seed)
  return tf.image.stateless_random_flip_left_right(image, seed=flip_seed)


def _resize(image: tf.Tensor, size: int, antialias: bool) -> tf.Tensor:
  """``image [h, w, 3]`` resized bilinearly to ``[size, size, 3]`` uint8 (rounded and clipped
  to the pixel range); ``antialias``: widen the filter where it shrinks."""
  image = tf.image.resize(image, [size, size], method="bilinear", antialias=antialias)
  return tf.cast(tf.round(tf.clip_by_value(image, 0.0, 255.0)), tf.uint8)


def _center_window(shape: tf.Tensor, size: int, crop_padding: int = 32) -> tf.Tensor:
  """``center_crop_window`` from the JPEG's ``[h, w, c]`` shape."""
  h, w = shape[0], shape[1]
  side = tf.cast(size / (size + crop_padding) * tf.cast(tf.minimum(h, w), tf.float32), tf.int32)
  return tf.stack([(h - side + 1) // 2, (w - side + 1) // 2, side, side])


def center_crop_window(image_bytes: tf.Tensor, size: int) -> tf.Tensor:
  """The eval crop's window ``[y, x, h, w]`` (int32): the centre square of side
  ``size / (size + 32)`` of the JPEG's shorter side (224 of 256)."""
  return _center_window(tf.image.extract_jpeg_shape(image_bytes), size)


def random_crop_window(image_bytes: tf.Tensor, size: int, seed: tf.Tensor) -> tf.Tensor:
  """The Inception crop's window ``[y, x, h, w]`` (int32): a random box of 8-100% of the
  JPEG's area and aspect ratio 3/4-4/3 (10 tries; else the centre crop's window)."""
  box_seed = tf.random.experimental.stateless_split(seed, 2)[0]
  shape = tf.image.extract_jpeg_shape(image_bytes)
  begin, crop, _ = tf.image.stateless_sample_distorted_bounding_box(
      shape, bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], shape=[1, 1, 4]), seed=box_seed,
      min_object_covered=0.1, aspect_ratio_range=(3 / 4, 4 / 3), area_range=(0.08, 1.0),
      max_attempts=10, use_image_if_no_bounding_boxes=True)
  failed = tf.reduce_all(tf.equal(crop[:2], shape[:2]))  # the sampler gave up: whole image
  return tf.where(failed, _center_window(shape, size),
                  tf.concat([begin[:2], crop[:2]], axis=0))


def decode_and_center_crop(image_bytes: tf.Tensor, size: int, antialias: bool = False
                           ) -> tf.Tensor:
  """Eval crop: the centre crop's window decoded from the JPEG directly, then resized to
  ``[size, size, 3]`` uint8 (``antialias``: widen the filter where it shrinks)."""
  window = center_crop_window(image_bytes, size)
  return _resize(tf.image.decode_and_crop_jpeg(image_bytes, window, channels=3), size, antialias)


def decode_and_random_crop(image_bytes: tf.Tensor, size: int, seed: tf.Tensor,
                           antialias: bool = False) -> tf.Tensor:
  """Training crop: the Inception crop's window decoded from the JPEG directly, resized to
  ``[size, size, 3]`` uint8 (``antialias``: widen the filter where it shrinks), and flipped
  at random."""
  window = random_crop_window(image_bytes, size, seed)
  image = _resize(tf.image.decode_and_crop_jpeg(image_bytes, window, channels=3), size,
                  antialias)
  flip_seed = tf.random.experimental.stateless_split(seed, 2)[1]
  return tf.image.stateless_random_flip_left_right(image, seed=flip_seed)


def preprocess(example: dict, spec: DatasetSpec, train: bool, seed: tf.Tensor | None,
               antialias: bool = False) -> dict:
  """One tfds example -> ``{'image': [S, S, 3] uint8, 'label': int32}`` (``antialias``: of the
  ImageNet crops' resize)."""
  image = example["image"]
  if spec.kind == "cifar":
    image = cifar_train(image, seed) if train else image
  elif train:
    image = decode_and_random_crop(image, spec.image_size, seed, antialias)
  else:
    image = decode_and_center_crop(image, spec.image_size, antialias)
  return {"image": image, "label": tf.cast(example["label"], tf.int32)}


# ---------------------------------------------------------------------------------------------
# Datasets.


def _read(builder: tfds.core.DatasetBuilder, split: str, spec: DatasetSpec,
          shuffle_seed: int | None, raw: bool = False) -> tf.data.Dataset:
  """The split's examples (``raw``: every image as its encoded bytes), files shuffled with
  ``shuffle_seed`` (None: in order); each example carries its ``tfds_id``."""
  from tensorflow.python.util import deprecation

  skip = raw or spec.kind == "imagenet"
  decoders = {"image": tfds.decode.SkipDecoding()} if skip else None
  read_config = tfds.ReadConfig(shuffle_seed=shuffle_seed, try_autocache=False,
                                add_tfds_id=True)
  with deprecation.silence():  # tfds builds the ids with TF's deprecated CounterV2
    return builder.as_dataset(split=split, shuffle_files=shuffle_seed is not None,
                              decoders=decoders, read_config=read_config)


def process_batch_size(global_batch: int, processes: int | None = None) -> int:
  """This process's share of the global batch (``processes``: default, the run's count);
  ValueError if it does not divide evenly."""
  n = processes or jax.process_count()
  if global_batch <= 0 or global_batch % n:
    raise ValueError(f"batch_size={global_batch} must be a positive multiple of the number of "
                     f"processes ({n})")
  return global_batch // n


def steps_per_epoch(builder: tfds.core.DatasetBuilder, spec: DatasetSpec,
                    global_batch: int, processes: int | None = None) -> int:
  """Full global batches per epoch of the training split (the remainder is dropped), the same
  for either sharding: every process's even share holds at least its rows of them."""
  examples = builder.info.splits[spec.train_split].num_examples
  process_batch_size(global_batch, processes)  # divisible over the processes
  steps = examples // global_batch
  if steps == 0:
    raise ValueError(f"batch_size={global_batch} is larger than the training split "
                     f"({examples} examples)")
  return steps


class BadImageError(ValueError):
  """A training image cannot be decoded."""


def _epoch_order(builder: tfds.core.DatasetBuilder, spec: DatasetSpec, global_batch: int,
                 seed: int, epoch: int, shuffle_buffer: int, sharding: str = "process",
                 process: tuple[int, int] | None = None, raw: bool = False) -> tf.data.Dataset:
  """``(g, example)``: this process's examples of epoch ``epoch``, in training order.

  ``g`` is the example's position in the epoch's global batches (global batch ``g //
  global_batch``, row ``g % global_batch``); process p of P holds rows ``[p * b, (p + 1) * b)``
  of each, ``b = global_batch / P``. ``process``: ``(index, count)``, default this process's.
  """
  index, count = process or (jax.process_index(), jax.process_count())
  if sharding not in SHARDINGS:
    raise ValueError(f"input_sharding={sharding!r} is not valid; choose one of "
                     f"{', '.join(SHARDINGS)}")
  steps = steps_per_epoch(builder, spec, global_batch, count)
  batch = global_batch // count
  whole = sharding == "global" or count == 1
  # 'process': this process's share, which holds at least steps * batch examples.
  split = spec.train_split if whole else tfds.even_splits(spec.train_split, count)[index]
  ds = _read(builder, split, spec, shuffle_seed=seed + epoch, raw=raw)
  ds = ds.shuffle(shuffle_buffer, seed=seed + epoch, reshuffle_each_iteration=False)
  if count == 1:
    return ds.take(steps * global_batch).enumerate()
  if whole:
    ds = ds.take(steps * global_batch).enumerate()
    return ds.filter(lambda g, ex: (g % global_batch) // batch == index)
  row = lambda j: (j // batch) * global_batch + index * batch + j % batch
  return ds.take(steps * batch).enumerate().map(lambda j, ex: (row(j), ex))


def undecodable(builder: tfds.core.DatasetBuilder, spec: DatasetSpec, global_batch: int,
                seed: int, step: int, shuffle_buffer: int, sharding: str = "process"
                ) -> list[str]:
  """The ``tfds_id`` of every image of this process's rows of global batch ``step`` (0-based)
  that fails to decode."""
  batch = process_batch_size(global_batch)
  epoch, position = divmod(step, steps_per_epoch(builder, spec, global_batch))
  ds = _epoch_order(builder, spec, global_batch, seed, epoch, shuffle_buffer, sharding,
                    raw=True)
  bad = []
  for _, ex in ds.skip(position * batch).take(batch):
    try:
      tf.io.decode_image(ex["image"], channels=3, expand_animations=False)
    except tf.errors.OpError:
      bad.append(ex["tfds_id"].numpy().decode())
  return bad


def train_batches(builder: tfds.core.DatasetBuilder, spec: DatasetSpec, global_batch: int,
                  seed: int, start_step: int = 0, shuffle_buffer: int = 50_000,
                  skip_bad_images: bool = False, sharding: str = "process",
                  antialias: bool = False) -> Iterator[dict[str, np.ndarray]]:
  """This process's training batches from global step ``start_step`` on, epoch after epoch:
  its rows of each global batch (``b = global_batch / P`` of them), read as ``sharding``
  says (module docstring), decoded and augmented (``antialias``: of the ImageNet crops'
  resize).

  An image that fails to decode stops the run with a :class:`BadImageError` naming it
  (``tfds_id``), or, with ``skip_bad_images``, is dropped with a warning (its batch then takes
  the next example, so later batches shift).
  """
  batch = process_batch_size(global_batch)
  steps = steps_per_epoch(builder, spec, global_batch)
  epoch, skip = divmod(start_step, steps)
  # Bound now: a generator closed at interpreter exit, when the module global `tf` may already
  # be None, still evaluates this clause.
  op_error = tf.errors.OpError
  if shuffle_buffer > 10 * batch:
    logging.info("Reading the training data: the first batch waits for the %d-example "
                 "shuffle buffer to fill", shuffle_buffer)
  while True:
    ds = _epoch_order(builder, spec, global_batch, seed, epoch, shuffle_buffer, sharding)
    ds = ds.skip(skip * batch)
    # Example g of epoch e is augmented with the stateless seed (seed * 1000003 + e, g).
    base = tf.constant(seed * 1_000_003 + epoch, tf.int64)
    ds = ds.map(lambda g, ex, b=base: preprocess(ex, spec, True, tf.stack([b, g]), antialias),
                num_parallel_calls=AUTOTUNE, deterministic=True)
    if skip_bad_images:
      ds = ds.ignore_errors(log_warning=True)
    ds = ds.batch(batch, drop_remainder=True).prefetch(AUTOTUNE).with_options(_options())
    it, step = iter(tfds.as_numpy(ds)), epoch * steps + skip
    while True:
      try:
        yield next(it)
      except StopIteration:
        break
      except op_error as e:
        bad = undecodable(builder, spec, global_batch, seed, step, shuffle_buffer, sharding)
        names = ", ".join(bad) or "unknown"
        raise BadImageError(
            f"training image {names} (global batch {step + 1}) cannot be decoded "
            f"({e.message.splitlines()[0]}); repair or remove it, or set "
            "--config.skip_bad_images=True to skip such images") from None
      step += 1
    epoch, skip = epoch + 1, 0


def eval_batches(builder: tfds.core.DatasetBuilder, spec: DatasetSpec, global_batch: int,
                 antialias: bool = False) -> Iterator[dict[str, np.ndarray]]:
  """This process's evaluation batches: every example of the split once, padded and masked
  (``antialias``: of the ImageNet crops' resize).

  Every process yields the same number of batches (collective steps need it).
  """
  batch = process_batch_size(global_batch)
  total = builder.info.splits[spec.eval_split].num_examples
  most = -(-total // jax.process_count())  # the largest per-process share
  num_batches = math.ceil(most / batch)
  ds = _read(builder, tfds.split_for_jax_process(spec.eval_split), spec, shuffle_seed=None)
  ds = ds.map(lambda ex: dict(preprocess(ex, spec, False, None, antialias), mask=tf.constant(1.0)),
              num_parallel_calls=AUTOTUNE)
  size = spec.image_size
  pad = tf.data.Dataset.from_tensors({"image": tf.zeros([size, size, 3], tf.uint8),
                                      "label": tf.constant(0, tf.int32),
                                      "mask": tf.constant(0.0)}).repeat()
  ds = ds.concatenate(pad).take(num_batches * batch).batch(batch).prefetch(AUTOTUNE)
  ds = ds.with_options(_options())
  return iter(tfds.as_numpy(ds))


@dataclasses.dataclass(frozen=True)
class TfdsSource:
  """The tfds input of the training loop (``config.input = 'tfds'``): this process's batches,
  read, decoded and augmented on the host."""

  builder: tfds.core.DatasetBuilder
  spec: DatasetSpec
  global_batch: int
  seed: int
  shuffle_buffer: int = 50_000
  skip_bad_images: bool = False
  sharding: str = "process"  # how processes share the training split (module docstring)
  eval_batch: int | None = None  # default: global_batch
  antialias: bool = False  # of the ImageNet crops' resize (module docstring)

  @property
  def steps_per_epoch(self) -> int:
    return steps_per_epoch(self.builder, self.spec, self.global_batch)

  def train_batches(self, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """:func:`train_batches` from global step ``start_step`` on."""
    return train_batches(self.builder, self.spec, self.global_batch, self.seed, start_step,
                         self.shuffle_buffer, self.skip_bad_images, self.sharding,
                         self.antialias)

  def eval_batches(self) -> Iterator[dict[str, np.ndarray]]:
    """:func:`eval_batches`: every example of the eval split once, padded and masked."""
    return eval_batches(self.builder, self.spec, self.eval_batch or self.global_batch,
                        self.antialias)
