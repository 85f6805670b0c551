"""The host input pipelines: tfds datasets (CIFAR-10/100, ImageNet, Imagenette, any
``tfds:NAME``) and image folders (``folder:DIR``, :mod:`regnet_jax.data.folder`).

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
padded and the padding masked out (``batch['mask'] == 0``). A folder is read the same way, its
sorted file list standing for tfds's records: a process's share is a contiguous part of it,
and an epoch's order is a seeded permutation of the share (no shuffle buffer needed).

An image that cannot be decoded stops the run with a :class:`BadImageError` naming it (tfds's
record id, or the file's path); with ``skip_bad_images`` it is left out and counted in a
warning.

Batches are dicts of numpy arrays: ``image [b, S, S, 3] uint8`` pixels (the train and eval
steps normalise them on the device, so the host moves a quarter of float32's bytes), ``label
[b] int32`` and, for evaluation, ``mask [b] float32``; ``b`` is the per-process batch.

Small images (``spec.kind == 'cifar'``) are padded by ``S / 8``, randomly cropped and
flipped, and evaluated whole (resized to ``S x S`` first where they are not that size). Photos
(``'imagenet'``) get the Inception crop and a flip, and the centre crop for evaluation, each
decoded straight from the JPEG where the image is one. Their crops are resized bilinearly to
``S x S``, by default without antialiasing (as big_vision's Inception crop does, and flax's
ImageNet example with its bicubic resize): a shrinking crop is sampled at the output pixels
only, and the host preprocesses about 1.7x as many images per core as with antialiasing. With
``antialias=True`` (``config.resize_antialias``) the filter widens as it shrinks, like
torchvision's ``RandomResizedCrop`` and ``Resize`` (PIL), which the paper's PyTorch baselines
used. Host cost of each choice: ``benchmarks/preprocess.py``.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import socket
from collections.abc import Callable, Iterator

import jax
import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from regnet_jax import console
from regnet_jax.data import SHARDINGS, datasets, folder
from regnet_jax.data.datasets import DatasetSpec

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


# What the pipeline reads: a tfds builder, or a listed image folder.
Data = tfds.core.DatasetBuilder | folder.ImageFolder


def open_data(config, download: bool = True) -> Data:
  """The data of ``config.dataset``: the listed folder of ``folder:DIR``, else the prepared
  tfds builder (:func:`get_builder`, in ``config.data_dir``; ``download``: where needed and
  possible)."""
  if config.dataset.startswith(datasets.FOLDER_PREFIX):
    return folder.from_config(config)
  return get_builder(config.dataset, config.get("data_dir"), download)


def get_builder(name: str, data_dir: str | None, download: bool = True
                ) -> tfds.core.DatasetBuilder:
  """The prepared tfds builder of dataset ``name`` (a dataset of the paper, or
  ``tfds:NAME``); downloads and prepares it first where tfds can.

  Raises:
    ValueError: an unknown dataset, or a folder.
    DatasetNotFoundError: not prepared and not downloadable here, with the command that
      imports a local copy (or, for ImageNet, where to put the manual download).
  """
  if name.startswith(datasets.TFDS_PREFIX):
    tfds_name, table = name[len(datasets.TFDS_PREFIX):], None
  elif name in datasets.DATASETS:
    table = datasets.DATASETS[name]
    tfds_name = table.tfds_name
  elif name.startswith(datasets.FOLDER_PREFIX):
    raise ValueError(f"dataset {name!r} is a folder: it has no tfds builder")
  else:
    raise ValueError(f"unknown dataset {name!r}; valid datasets: {datasets.VALID}")
  try:
    builder = tfds.builder(tfds_name, data_dir=data_dir)
  except ValueError as e:  # tfds's DatasetNotFoundError, an unknown config or version
    raise ValueError(f"tfds has no dataset {tfds_name!r} ({str(e).splitlines()[0][:200]}); "
                     "tfds.list_builders() names the datasets it has") from None
  if builder.is_prepared():
    return builder
  where = (f"--data_dir={data_dir}" if data_dir else
           f"{os.path.dirname(os.path.dirname(builder.data_dir))} (tfds's default data_dir)")
  manual = getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None)
  prepare = (f"python -c \"import tensorflow_datasets as tfds; tfds.builder('{tfds_name}', "
             f"data_dir={data_dir!r}).download_and_prepare()\"")
  if name == "imagenet2012":
    hint = ("ImageNet is downloaded by hand: put ILSVRC2012_img_train.tar and "
            "ILSVRC2012_img_val.tar into <data_dir>/downloads/manual (tfds's manual_dir) and "
            f"run once: {prepare}")
  elif table is not None and table.importable:
    hint = ("on a machine without internet access import a local copy with: python -m "
            f"regnet_jax.import_data --dataset={name} --source=DIR_WITH_NPZ_FILES "
            f"{where if data_dir else ''}".rstrip())
  elif manual:
    hint = (f"{tfds_name} is downloaded by hand: put the files tfds's catalog page for it "
            f"names into <data_dir>/downloads/manual (tfds's manual_dir) and run once: {prepare}")
  else:
    hint = (f"prepare it on a machine with internet access ({prepare}) and copy the data_dir "
            "here, or put the images in class subfolders and use folder:DIR")
  if download and not manual and _online():
    try:
      builder.download_and_prepare()
      return builder
    except Exception as e:  # tfds raises many kinds of errors on a failed download
      raise DatasetNotFoundError(
          f"dataset {name!r} is not prepared in {where} and tfds could not download it "
          f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); {hint}") from None
  raise DatasetNotFoundError(f"dataset {name!r} is not prepared in {where}; {hint}")


def tfds_spec(name: str, builder: tfds.core.DatasetBuilder, train_split: str | None = None,
              eval_split: str | None = None) -> DatasetSpec:
  """The spec of ``tfds:NAME`` from its prepared builder's metadata: classes, image shape
  (small images CIFAR-style, photos with the ImageNet crops) and encoding, and the splits
  (default: ``train``, and ``validation`` or else ``test``), ImageNet's statistics.

  Raises:
    ValueError: not an image classification dataset, or no such split, in one line.
  """
  features = dict(builder.info.features.items())
  image, label = features.get("image"), features.get("label")
  if not (isinstance(image, tfds.features.Image)
          and isinstance(label, tfds.features.ClassLabel)):
    raise ValueError(f"{name} is not an image classification dataset: the pipeline reads an "
                     "'image' feature and a 'label' class feature; its features are "
                     f"{', '.join(features.keys())}")
  splits = list(builder.info.splits)
  if train_split is None and "train" in splits:
    train_split = "train"
  if eval_split is None:
    eval_split = next((s for s in ("validation", "test") if s in splits), None)
  if train_split is None or eval_split is None:
    raise ValueError(f"{name} has no {'train' if train_split is None else 'validation or test'} "
                     f"split (its splits: {', '.join(splits)}); choose them, e.g. "
                     "--config.train_split='train[:90%]' --config.eval_split='train[90%:]'")
  for split in (train_split, eval_split):
    num_examples(builder, split)  # a readable split
  kind, size = datasets.default_kind(tuple(image.shape[:2]))
  return DatasetSpec(name, label.num_classes, kind, size, datasets.IMAGENET_MEAN,
                     datasets.IMAGENET_STD, train_split, eval_split,
                     name[len(datasets.TFDS_PREFIX):], tuple(label.names),
                     jpeg=image.encoding_format == "jpeg")


def num_examples(data: Data, split: str) -> int:
  """The number of examples of ``split`` (tfds's split syntax, e.g. ``train[:90%]``, or a
  folder's split); a ValueError naming the splits there are if there is no such split."""
  if isinstance(data, folder.ImageFolder):
    return data.num_examples(split)
  try:
    return data.info.splits[split].num_examples
  except (KeyError, ValueError) as e:
    raise ValueError(f"{data.name} has no split {split!r} ({str(e).splitlines()[0][:150]}); "
                     f"its splits: {', '.join(data.info.splits)} (--config.train_split, "
                     "--config.eval_split)") from None


def _online(host: str = "storage.googleapis.com", timeout: float = 3.0) -> bool:
  """Whether tfds's download hosts are reachable (offline, tfds retries for minutes)."""
  try:
    socket.create_connection((host, 443), timeout=timeout).close()
    return True
  except OSError:
    return False


# ---------------------------------------------------------------------------------------------
# Preprocessing. `seed` arguments are stateless seeds: int tensors of shape [2].


def _image_bytes(example: dict) -> tf.Tensor:
  """An example's stored image (tfds's), or its file's bytes (a folder's, read here)."""
  return example["image"] if "image" in example else tf.io.read_file(example["tfds_id"])


def small_image(image: tf.Tensor, size: int, antialias: bool = False) -> tf.Tensor:
  """A small image, decoded (``[h, w, c]`` uint8, c 1, 3 or 4) or encoded (any format
  ``tf.io.decode_image`` reads), as ``[size, size, 3]`` uint8: grey made RGB, alpha dropped,
  resized (:func:`_resize`) only where it is not ``size x size`` already."""
  if image.dtype == tf.string:
    image = tf.io.decode_image(image, channels=3, expand_animations=False)
  elif image.shape[-1] == 1:
    image = tf.image.grayscale_to_rgb(image)
  elif image.shape[-1] == 4:
    image = image[..., :3]
  if image.shape[:2] != (size, size):
    image = _resize(image, size, antialias)
  return image


def cifar_train(image: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """``[S, S, 3]`` -> zero padding of ``S / 8`` pixels (4 for CIFAR), random ``S x S`` crop,
  random horizontal flip."""
  size = image.shape[0]
  pad = size // 8
  crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  image = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
  image = tf.image.stateless_random_crop(image, [size, size, 3], seed=crop_seed)
  return tf.image.stateless_random_flip_left_right(image, seed=flip_seed)


def _resize(image: tf.Tensor, size: int, antialias: bool) -> tf.Tensor:
  """``image [h, w, 3]`` resized bilinearly to ``[size, size, 3]`` uint8 (rounded and clipped
  to the pixel range); ``antialias``: widen the filter where it shrinks."""
  image = tf.image.resize(image, [size, size], method="bilinear", antialias=antialias)
  return tf.cast(tf.round(tf.clip_by_value(image, 0.0, 255.0)), tf.uint8)


def _center_window(shape: tf.Tensor, size: int, crop_padding: int = 32) -> tf.Tensor:
  """``center_crop_window`` from the image's ``[h, w, c]`` shape."""
  h, w = shape[0], shape[1]
  side = tf.cast(size / (size + crop_padding) * tf.cast(tf.minimum(h, w), tf.float32), tf.int32)
  return tf.stack([(h - side + 1) // 2, (w - side + 1) // 2, side, side])


def center_crop_window(image_bytes: tf.Tensor, size: int) -> tf.Tensor:
  """The eval crop's window ``[y, x, h, w]`` (int32): the centre square of side
  ``size / (size + 32)`` of the JPEG's shorter side (224 of 256)."""
  return _center_window(tf.image.extract_jpeg_shape(image_bytes), size)


def _random_window(shape: tf.Tensor, size: int, seed: tf.Tensor) -> tf.Tensor:
  """``random_crop_window`` from the image's ``[h, w, c]`` shape."""
  box_seed = tf.random.experimental.stateless_split(seed, 2)[0]
  begin, crop, _ = tf.image.stateless_sample_distorted_bounding_box(
      shape, bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], shape=[1, 1, 4]), seed=box_seed,
      min_object_covered=0.1, aspect_ratio_range=(3 / 4, 4 / 3), area_range=(0.08, 1.0),
      max_attempts=10, use_image_if_no_bounding_boxes=True)
  failed = tf.reduce_all(tf.equal(crop[:2], shape[:2]))  # the sampler gave up: whole image
  return tf.where(failed, _center_window(shape, size),
                  tf.concat([begin[:2], crop[:2]], axis=0))


def random_crop_window(image_bytes: tf.Tensor, size: int, seed: tf.Tensor) -> tf.Tensor:
  """The Inception crop's window ``[y, x, h, w]`` (int32): a random box of 8-100% of the
  JPEG's area and aspect ratio 3/4-4/3 (10 tries; else the centre crop's window)."""
  return _random_window(tf.image.extract_jpeg_shape(image_bytes), size, seed)


def _decode_crop(image_bytes: tf.Tensor, window: Callable[[tf.Tensor], tf.Tensor], jpeg: bool
                 ) -> tf.Tensor:
  """The ``window(shape)`` crop of an encoded image, ``[h, w, 3]`` uint8: a JPEG's decoded
  from the JPEG directly; with ``jpeg`` False, an image that is not one (PNG, GIF, BMP) is
  decoded whole first."""
  def from_jpeg() -> tf.Tensor:
    box = window(tf.image.extract_jpeg_shape(image_bytes))
    return tf.image.decode_and_crop_jpeg(image_bytes, box, channels=3)

  def from_any() -> tf.Tensor:
    image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
    y, x, h, w = tf.unstack(window(tf.shape(image)))
    return image[y:y + h, x:x + w]

  return from_jpeg() if jpeg else tf.cond(tf.io.is_jpeg(image_bytes), from_jpeg, from_any)


def decode_and_center_crop(image_bytes: tf.Tensor, size: int, antialias: bool = False,
                           jpeg: bool = True) -> tf.Tensor:
  """Eval crop: the centre crop's window decoded from the image (``jpeg``: every image is a
  JPEG; else any format), then resized to ``[size, size, 3]`` uint8 (``antialias``: widen the
  filter where it shrinks)."""
  window = lambda shape: _center_window(shape, size)
  return _resize(_decode_crop(image_bytes, window, jpeg), size, antialias)


def decode_and_random_crop(image_bytes: tf.Tensor, size: int, seed: tf.Tensor,
                           antialias: bool = False, jpeg: bool = True) -> tf.Tensor:
  """Training crop: the Inception crop's window decoded from the image (``jpeg``: every image
  is a JPEG; else any format), resized to ``[size, size, 3]`` uint8 (``antialias``: widen the
  filter where it shrinks), and flipped at random."""
  window = lambda shape: _random_window(shape, size, seed)
  image = _resize(_decode_crop(image_bytes, window, jpeg), size, antialias)
  flip_seed = tf.random.experimental.stateless_split(seed, 2)[1]
  return tf.image.stateless_random_flip_left_right(image, seed=flip_seed)


def preprocess(example: dict, spec: DatasetSpec, train: bool, seed: tf.Tensor | None,
               antialias: bool = False) -> dict:
  """One example (tfds's, or a folder's) -> ``{'image': [S, S, 3] uint8, 'label': int32}``
  (``antialias``: of the resize)."""
  image = _image_bytes(example)
  if spec.kind == "cifar":
    image = small_image(image, spec.image_size, antialias)
    image = cifar_train(image, seed) if train else image
  elif train:
    image = decode_and_random_crop(image, spec.image_size, seed, antialias, spec.jpeg)
  else:
    image = decode_and_center_crop(image, spec.image_size, antialias, spec.jpeg)
  return {"image": image, "label": tf.cast(example["label"], tf.int32)}


# ---------------------------------------------------------------------------------------------
# Datasets.


def read_split(data: Data, split: str, spec: DatasetSpec, shuffle_seed: int | None,
          raw: bool = False, share: tuple[int, int] | None = None) -> tf.data.Dataset:
  """The examples of ``split``, or of its ``share = (index, count)``: the index-th of
  ``count`` even parts (``tfds.even_splits``). ``shuffle_seed`` (None: in order) shuffles a
  tfds split's files, or permutes a folder's images. Each example carries its id,
  ``tfds_id``: tfds's record id, or the image file's path. ``raw``: tfds's images as their
  encoded bytes (a folder's images are read when preprocessed)."""
  if isinstance(data, folder.ImageFolder):
    paths, labels = data.examples(split, share)
    if shuffle_seed is not None:
      order = np.random.default_rng(shuffle_seed).permutation(len(paths))
      paths, labels = paths[order], labels[order]
    return tf.data.Dataset.from_tensor_slices({"tfds_id": paths.astype(str), "label": labels})
  from tensorflow.python.util import deprecation

  if share is not None:
    split = tfds.even_splits(split, share[1])[share[0]]
  skip = raw or spec.kind == "imagenet"
  decoders = {"image": tfds.decode.SkipDecoding()} if skip else None
  read_config = tfds.ReadConfig(shuffle_seed=shuffle_seed, try_autocache=False,
                                add_tfds_id=True)
  with deprecation.silence():  # tfds builds the ids with TF's deprecated CounterV2
    return data.as_dataset(split=split, shuffle_files=shuffle_seed is not None,
                           decoders=decoders, read_config=read_config)


def process_batch_size(global_batch: int, processes: int | None = None) -> int:
  """This process's share of the global batch (``processes``: default, the run's count);
  ValueError if it does not divide evenly."""
  n = processes or jax.process_count()
  if global_batch <= 0 or global_batch % n:
    raise ValueError(f"batch_size={global_batch} must be a positive multiple of the number of "
                     f"processes ({n})")
  return global_batch // n


def steps_per_epoch(data: Data, spec: DatasetSpec, global_batch: int,
                    processes: int | None = None) -> int:
  """Full global batches per epoch of the training split (the remainder is dropped), the same
  for either sharding: every process's even share holds at least its rows of them."""
  examples = num_examples(data, spec.train_split)
  process_batch_size(global_batch, processes)  # divisible over the processes
  steps = examples // global_batch
  if steps == 0:
    raise ValueError(f"batch_size={global_batch} is larger than the training split "
                     f"({examples} examples)")
  return steps


class BadImageError(ValueError):
  """An image cannot be read or decoded."""


BAD_IMAGE_HINT = ("repair or remove it, or set --config.skip_bad_images=True to skip such "
                  "images")


def _reason(error: tf.errors.OpError) -> str:
  """The first line of TF's message, without the ``{{function_node ...}}`` and tf.data's
  "Error in user-defined function passed to ... with iterator: ...:" it may start with."""
  line = re.sub(r"\{\{[^}]*\}\}\s*", "", error.message.splitlines()[0])
  return re.sub(r"^Error in user-defined function passed to .*? with iterator: \S+: ", "", line)


def _epoch_order(data: Data, spec: DatasetSpec, global_batch: int, seed: int, epoch: int,
                 shuffle_buffer: int, sharding: str = "process",
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
  steps = steps_per_epoch(data, spec, global_batch, count)
  batch = global_batch // count
  whole = sharding == "global" or count == 1
  # 'process': this process's share, which holds at least steps * batch examples.
  ds = read_split(data, spec.train_split, spec, shuffle_seed=seed + epoch, raw=raw,
             share=None if whole else (index, count))
  if not isinstance(data, folder.ImageFolder):  # a folder's order is a whole permutation
    ds = ds.shuffle(shuffle_buffer, seed=seed + epoch, reshuffle_each_iteration=False)
  if count == 1:
    return ds.take(steps * global_batch).enumerate()
  if whole:
    ds = ds.take(steps * global_batch).enumerate()
    return ds.filter(lambda g, ex: (g % global_batch) // batch == index)
  row = lambda j: (j // batch) * global_batch + index * batch + j % batch
  return ds.take(steps * batch).enumerate().map(lambda j, ex: (row(j), ex))


def _undecodable(examples: tf.data.Dataset) -> list[str]:
  """The ids (``tfds_id``) of the raw examples whose image cannot be read or decoded."""
  bad = []
  for ex in examples:
    try:
      tf.io.decode_image(_image_bytes(ex), channels=3, expand_animations=False)
    except tf.errors.OpError:
      bad.append(ex["tfds_id"].numpy().decode())
  return bad


def undecodable(data: Data, spec: DatasetSpec, global_batch: int, seed: int, step: int,
                shuffle_buffer: int, sharding: str = "process") -> list[str]:
  """The ``tfds_id`` of every image of this process's rows of global batch ``step`` (0-based)
  that fails to decode."""
  batch = process_batch_size(global_batch)
  epoch, position = divmod(step, steps_per_epoch(data, spec, global_batch))
  ds = _epoch_order(data, spec, global_batch, seed, epoch, shuffle_buffer, sharding, raw=True)
  return _undecodable(ds.skip(position * batch).take(batch).map(lambda g, ex: ex))


def train_batches(data: Data, spec: DatasetSpec, global_batch: int, seed: int,
                  start_step: int = 0, shuffle_buffer: int = 50_000,
                  skip_bad_images: bool = False, sharding: str = "process",
                  antialias: bool = False) -> Iterator[dict[str, np.ndarray]]:
  """This process's training batches from global step ``start_step`` on, epoch after epoch:
  its rows of each global batch (``b = global_batch / P`` of them), read as ``sharding``
  says (module docstring), decoded and augmented (``antialias``: of the resize).

  An image that fails to decode stops the run with a :class:`BadImageError` naming it
  (``tfds_id``: tfds's record id, or the image's path), or, with ``skip_bad_images``, is left
  out and counted in a warning: its batch then takes the next example (so later batches
  shift, and the epoch may run one batch short).
  """
  batch = process_batch_size(global_batch)
  steps = steps_per_epoch(data, spec, global_batch)
  epoch, skip = divmod(start_step, steps)
  # Bound now: a generator closed at interpreter exit, when the module global `tf` may already
  # be None, still evaluates this clause.
  op_error = tf.errors.OpError
  if shuffle_buffer > 10 * batch and not isinstance(data, folder.ImageFolder):
    logging.info("Reading the training data: the first batch waits for the %d-example "
                 "shuffle buffer to fill", shuffle_buffer)
  skipped = 0  # images left out so far
  while True:
    ds = _epoch_order(data, spec, global_batch, seed, epoch, shuffle_buffer, sharding)
    ds = ds.skip(skip * batch)
    # Example g of epoch e is augmented with the stateless seed (seed * 1000003 + e, g).
    base = tf.constant(seed * 1_000_003 + epoch, tf.int64)
    augment = lambda g, ex, b=base: preprocess(ex, spec, True, tf.stack([b, g]), antialias)
    if skip_bad_images:
      # Each example carries its index k in this process's epoch: the gaps that ignore_errors
      # leaves count the images left out. The last, partial batch is read (and dropped below)
      # so that every gap is seen.
      ds = ds.enumerate(skip * batch).map(lambda k, ex, f=augment: dict(f(*ex), index=k),
                                          num_parallel_calls=AUTOTUNE, deterministic=True)
      ds = ds.ignore_errors().batch(batch)
    else:
      ds = ds.map(augment, num_parallel_calls=AUTOTUNE, deterministic=True)
      ds = ds.batch(batch, drop_remainder=True)
    ds = ds.prefetch(AUTOTUNE).with_options(_options())
    it, step = iter(tfds.as_numpy(ds)), epoch * steps + skip
    read = skip * batch  # this process's examples of the epoch read so far (kept or left out)
    while True:
      try:
        out = next(it)
      except StopIteration:
        break
      except op_error as e:
        bad = undecodable(data, spec, global_batch, seed, step, shuffle_buffer, sharding)
        raise BadImageError(
            f"training image {', '.join(bad) or 'unknown'} (global batch {step + 1}) cannot "
            f"be decoded ({_reason(e)}); {BAD_IMAGE_HINT}") from None
      if skip_bad_images:
        index = out.pop("index")
        skipped = _count_skipped(skipped, int(index[-1]) + 1 - read - len(index), epoch)
        read = int(index[-1]) + 1
        if len(index) < batch:  # the epoch's remainder
          break
      yield out
      step += 1
    if skip_bad_images:  # left out at the end of the epoch
      skipped = _count_skipped(skipped, steps * batch - read, epoch)
    epoch, skip = epoch + 1, 0


def _count_skipped(total: int, new: int, epoch: int) -> int:
  """``total + new``, with a warning when ``new`` images were left out."""
  if new:
    logging.warning("Skipped %d unreadable training image%s in epoch %d (%d so far; "
                    "skip_bad_images=True)", new, "s" * (new > 1), epoch, total + new)
  return total + new


def eval_batches(data: Data, spec: DatasetSpec, global_batch: int, antialias: bool = False,
                 skip_bad_images: bool = False) -> Iterator[dict[str, np.ndarray]]:
  """This process's evaluation batches: every example of the split once, padded and masked
  (``antialias``: of the resize).

  Every process yields the same number of batches (collective steps need it). An image that
  fails to decode stops the evaluation with a :class:`BadImageError` naming it, or, with
  ``skip_bad_images``, is left out (the padding takes its place) and counted in a warning.
  """
  batch = process_batch_size(global_batch)
  total = num_examples(data, spec.eval_split)
  most = -(-total // jax.process_count())  # the largest per-process share
  num_batches = math.ceil(most / batch)
  share = (jax.process_index(), jax.process_count())
  ds = read_split(data, spec.eval_split, spec, shuffle_seed=None, share=share)
  ds = ds.map(lambda ex: dict(preprocess(ex, spec, False, None, antialias), mask=tf.constant(1.0)),
              num_parallel_calls=AUTOTUNE)
  if skip_bad_images:
    ds = ds.ignore_errors()
  size = spec.image_size
  pad = tf.data.Dataset.from_tensors({"image": tf.zeros([size, size, 3], tf.uint8),
                                      "label": tf.constant(0, tf.int32),
                                      "mask": tf.constant(0.0)}).repeat()
  ds = ds.concatenate(pad).take(num_batches * batch).batch(batch).prefetch(AUTOTUNE)
  ds = ds.with_options(_options())
  return _checked_eval(iter(tfds.as_numpy(ds)), data, spec, share)


def _checked_eval(batches: Iterator[dict[str, np.ndarray]], data: Data, spec: DatasetSpec,
                  share: tuple[int, int]) -> Iterator[dict[str, np.ndarray]]:
  """``batches``, with a decoding error turned into a :class:`BadImageError` that names the
  share's undecodable images, and a warning for images left out."""
  op_error = tf.errors.OpError  # bound now, as in train_batches
  seen = 0
  while True:
    try:
      out = next(batches)
    except StopIteration:
      break
    except op_error as e:
      bad = _undecodable(read_split(data, spec.eval_split, spec, None, raw=True, share=share))
      raise BadImageError(f"evaluation image {', '.join(bad) or 'unknown'} cannot be decoded "
                          f"({_reason(e)}); {BAD_IMAGE_HINT}") from None
    seen += int(out["mask"].sum())
    yield out
  expected = (len(data.examples(spec.eval_split, share)[1]) if isinstance(data, folder.ImageFolder)
              else num_examples(data, tfds.even_splits(spec.eval_split, share[1])[share[0]]))
  if seen < expected:
    logging.warning("Skipped %d unreadable evaluation image%s (skip_bad_images=True): the "
                    "evaluation covers %d of %d", expected - seen, "s" * (expected - seen > 1),
                    seen, expected)


@dataclasses.dataclass(frozen=True)
class TfdsSource:
  """The host input of the training loop (``config.input = 'tfds'``), from a tfds dataset or
  an image folder: this process's batches, read, decoded and augmented on the host."""

  data: Data
  spec: DatasetSpec
  global_batch: int
  seed: int
  shuffle_buffer: int = 50_000  # tfds datasets only: a folder's order is a whole permutation
  skip_bad_images: bool = False
  sharding: str = "process"  # how processes share the training split (module docstring)
  eval_batch: int | None = None  # default: global_batch
  antialias: bool = False  # of the resize (module docstring)

  @property
  def steps_per_epoch(self) -> int:
    return steps_per_epoch(self.data, self.spec, self.global_batch)

  def train_batches(self, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
    """:func:`train_batches` from global step ``start_step`` on."""
    return train_batches(self.data, self.spec, self.global_batch, self.seed, start_step,
                         self.shuffle_buffer, self.skip_bad_images, self.sharding,
                         self.antialias)

  def eval_batches(self) -> Iterator[dict[str, np.ndarray]]:
    """:func:`eval_batches`: every example of the eval split once, padded and masked."""
    return eval_batches(self.data, self.spec, self.eval_batch or self.global_batch,
                        self.antialias, self.skip_bad_images)
