"""Image folders as datasets (``folder:DIR``), built in the tests from the shipped Imagenette
and CIFAR-10 slices: listing and the seeded hold-out split, every bad folder's line, the
pipeline over photos and small PNGs, undecodable images named or skipped and counted, the
statistics command, and training end to end."""

import io
import logging
import os
import pathlib
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from configs import default
from regnet_jax import data
from regnet_jax.analysis import events
from regnet_jax.data import folder, stats
from regnet_jax.data import pipeline as ip
from regnet_jax.data.datasets import IMAGENETTE_CLASSES
from regnet_jax.import_data import read_npz
from regnet_jax.train import loop
from regnet_jax.train.mesh import DataParallel
from tests.conftest import REPO, TESTDATA

# The byte a corrupt file's image data is overwritten with, after its first 300 bytes (the
# JPEG header survives, so listing and the format check pass; decoding fails).
CORRUPT_AFTER = 300


def write_images(root: pathlib.Path, npz: pathlib.Path, names, png: bool = False,
                 corrupt: tuple[int, ...] = ()) -> list[tuple[pathlib.Path, int]]:
  """Writes the images of an offline .npz as ``root/CLASS/NNN.jpg`` (``png``: re-encoded
  losslessly as ``.png``), the ``corrupt`` ones with their data overwritten; returns
  ``[(path, label)]``."""
  images, labels = read_npz(str(npz))
  written = []
  for i, (raw, label) in enumerate(zip(images, labels, strict=True)):
    path = root / names[label] / f"{i:03d}.{'png' if png else 'jpg'}"
    path.parent.mkdir(parents=True, exist_ok=True)
    if png:
      buffer = io.BytesIO()
      Image.open(io.BytesIO(raw)).convert("RGB").save(buffer, format="PNG")
      raw = buffer.getvalue()
    if i in corrupt:
      raw = raw[:CORRUPT_AFTER] + bytes(len(raw) - CORRUPT_AFTER)
    path.write_bytes(raw)
    written.append((path, int(label)))
  return written


@pytest.fixture(scope="module")
def nette(tmp_path_factory) -> pathlib.Path:
  """The Imagenette slice as photos: ``train/CLASS/*.jpg`` (40, 4 a class) and
  ``val/CLASS/*.jpg`` (20), class folders named as the classes (with spaces)."""
  root = tmp_path_factory.mktemp("nette")
  write_images(root / "train", TESTDATA / "imagenette" / "train-jpeg.npz", IMAGENETTE_CLASSES)
  write_images(root / "val", TESTDATA / "imagenette" / "val-jpeg.npz", IMAGENETTE_CLASSES)
  return root


def folder_config(root, **overrides):
  config = default.get_config()
  config.dataset = f"folder:{root}"
  config.update(overrides)
  return config


def test_listing_and_the_seeded_hold_out_split(nette, tmp_path):
  """Class folders only: sorted classes, every image labelled by its folder, a quarter of each
  class held out (1 of 4), chosen by holdout_seed alone; adding an image to a class moves at
  most that class's images between the splits."""
  images = folder.scan(str(nette / "train"), holdout_fraction=0.25)
  assert images.classes == tuple(sorted(IMAGENETTE_CLASSES))
  assert (images.train_split, images.eval_split) == ("train", "holdout")
  assert (images.num_examples("train"), images.num_examples("holdout")) == (30, 10)
  listed = {}
  for split in ("train", "holdout"):
    paths, labels = images.examples(split)
    assert list(paths) == sorted(paths, key=lambda p: (pathlib.Path(p).parent.name, p))
    for path, label in zip(paths, labels, strict=True):
      assert images.classes[label] == pathlib.Path(path).parent.name
      listed[path] = split
    assert sorted(np.bincount(labels)) == [3 if split == "train" else 1] * 10
  assert sorted(listed) == sorted(str(p) for p in (nette / "train").rglob("*.jpg"))
  assert images.sides and max(images.sides) > 64  # photos

  held = set(images.examples("holdout")[0])
  other = folder.scan(str(nette / "train"), holdout_fraction=0.25, holdout_seed=1)
  assert set(other.examples("holdout")[0]) != held and other.num_examples("holdout") == 10
  assert folder.scan(str(nette / "train"), holdout_fraction=0.25) is images  # listed once

  grown = tmp_path / "grown"
  shutil.copytree(nette / "train", grown)
  shutil.copy(grown / "tench" / "000.jpg", grown / "tench" / "999.jpg")
  after = folder.scan(str(grown), holdout_fraction=0.25)
  moved = ({os.path.relpath(p, grown) for p in after.examples("holdout")[0]}
           ^ {os.path.relpath(p, nette / "train") for p in held})
  assert {pathlib.Path(p).parent.name for p in moved} <= {"tench"}


def test_train_and_val_folders_and_the_spec(nette):
  spec = data.get_spec(folder_config(nette))
  assert (spec.num_classes, spec.kind, spec.image_size) == (10, "imagenet", 224)
  assert (spec.train_split, spec.eval_split) == ("train", "val")
  assert spec.class_names == tuple(sorted(IMAGENETTE_CLASSES)) and spec.tfds_name is None
  assert spec.mean == data.datasets.IMAGENET_MEAN  # new data: ImageNet's statistics
  small = data.get_spec(folder_config(nette, image_size=48, augment="cifar",
                                      data_mean=(1, 2, 3), data_std=[4.0, 5.0, 6.0]))
  assert (small.kind, small.image_size, small.mean, small.std) == (
      "cifar", 48, (1.0, 2.0, 3.0), (4.0, 5.0, 6.0))
  images = folder.scan(str(nette))
  assert (images.num_examples("train"), images.num_examples("val")) == (40, 20)


def _layout(root: pathlib.Path, files: list[str]) -> pathlib.Path:
  """Creates ``files`` (paths relative to ``root``; a trailing ``/`` makes a folder): images
  are 8x8 PNGs, other files a line of text."""
  for name in files:
    path = root / name
    if name.endswith("/"):
      path.mkdir(parents=True, exist_ok=True)
      continue
    path.parent.mkdir(parents=True, exist_ok=True)
    if name.endswith(".png"):
      Image.new("RGB", (8, 8), (10, 20, 30)).save(path)
    else:
      path.write_text("not an image\n")
  return root


@pytest.mark.parametrize("files,overrides,line", [
    (None, {}, "folder {d}/nope does not exist (folder:DIR names a folder of class subfolders)"),
    (["README.txt", ".git/"], {}, "folder {d} has no class folders: put each class's images "
     "in a subfolder named after the class ({d}/CLASS/IMAGE.jpg)"),
    (["cat/a.png", ".ipynb_checkpoints/b.png"], {},
     "folder {d} has a single class folder (cat): a classifier needs two or more"),
    (["cat/a.png", "dog/notes.txt", "dog/.hidden/c.png"], {},
     "class folder {d}/dog has no images (.jpg, .jpeg, .png, .bmp, .gif files); add some or "
     "remove the folder"),
    (["train/cat/a.png", "train/dog/b.png", "val/cow/c.png"], {},
     "class folder {d}/val/cow has no counterpart in {d}/train: the training folder's "
     "subfolders are the classes"),
    (["train/cat/a.png", "train/dog/b.png", "val/cat/"], {},
     "held-out folder {d}/val has no images in class subfolders ({d}/val/CLASS/IMAGE.jpg)"),
    (["train/cat/a.png", "train/dog/b.png", "val/cat/c.png"], {"eval_split": "test"},
     "eval_split='test': folder {d} has no such subfolder (it has train, val)"),
    (["cat/a.png", "dog/b.png"], {"eval_split": "val"},
     "eval_split='val' names a held-out folder beside {d}/train, but {d} holds class folders "
     "only: leave eval_split unset for its hold-out split"),
    (["cat/a.png", "cat/b.png", "dog/c.png"], {},
     "the hold-out split of {d} is empty: holdout_fraction=0.1 of each class rounds to no "
     "image; raise --config.holdout_fraction, or add a held-out folder (val/ beside train/)"),
    (["cat/a.png", "dog/b.png"], {"holdout_fraction": 1.0},
     "holdout_fraction=1.0 is not valid: it must be between 0 and 1 (the share of each "
     "class's images held out for evaluation)"),
    (["cat/a.png", "dog/b.png"], {"train_split": "train[:50%]"},
     "train_split is for tfds datasets; a folder dataset trains on DIR/train or, without it, "
     "on DIR's class folders"),
])
def test_bad_folders_are_refused_in_one_line(tmp_path, files, overrides, line):
  root = _layout(tmp_path / "d", files) if files is not None else tmp_path / "d"
  root.mkdir(exist_ok=True)
  path = root / "nope" if files is None else root
  with pytest.raises(folder.FolderError) as raised:
    data.get_spec(folder_config(path, **overrides))
  assert str(raised.value) == line.format(d=root)


def test_cli_names_a_bad_folder_in_one_line(tmp_path):
  root = _layout(tmp_path / "d", ["cat/a.png"])
  workdir = tmp_path / "w"
  out = subprocess.run([sys.executable, "main.py", "--config=configs/cifar.py:resnet20",
                        f"--workdir={workdir}", f"--config.dataset=folder:{root}"],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
  assert out.returncode == 1 and "Traceback" not in out.stderr
  assert out.stderr.strip().splitlines()[-1] == (
      f"error: folder {root} has a single class folder (cat): a classifier needs two or more")
  assert not workdir.exists()


@pytest.fixture(scope="module")
def small_pngs(tmp_path_factory) -> pathlib.Path:
  """The 200 CIFAR-10 test images of the slice as lossless PNGs in class folders."""
  root = tmp_path_factory.mktemp("cifar_png")
  write_images(root, TESTDATA / "cifar10" / "test-jpeg.npz", data.datasets.CIFAR10_CLASSES,
               png=True)
  return root


def test_small_images_are_evaluated_as_they_are(small_pngs):
  """A folder of 32x32 PNGs is trained CIFAR-style at 32 pixels; its evaluation batches hold
  exactly the held-out images' pixels (Pillow's) and labels, each once, in listed order."""
  config = folder_config(small_pngs, batch_size=16)
  spec = data.get_spec(config)
  assert (spec.kind, spec.image_size, spec.eval_split) == ("cifar", 32, "holdout")
  source = data.create_source(config, DataParallel().data_sharding)
  batches = list(source.eval_batches())
  mask = np.concatenate([b["mask"] for b in batches]) == 1
  paths, labels = folder.scan(str(small_pngs)).examples("holdout")
  assert mask.sum() == len(paths) == 20  # 2 of each class's 20
  want = np.stack([np.asarray(Image.open(p)) for p in paths])
  np.testing.assert_array_equal(np.concatenate([b["image"] for b in batches])[mask], want)
  np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches])[mask], labels)


def test_epochs_are_seeded_permutations_and_resume_exactly(small_pngs):
  config = folder_config(small_pngs, batch_size=36, seed=3)
  source = data.create_source(config, DataParallel().data_sharding)
  assert source.steps_per_epoch == 5  # 180 training images
  full = [b for _, b in zip(range(10), source.train_batches(0), strict=False)]
  assert all(b["image"].shape == (36, 32, 32, 3) for b in full)
  for start in (3, 5, 7):
    for a, b in zip(full[start:start + 2],
                    [b for _, b in zip(range(2), source.train_batches(start), strict=False)],
                    strict=True):
      np.testing.assert_array_equal(a["image"], b["image"])
      np.testing.assert_array_equal(a["label"], b["label"])
  train_labels = sorted(folder.scan(str(small_pngs)).examples("train")[1])
  epochs = [np.concatenate([b["label"] for b in full[e * 5:(e + 1) * 5]]) for e in (0, 1)]
  assert sorted(epochs[0]) == sorted(epochs[1]) == train_labels
  assert not np.array_equal(*epochs)


@pytest.mark.parametrize("sharding", ["process", "global"])
def test_processes_share_each_epoch_of_a_folder(small_pngs, sharding):
  """As for tfds: P processes fill every row of every global batch of an epoch once, with
  every training image once (180 = 5 x 36 drops none)."""
  config = folder_config(small_pngs)
  spec, images = data.get_spec(config), ip.open_data(config)

  def read(index, count):  # (position in the global batches, path)
    ds = ip._epoch_order(images, spec, 36, seed=3, epoch=1, shuffle_buffer=0,
                         sharding=sharding, process=(index, count), raw=True)
    return [(int(g), ex["tfds_id"].decode()) for g, ex in tfds.as_numpy(ds)]

  one = read(0, 1)
  assert [g for g, _ in one] == list(range(180))
  assert sorted(p for _, p in one) == sorted(images.examples("train")[0])
  for count in (2, 4):
    shares = [read(i, count) for i in range(count)]
    together = dict(pair for share in shares for pair in share)
    assert sum(map(len, shares)) == len(together) == 180
    assert sorted(together.values()) == sorted(p for _, p in one)
    for i, share in enumerate(shares):
      assert {g % 36 // (36 // count) for g, _ in share} == {i}
    if sharding == "global":
      assert together == dict(one)


@pytest.fixture(scope="module")
def corrupt_nette(tmp_path_factory) -> tuple[pathlib.Path, pathlib.Path, pathlib.Path]:
  """The Imagenette photos, one training and one validation JPEG corrupt: (root, the corrupt
  training file, the corrupt validation file)."""
  root = tmp_path_factory.mktemp("corrupt_nette")
  train = write_images(root / "train", TESTDATA / "imagenette" / "train-jpeg.npz",
                       IMAGENETTE_CLASSES, corrupt=(5,))
  val = write_images(root / "val", TESTDATA / "imagenette" / "val-jpeg.npz",
                     IMAGENETTE_CLASSES, corrupt=(11,))
  return root, train[5][0], val[11][0]


def test_undecodable_images_are_named_or_skipped_and_counted(corrupt_nette, caplog):
  root, bad_train, bad_val = corrupt_nette
  config = folder_config(root, batch_size=8, image_size=32)
  source = data.create_source(config, DataParallel().data_sharding)
  with pytest.raises(ip.BadImageError) as raised:
    for _ in zip(range(5), source.train_batches(0), strict=False):
      pass
  assert re.fullmatch(rf"training image {re.escape(str(bad_train))} \(global batch [1-5]\) "
                      r"cannot be decoded \(Invalid JPEG data.*\); repair or remove it, or set "
                      r"--config.skip_bad_images=True to skip such images", str(raised.value))
  with pytest.raises(ip.BadImageError) as raised:
    list(source.eval_batches())
  assert re.fullmatch(rf"evaluation image {re.escape(str(bad_val))} cannot be decoded "
                      r"\(Invalid JPEG data.*\); repair or remove it, or set "
                      r"--config.skip_bad_images=True to skip such images", str(raised.value))

  config.skip_bad_images = True
  source = data.create_source(config, DataParallel().data_sharding)
  with caplog.at_level(logging.WARNING):
    # 39 good photos: 4 full batches of 8 per epoch (the remainder, 7, is dropped).
    batches = [b for _, b in zip(range(8), source.train_batches(0), strict=False)]
    assert all(b["image"].shape == (8, 32, 32, 3) for b in batches)
    assert caplog.messages.count("Skipped 1 unreadable training image in epoch 0 (1 so far; "
                                 "skip_bad_images=True)") == 1
    evals = list(source.eval_batches())
  assert sum(b["mask"].sum() for b in evals) == 19
  assert ("Skipped 1 unreadable evaluation image (skip_bad_images=True): the evaluation "
          "covers 19 of 20") in caplog.messages


def test_trains_and_evaluates_on_its_hold_out_split_counting_the_corrupt_image(
    corrupt_nette, tmp_path, caplog):
  """The end-to-end run on the photos' class folders (no val/): a tiny ResNet at 32 pixels,
  the seeded hold-out split as the eval split, the corrupt photo skipped and counted in each
  epoch. 30 training photos (29 good) at batch 10 make 2 full batches an epoch."""
  root, bad_train, _ = corrupt_nette
  config = folder_config(root / "train", model="resnet20", image_size=32, batch_size=10,
                         holdout_fraction=0.25, skip_bad_images=True, num_train_steps=4,
                         learning_rate=0.05, log_every_steps=1, eval_every_steps=4,
                         checkpoint_every_steps=4)
  config.model_args.depth = 8
  images = folder.from_config(config)
  assert str(bad_train) in images.examples("train")[0]  # the hold-out split keeps it out
  with caplog.at_level(logging.WARNING):
    state = loop.train_and_evaluate(config, str(tmp_path / "w"), devices=jax.devices()[:2])
  assert int(state.step) == 4
  assert state.params["fc"]["kernel"].shape[-1] == 10
  tags = events.read_scalars(events.event_files(str(tmp_path / "w")))
  assert [s for s, _, _ in tags["train_loss"]] == [1, 2, 3, 4]
  assert all(np.isfinite(v) for _, v, _ in tags["train_loss"])
  assert tags["eval_examples"] == [(4, 10.0, tags["eval_examples"][0][2])]  # 1 per class
  assert 0.0 <= tags["eval_top1_error"][0][1] <= 1.0
  # (The loop reads ahead: the next epoch's may follow.)
  assert [m for m in caplog.messages if m.startswith("Skipped")][:2] == [
      f"Skipped 1 unreadable training image in epoch {e} ({e + 1} so far; "
      "skip_bad_images=True)" for e in (0, 1)]


def _solid(path: pathlib.Path, colour: tuple[int, int, int]) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.new("RGB", (32, 32), colour).save(path)


def test_statistics_command(tmp_path, capsys):
  """Three images of (10, 20, 30) and three of (50, 60, 70): mean (30, 40, 50), standard
  deviation 20; the corrupt file is left out and counted, the held-out images not read."""
  root = tmp_path / "solid"
  for i in range(3):
    _solid(root / "train" / "a" / f"{i}.png", (10, 20, 30))
    _solid(root / "train" / "b" / f"{i}.png", (50, 60, 70))
  (root / "train" / "a" / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
  _solid(root / "val" / "a" / "0.png", (255, 255, 255))
  _solid(root / "val" / "b" / "0.png", (255, 255, 255))
  stats.main(["stats", f"--config={REPO / 'configs' / 'default.py'}",
              f"--config.dataset=folder:{root}"])
  assert capsys.readouterr().out.splitlines() == [
      f"folder:{root}: 6 training images (32x32 whole images; 1 undecodable image left out), "
      "0-255 scale:",
      "--config.data_mean='(30.00, 40.00, 50.00)' --config.data_std='(20.00, 20.00, 20.00)'"]
  result = stats.compute(folder_config(root), max_images=2)
  assert result["images"] + result["skipped"] == 2
