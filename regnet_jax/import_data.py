"""Imports a local copy of a dataset into a tfds data_dir, for machines that cannot download.

    python -m regnet_jax.import_data --dataset=cifar10 --source=DIR [--data_dir=DIR]
    python -m regnet_jax.import_data --dataset=cifar100 --source=DIR [--data_dir=DIR]
    python -m regnet_jax.import_data --dataset=imagenette --source=DIR [--data_dir=DIR]

``--source`` holds the ``.npz`` files of the offline copies (``train-jpeg.npz`` and
``test-jpeg.npz`` for CIFAR-10 and CIFAR-100; ``train-jpeg.npz`` and ``val-jpeg.npz`` for
Imagenette), each with the arrays ``jpeg`` (all encoded images' bytes, concatenated: JPEG,
PNG or any format Pillow reads), ``offsets`` (N+1: image i is ``jpeg[offsets[i]:offsets[i +
1]]``) and ``labels`` (N). CIFAR-100's ``labels`` are its fine labels (0-99); tfds's
``cifar100`` also stores each image's coarse label (its superclass, 0-19), which the import
derives from the fine label (each class belongs to one superclass), so the .npz files need no
more than CIFAR-10's. The import runs tfds's own registered builder (``cifar10`` and
``cifar100`` 3.0.2, ``imagenette/full-size-v2`` 1.0.0) with only its source of examples
replaced, so the prepared files, features and metadata are exactly what
``download_and_prepare`` would write, and ``tfds.builder(name, data_dir=...).as_dataset(...)``
then reads them as usual. ImageNet (``imagenet2012``) has no importer: tfds prepares it from
the official tar files placed in its ``manual_dir``.

Note: the offline CIFAR-10 copy is JPEG-compressed (quality ~75), not the original pixels;
accuracy on it is a couple of points lower than on the official release.
"""

from __future__ import annotations

import argparse
import io
import os
from collections.abc import Iterator

import numpy as np
from PIL import Image

from regnet_jax import console
from regnet_jax.data import datasets

CIFAR_FILES = {"train": "train-jpeg.npz", "test": "test-jpeg.npz"}
# name -> (tfds builder name, {tfds split: source file})
SOURCES = {
    "cifar10": ("cifar10", CIFAR_FILES),
    "cifar100": ("cifar100", CIFAR_FILES),
    "imagenette": ("imagenette/full-size-v2",
                   {"train": "train-jpeg.npz", "validation": "val-jpeg.npz"}),
}


def read_npz(path: str) -> tuple[list[bytes], np.ndarray]:
  """Returns the encoded images (one ``bytes`` each) and their labels from an offline .npz."""
  with np.load(path) as d:
    jpeg, offsets, labels = d["jpeg"], d["offsets"], d["labels"]
    images = [jpeg[offsets[i]:offsets[i + 1]].tobytes() for i in range(len(labels))]
    return images, labels.astype(np.int64)


def _examples(dataset: str, path: str) -> Iterator[tuple[str, dict]]:
  images, labels = read_npz(path)
  num_classes = datasets.DATASETS[dataset].num_classes
  if len(labels) and not 0 <= labels.min() <= labels.max() < num_classes:
    raise ValueError(f"{path}: labels must be 0-{num_classes - 1} for {dataset}; they are "
                     f"{labels.min()}-{labels.max()}")
  prefix = os.path.basename(path).split("-")[0]
  for i, (raw, label) in enumerate(zip(images, labels, strict=True)):
    key = f"{prefix}_{i:05d}"
    if dataset == "imagenette":  # Imagenette keeps the original JPEG bytes.
      yield key, {"image": io.BytesIO(raw), "label": int(label)}
      continue
    # tfds stores CIFAR pixels as PNG: decode the JPEG once.
    pixels = np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"))
    example = {"id": key, "image": pixels, "label": int(label)}
    if dataset == "cifar100":
      example["coarse_label"] = datasets.CIFAR100_SUPERCLASS_OF[label]
    yield key, example


def import_dataset(dataset: str, source: str, data_dir: str | None = None) -> str:
  """Prepares ``dataset`` from the offline copy in ``source``; returns the prepared folder."""
  import tensorflow_datasets as tfds

  if dataset not in SOURCES:
    raise ValueError(f"no importer for dataset {dataset!r}; importable: {', '.join(SOURCES)}")
  name, files = SOURCES[dataset]
  paths = {split: os.path.join(source, f) for split, f in files.items()}
  missing = [p for p in paths.values() if not os.path.exists(p)]
  if missing:
    raise FileNotFoundError(f"missing source file(s) for {dataset}: {', '.join(missing)}")

  registered = type(tfds.builder(name, data_dir=data_dir))

  class _LocalCopy(registered, skip_registration=True):  # type: ignore[misc, valid-type]
    """The registered builder, reading examples from the local copy instead of the web."""

    name = registered.name

    def _split_generators(self, dl_manager):
      del dl_manager
      if dataset == "cifar100":
        self.info.features["coarse_label"].names = list(datasets.CIFAR100_SUPERCLASSES)
      if dataset != "imagenette":  # Imagenette's builder names its classes already
        self.info.features["label"].names = list(datasets.DATASETS[dataset].class_names)
      return {split: self._generate_examples(path) for split, path in paths.items()}

    def _generate_examples(self, path):
      return _examples(dataset, path)

    # tfds would announce a download; main() says what happens instead.
    def _log_download_bytes(self):
      pass

    def _log_download_done(self):
      pass

  config = name.split("/")[1] if "/" in name else None
  builder = _LocalCopy(data_dir=data_dir, config=config)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return builder.data_dir


def main(argv: list[str] | None = None) -> None:
  console.quiet()
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--dataset", required=True, choices=sorted(SOURCES))
  parser.add_argument("--source", required=True, help="folder holding the offline .npz files")
  parser.add_argument("--data_dir", default=None, help="tfds data_dir (default: tfds's own)")
  args = parser.parse_args(argv)
  import tensorflow_datasets as tfds

  tfds.disable_progress_bar()
  if args.dataset in SOURCES:
    prepared = tfds.builder(SOURCES[args.dataset][0], data_dir=args.data_dir)
    if prepared.is_prepared():
      print(f"{args.dataset} is already imported in {prepared.data_dir}")
      return
  print(f"Importing {args.dataset} from {args.source} (a minute or two)...", flush=True)
  console.import_tensorflow()  # tfds writes the dataset with it
  try:
    path = import_dataset(args.dataset, args.source, args.data_dir)
  except (FileNotFoundError, ValueError) as e:
    parser.exit(2, f"error: {e}\n")
  print(f"Imported {args.dataset} into {path}")
