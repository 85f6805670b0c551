"""ImageNet training preprocessing on one CPU core: images/s per core for each resize choice.

    python -m benchmarks.preprocess                        # the 34 varied photos in tests/testdata
    python -m benchmarks.preprocess --npz DIR/imagenet-sample-jpeg.npz --rounds 5

Each variant runs the training preprocessing of ``regnet_jax.data.pipeline`` (JPEG decode of
the random crop, resize to 224, flip) over every photo of the ``.npz``, in a tf.data pipeline
with a private pool of one thread, so the rate is one core's. ``previous`` is the preprocessing
before batches became uint8: bicubic with antialiasing, float32 pixels out. ``decode only``
decodes the same crops and stops there: the bound on any choice of resize. Variants alternate
``--rounds`` times; the table gives each variant's median rate, its ratio to ``previous`` and
the rate projected to ``--cores`` cores (linear: each core decodes its own images).
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import time

import tensorflow as tf

from regnet_jax.data import pipeline
from regnet_jax.data.import_data import read_npz

SAMPLE = pathlib.Path(__file__).parents[1] / "tests/testdata/imagenette/imagenet-sample-jpeg.npz"
SIZE = 224
# name -> (tf.image.resize arguments, or None for the decoded crop as is; output dtype)
VARIANTS = {
    "previous": ({"method": "bicubic", "antialias": True}, tf.float32),
    "bicubic, uint8": ({"method": "bicubic", "antialias": True}, tf.uint8),
    "bilinear, uint8": (pipeline.RESIZE, tf.uint8),
    "bilinear no antialias, uint8": ({"method": "bilinear", "antialias": False}, tf.uint8),
    "decode only": (None, tf.uint8),
}


def _crop(raw: tf.Tensor, seed: tf.Tensor, resize: dict | None) -> tf.Tensor:
  """The training crop of one JPEG; with ``resize=None`` only its decoded window."""
  if resize is None:
    return tf.image.decode_and_crop_jpeg(raw, pipeline.random_crop_window(raw, SIZE, seed),
                                         channels=3)
  return pipeline.decode_and_random_crop(raw, SIZE, seed, resize)


def images_per_second(images: list[bytes], resize: dict | None, dtype: tf.DType) -> float:
  """One pass over ``images`` through the training crop on one thread."""
  ds = tf.data.Dataset.from_tensor_slices(images).enumerate()
  ds = ds.map(lambda i, raw: tf.cast(_crop(raw, tf.stack([tf.constant(0, tf.int64), i]),
                                           resize), dtype))
  options = tf.data.Options()
  options.threading.private_threadpool_size = 1
  options.threading.max_intra_op_parallelism = 1
  ds = ds.with_options(options)
  start = time.perf_counter()
  for _ in ds:
    pass
  return len(images) / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--npz", default=str(SAMPLE),
                      help="JPEG photos in the offline .npz format of regnet_jax.import_data")
  parser.add_argument("--rounds", type=int, default=3, help="alternations of the variants")
  parser.add_argument("--cores", type=int, default=16, help="host cores for the projection")
  args = parser.parse_args(argv)
  images, _ = read_npz(args.npz)
  for resize, dtype in VARIANTS.values():  # warm-up: tracing, first decodes
    images_per_second(images[:4], resize, dtype)
  rates: dict[str, list[float]] = {name: [] for name in VARIANTS}
  for _ in range(args.rounds):
    for name, (resize, dtype) in VARIANTS.items():
      rates[name].append(images_per_second(images, resize, dtype))
  base = statistics.median(rates["previous"])
  print(f"# {len(images)} photos from {args.npz}, {SIZE}px training crops, one core, "
        f"median of {args.rounds} alternated rounds")
  print(f"| variant | img/s per core | ms per image | vs previous | x {args.cores} cores |")
  print("|---|---|---|---|---|")
  for name, values in rates.items():
    rate = statistics.median(values)
    print(f"| {name} | {rate:.0f} | {1000 / rate:.2f} | {rate / base:.2f}x | "
          f"{rate * args.cores:,.0f} |")


if __name__ == "__main__":
  main()
