"""ImageNet training preprocessing on one CPU core: images/s per core for each resize choice.

    python -m benchmarks.preprocess                        # the 34 varied photos in tests/testdata
    python -m benchmarks.preprocess --npz DIR/imagenet-sample-jpeg.npz --rounds 5

Each variant runs the training preprocessing (JPEG decode of the random crop, resize to 224,
flip) over every photo of the ``.npz``, in a tf.data pipeline with a private pool of one
thread, so the rate is one core's. ``float32 bicubic`` is the baseline: bicubic resize with
antialiasing, the crop's fallback as a ``tf.cond``, a float32 flip, then normalisation on the
host. The other rows are ``regnet_jax.data.pipeline`` with each
``config.resize_antialias``, and ``decode only``, the same crops decoded and no more: the
bound on any choice of resize. Variants alternate ``--rounds`` times; the table gives each
variant's median rate, its ratio to the baseline and the rate projected to ``--cores`` cores
(linear: each core decodes its own images). A second table sorts the crops by how much the
resize shrinks them, which is where antialiasing matters, with the pixels it changes.
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import time
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from regnet_jax.data import datasets, pipeline
from regnet_jax.import_data import read_npz

SAMPLE = pathlib.Path(__file__).parents[1] / "tests/testdata/imagenette/imagenet-sample-jpeg.npz"
SIZE = 224
SPEC = datasets.get_spec("imagenet2012")
Crop = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]  # (JPEG bytes, stateless seed) -> pixels
BASELINE = "float32 bicubic"


def _float32_bicubic(raw: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """The baseline's training crop: ``[224, 224, 3]`` float32, normalised."""
  def resize(image: tf.Tensor) -> tf.Tensor:
    image = tf.image.resize(image, [SIZE, SIZE], method="bicubic", antialias=True)
    return tf.clip_by_value(image, 0.0, 255.0)

  box_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
  shape = tf.image.extract_jpeg_shape(raw)
  begin, crop, _ = tf.image.stateless_sample_distorted_bounding_box(
      shape, bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], shape=[1, 1, 4]), seed=box_seed,
      min_object_covered=0.1, aspect_ratio_range=(3 / 4, 4 / 3), area_range=(0.08, 1.0),
      max_attempts=10, use_image_if_no_bounding_boxes=True)
  failed = tf.reduce_all(tf.equal(crop[:2], shape[:2]))
  image = tf.cond(
      failed,
      lambda: resize(tf.image.decode_and_crop_jpeg(raw, pipeline.center_crop_window(raw, SIZE),
                                                   channels=3)),
      lambda: resize(tf.image.decode_and_crop_jpeg(raw, tf.concat([begin[:2], crop[:2]], 0),
                                                   channels=3)))
  image = tf.image.stateless_random_flip_left_right(image, seed=flip_seed)
  return (image - tf.constant(SPEC.mean)) / tf.constant(SPEC.std)


def _decode_only(raw: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
  """The training crop's window decoded, ``[h, w, 3]`` uint8, not resized."""
  return tf.image.decode_and_crop_jpeg(raw, pipeline.random_crop_window(raw, SIZE, seed),
                                       channels=3)


def _pipeline(antialias: bool) -> Crop:
  """The pipeline's training crop, ``[224, 224, 3]`` uint8, with ``antialias``."""
  return lambda raw, seed: pipeline.decode_and_random_crop(raw, SIZE, seed, antialias)


VARIANTS: dict[str, Crop] = {  # name -> one photo's training crop
    BASELINE: _float32_bicubic,
    "bilinear, antialias": _pipeline(antialias=True),
    "bilinear (default)": _pipeline(antialias=False),
    "decode only": _decode_only,
}


def _seed(i: tf.Tensor) -> tf.Tensor:
  """Photo ``i``'s stateless seed ``[2]`` int64."""
  return tf.stack([tf.constant(0, tf.int64), i])


def images_per_second(images: list[bytes], crop: Crop) -> float:
  """One pass over ``images`` through ``crop`` on one thread."""
  ds = tf.data.Dataset.from_tensor_slices(images).enumerate()
  ds = ds.map(lambda i, raw: crop(raw, _seed(i)))
  options = tf.data.Options()
  options.threading.private_threadpool_size = 1
  options.threading.max_intra_op_parallelism = 1
  ds = ds.with_options(options)
  start = time.perf_counter()
  for _ in ds:
    pass
  return len(images) / (time.perf_counter() - start)


def antialias_effect(images: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
  """For each photo's training crop (the benchmark's seeds): ``max(h, w) / 224``, how much the
  resize shrinks its longer side (at most 1: it shrinks in neither direction), and the mean
  absolute difference (0-255) between its pixels with and without antialiasing."""
  scales, diffs = [], []
  for i, raw in enumerate(images):
    raw, seed = tf.constant(raw), _seed(tf.constant(i, tf.int64))
    _, _, h, w = pipeline.random_crop_window(raw, SIZE, seed).numpy()
    scales.append(max(h, w) / SIZE)
    crops = [pipeline.decode_and_random_crop(raw, SIZE, seed, a).numpy().astype(np.float32)
             for a in (True, False)]
    diffs.append(np.abs(crops[0] - crops[1]).mean())
  return np.array(scales), np.array(diffs)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--npz", default=str(SAMPLE),
                      help="JPEG photos in the offline .npz format of regnet_jax.import_data")
  parser.add_argument("--rounds", type=int, default=3, help="alternations of the variants")
  parser.add_argument("--cores", type=int, default=16, help="host cores for the projection")
  args = parser.parse_args(argv)
  images, _ = read_npz(args.npz)
  for crop in VARIANTS.values():  # warm-up: tracing, first decodes
    images_per_second(images[:4], crop)
  rates: dict[str, list[float]] = {name: [] for name in VARIANTS}
  for _ in range(args.rounds):
    for name, crop in VARIANTS.items():
      rates[name].append(images_per_second(images, crop))
  base = statistics.median(rates[BASELINE])
  print(f"# {len(images)} photos from {args.npz}, {SIZE}px training crops, one core, "
        f"median of {args.rounds} alternated rounds")
  print(f"| variant | img/s per core | ms per image | vs float32 | x {args.cores} cores |")
  print("|---|---|---|---|---|")
  for name, values in rates.items():
    rate = statistics.median(values)
    print(f"| {name} | {rate:.0f} | {1000 / rate:.2f} | {rate / base:.2f}x | "
          f"{rate * args.cores:,.0f} |")
  scales, diffs = antialias_effect(images)
  print(f"\n# training crops by how much the resize shrinks their longer side (median "
        f"{np.median(scales):.2f}), and what antialiasing changes")
  print(f"| longer side / {SIZE} | share of crops | mean abs difference, antialias vs default "
        "(0-255) |")
  print("|---|---|---|")
  for name, rows in (("at most 1 (not shrunk)", scales <= 1),
                     ("1 to 2", (scales > 1) & (scales <= 2)), ("above 2", scales > 2)):
    diff = f"{diffs[rows].mean():.2f}" if rows.any() else "-"
    print(f"| {name} | {rows.mean():.0%} | {diff} |")


if __name__ == "__main__":
  main()
