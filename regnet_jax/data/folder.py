"""A folder of images as a dataset: ``config.dataset = 'folder:DIR'``.

Two layouts, as torchvision's ``ImageFolder`` and timm read them:

- ``DIR/CLASS/IMAGE``: one subfolder per class. A fixed hold-out split is the eval split:
  ``holdout_fraction`` of each class's images (rounded; at least one stays for training),
  chosen by a hash of ``holdout_seed`` and each image's path, so it does not depend on the
  training seed and adding images to a class moves few others between the splits.
- ``DIR/train/CLASS/IMAGE`` with ``DIR/val/CLASS/IMAGE`` (or ``validation/`` or ``test/``;
  ``eval_split`` picks one where there are several): the held-out folder is the eval split.
  Without one, the hold-out split is taken from ``train/`` as above.

Images are ``.jpg``, ``.jpeg``, ``.png``, ``.bmp`` and ``.gif`` files (any case), at any depth
below their class folder; other files, and folders whose name starts with ``.``, are ignored.
The classes are the training class folders' names, sorted: label ``i`` is the ``i``-th.

The files are read by tf.data where they lie (:mod:`regnet_jax.data.pipeline`), with no
conversion step: a first run only lists the folder (and opens the header of one image per
class, for the image size), there is no second copy to keep in step with the folder, and as
the listing is sorted, the split and every epoch's order are a function of the seeds alone.
An image that cannot be decoded is found when it is read (see ``skip_bad_images``).

No TensorFlow here: listing and splitting only.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import math
import os
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from regnet_jax.data.datasets import FOLDER_PREFIX

if TYPE_CHECKING:
  import ml_collections

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
HELD_OUT_FOLDERS = ("val", "validation", "test")
HOLDOUT = "holdout"  # the name of the hold-out split taken from the training images
# Images whose size decides the default augmentation: the first of each class, this many in
# all at most (spread over the classes).
SIZE_SAMPLE = 64


@dataclasses.dataclass(frozen=True, eq=False)
class ImageFolder:
  """A listed image folder: its classes and each split's images."""

  root: str
  classes: tuple[str, ...]
  # split -> (paths [N] str, labels [N] int64), sorted by class, then path.
  splits: dict[str, tuple[np.ndarray, np.ndarray]]
  train_split: str
  eval_split: str  # HOLDOUT or the held-out folder's name
  sides: tuple[int, ...]  # the longer sides of a sample of the images

  def num_examples(self, split: str) -> int:
    return len(self.splits[split][1])

  def examples(self, split: str, share: tuple[int, int] | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """``(paths, labels)`` of ``split``, or of its ``share = (index, count)``: the index-th of
    ``count`` contiguous parts whose sizes differ by one at most (``tfds.even_splits``'s)."""
    paths, labels = self.splits[split]
    if share is None:
      return paths, labels
    index, count = share
    size, extra = divmod(len(paths), count)  # as tfds.even_splits: the first parts one larger
    lo = index * size + min(index, extra)
    hi = lo + size + (index < extra)
    return paths[lo:hi], labels[lo:hi]


class FolderError(ValueError):
  """A folder that cannot be a dataset; the message says what to change."""


def from_config(config: ml_collections.ConfigDict) -> ImageFolder:
  """The folder of ``config.dataset = 'folder:DIR'``, with the config's split settings."""
  if config.get("train_split") is not None:
    raise FolderError("train_split is for tfds datasets; a folder dataset trains on DIR/train "
                      "or, without it, on DIR's class folders")
  holdout = {k: config.get(k) for k in ("holdout_fraction", "holdout_seed")
             if config.get(k) is not None}
  return scan(config.dataset[len(FOLDER_PREFIX):], config.get("eval_split"), **holdout)


def scan(root: str, eval_split: str | None = None, holdout_fraction: float = 0.1,
         holdout_seed: int = 0) -> ImageFolder:
  """Lists the image folder ``root`` (layouts in the module docstring); once per process for
  the same arguments.

  Raises:
    FolderError: no such folder, no class folders, a single class, a class without images, an
      unknown held-out folder or class, an empty hold-out split, in one line.
  """
  return _scan(os.path.abspath(os.path.expanduser(root)), eval_split, float(holdout_fraction),
               int(holdout_seed))


@functools.lru_cache(maxsize=16)
def _scan(root: str, eval_split: str | None, holdout_fraction: float, holdout_seed: int
          ) -> ImageFolder:
  if not os.path.isdir(root):
    raise FolderError(f"folder {root} does not exist (folder:DIR names a folder of class "
                      "subfolders)")
  folders = _subfolders(root)
  held_out = eval_split
  if "train" in folders:
    train_dir = os.path.join(root, "train")
    if held_out is None:
      held_out = next((f for f in HELD_OUT_FOLDERS if f in folders), None)
    elif held_out not in folders:
      raise FolderError(f"eval_split={held_out!r}: folder {root} has no such subfolder (it has "
                        f"{', '.join(folders)})")
  else:
    train_dir = root
    if held_out is not None:
      raise FolderError(f"eval_split={held_out!r} names a held-out folder beside {root}/train, "
                        f"but {root} holds class folders only: leave eval_split unset for its "
                        "hold-out split")
  classes = _subfolders(train_dir)
  if not classes:
    raise FolderError(f"folder {train_dir} has no class folders: put each class's images in a "
                      f"subfolder named after the class ({train_dir}/CLASS/IMAGE.jpg)")
  if len(classes) == 1:
    raise FolderError(f"folder {train_dir} has a single class folder ({classes[0]}): a "
                      "classifier needs two or more")
  per_class = []
  for name in classes:
    paths = _images(os.path.join(train_dir, name))
    if not paths:
      raise FolderError(f"class folder {os.path.join(train_dir, name)} has no images "
                        f"({', '.join(IMAGE_EXTENSIONS)} files); add some or remove the folder")
    per_class.append(paths)

  if held_out is None:
    if not 0.0 < holdout_fraction < 1.0:
      raise FolderError(f"holdout_fraction={holdout_fraction} is not valid: it must be between "
                        "0 and 1 (the share of each class's images held out for evaluation)")
    train, held = [], []
    for paths in per_class:
      n = min(math.floor(holdout_fraction * len(paths) + 0.5), len(paths) - 1)
      ranked = sorted(paths, key=lambda p: _rank(holdout_seed, os.path.relpath(p, root)))
      held.append(sorted(ranked[:n]))
      train.append(sorted(ranked[n:]))
    if not any(held):
      raise FolderError(f"the hold-out split of {train_dir} is empty: holdout_fraction="
                        f"{holdout_fraction} of each class rounds to no image; raise "
                        "--config.holdout_fraction, or add a held-out folder (val/ beside "
                        "train/)")
    eval_split = HOLDOUT
  else:
    eval_split = held_out
    held_dir = os.path.join(root, held_out)
    held = [[] for _ in classes]
    for name in _subfolders(held_dir):
      if name not in classes:
        raise FolderError(f"class folder {os.path.join(held_dir, name)} has no counterpart in "
                          f"{train_dir}: the training folder's subfolders are the classes")
      held[classes.index(name)] = _images(os.path.join(held_dir, name))
    if not any(held):
      raise FolderError(f"held-out folder {held_dir} has no images in class subfolders "
                        f"({held_dir}/CLASS/IMAGE.jpg)")
    train = per_class
  splits = {"train": _arrays(train), eval_split: _arrays(held)}
  return ImageFolder(root, tuple(classes), splits, "train", eval_split, _sides(per_class))


def _subfolders(path: str) -> list[str]:
  """The sorted names of ``path``'s subfolders, hidden ones (``.name``) left out."""
  with os.scandir(path) as entries:
    return sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))


def _images(path: str) -> list[str]:
  """The image files at any depth below ``path``, sorted (hidden folders left out)."""
  found = []
  for folder, subfolders, files in os.walk(path, followlinks=True):
    subfolders[:] = [s for s in subfolders if not s.startswith(".")]
    found += [os.path.join(folder, f) for f in files if f.lower().endswith(IMAGE_EXTENSIONS)]
  return sorted(found)


def _rank(seed: int, path: str) -> bytes:
  """A path's place in the seeded order that chooses the hold-out images."""
  return hashlib.blake2b(f"{seed}:{path}".encode(), digest_size=8).digest()


def _arrays(per_class: list[list[str]]) -> tuple[np.ndarray, np.ndarray]:
  paths = np.array([p for paths in per_class for p in paths], dtype=object)
  labels = np.concatenate([np.full(len(p), i, np.int64) for i, p in enumerate(per_class)])
  return paths, labels


def _sides(per_class: list[list[str]]) -> tuple[int, ...]:
  """The longer side of the first image of each class (:data:`SIZE_SAMPLE` at most, spread
  over the classes), from its header; images that cannot be opened are left out (reading
  finds them)."""
  step = max(1, len(per_class) // SIZE_SAMPLE)
  sides = []
  for paths in per_class[::step]:
    try:
      with Image.open(paths[0]) as image:
        sides.append(max(image.size))
    except (OSError, ValueError, SyntaxError):  # what Pillow raises on a damaged header
      pass
  return tuple(sides)
