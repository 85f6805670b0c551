"""A dataset's per-channel mean and standard deviation, for ``config.data_mean`` and
``config.data_std``.

    python -m regnet_jax.data.stats --config=configs/default.py --config.dataset=folder:DIR
    python -m regnet_jax.data.stats --config=... --config.dataset=tfds:NAME --max_images=10000

Over the training split's images as the model sees them before augmentation and
normalisation, on the 0-255 scale: small images whole (resized to the input size where they
are not that size), photos' centre crops (the evaluation crop). The config decides the
dataset, its split, the input size and the resize, as it would for training. ``--max_images``
takes a sample: a folder's first images in a seeded permutation, a tfds split's first in a
seeded order of its files. Images that cannot be decoded are left out and counted. Prints the
two flags to add to the training command.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
from absl import flags
from ml_collections import config_flags

from regnet_jax import console


def compute(config: Any, max_images: int | None = None, batch_size: int = 64
            ) -> dict[str, Any]:
  """``{'mean': [3], 'std': [3], 'images': decoded, 'skipped': undecodable, 'spec': the
  dataset's spec}`` of the training split of ``config``'s dataset (module docstring), from
  float64 sums over every pixel."""
  from regnet_jax.data import datasets, pipeline

  spec = datasets.get_spec(config)
  data = pipeline.open_data(config)
  antialias = config.get("resize_antialias", False)
  total = pipeline.num_examples(data, spec.train_split)
  ds = pipeline.read_split(data, spec.train_split, spec, shuffle_seed=0)
  if max_images is not None:
    ds, total = ds.take(max_images), min(max_images, total)
  ds = ds.map(lambda ex: pipeline.preprocess(ex, spec, False, None, antialias)["image"],
              num_parallel_calls=pipeline.AUTOTUNE)
  ds = ds.ignore_errors().batch(batch_size).prefetch(pipeline.AUTOTUNE)
  count, sums, squares = 0, np.zeros(3), np.zeros(3)
  for images in ds.as_numpy_iterator():  # [b, S, S, 3] uint8
    pixels = images.reshape(-1, 3).astype(np.float64)
    count, sums, squares = count + len(images), sums + pixels.sum(0), squares + (pixels**2).sum(0)
  if count == 0:
    raise ValueError(f"no decodable training image in {spec.name}")
  n = count * spec.image_size**2
  mean = sums / n
  return {"mean": mean, "std": np.sqrt(np.maximum(squares / n - mean**2, 0.0)),
          "images": count, "skipped": total - count, "spec": spec}


def main(argv: list[str] | None = None) -> None:
  console.quiet()
  argv = sys.argv if argv is None else argv
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "Training configuration file.",
                                  flag_values=flag_values, lock_config=True, sys_argv=argv)
  flags.DEFINE_integer("max_images", None, "Read only this many training images (a seeded "
                       "sample); default: all.", flag_values=flag_values)
  try:
    flag_values(argv)
  except flags.Error as e:
    sys.exit(f"error: {e}")
  if flag_values.config is None:
    sys.exit("error: --config is required (e.g. --config=configs/default.py "
             "--config.dataset=folder:DIR)")
  from regnet_jax.data import pipeline

  try:
    result = compute(flag_values.config, flag_values.max_images)
  except (ValueError, OSError, pipeline.DatasetNotFoundError) as e:
    sys.exit(f"error: {e}")
  spec, skipped = result["spec"], result["skipped"]
  what = ("whole images" if spec.kind == "cifar" else "centre crops")
  left_out = f"; {skipped} undecodable image{'s' * (skipped > 1)} left out" if skipped else ""
  print(f"{spec.name}: {result['images']:,} training images ({spec.image_size}x"
        f"{spec.image_size} {what}{left_out}), 0-255 scale:")
  fmt = lambda v: "(" + ", ".join(f"{x:.2f}" for x in v) + ")"
  print(f"--config.data_mean='{fmt(result['mean'])}' --config.data_std='{fmt(result['std'])}'")


if __name__ == "__main__":
  main()
