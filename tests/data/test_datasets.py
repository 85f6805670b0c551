"""Dataset specs resolved from the config (the paper's datasets, ``tfds:NAME`` from tfds's
metadata, overrides and their errors), decoding any image format, and the offline CIFAR-100
import (a small synthetic copy)."""

import io
import re

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from configs import default
from regnet_jax import data, import_data
from regnet_jax.data import datasets, resident
from regnet_jax.data import pipeline as ip
from regnet_jax.train.mesh import DataParallel


def config_for(dataset, **overrides):
  config = default.get_config()
  config.dataset = dataset
  config.update(overrides)
  return config


def test_tfds_datasets_take_their_spec_from_tfds_metadata(tfds_dir):
  assert data.get_spec(config_for("tfds:cifar10", data_dir=tfds_dir)) == datasets.DatasetSpec(
      "tfds:cifar10", 10, "cifar", 32, datasets.IMAGENET_MEAN, datasets.IMAGENET_STD, "train",
      "test", "cifar10", datasets.CIFAR10_CLASSES)
  nette = data.get_spec(config_for("tfds:imagenette/full-size-v2", data_dir=tfds_dir))
  assert (nette.num_classes, nette.kind, nette.image_size, nette.jpeg) == (
      10, "imagenet", 224, True)
  assert (nette.train_split, nette.eval_split) == ("train", "validation")
  assert nette.class_names[0] == "n01440764"  # tfds's names: WordNet ids


def test_splits_and_inputs_follow_the_config(tfds_dir):
  config = config_for("tfds:cifar10", data_dir=tfds_dir, train_split="train[:50%]",
                      eval_split="train[50%:]", batch_size=64, image_size=24, augment="cifar",
                      data_mean=(1.0, 2.0, 3.0), data_std=(4.0, 5.0, 6.0))
  spec = data.get_spec(config)
  assert (spec.train_split, spec.eval_split, spec.image_size, spec.mean, spec.std) == (
      "train[:50%]", "train[50%:]", 24, (1.0, 2.0, 3.0), (4.0, 5.0, 6.0))
  source = data.create_source(config, DataParallel().data_sharding)
  assert source.steps_per_epoch == 4  # 256 of the 512 training images, batch 64
  assert next(source.train_batches(0))["image"].shape == (64, 24, 24, 3)  # resized, cropped
  assert sum(b["mask"].sum() for b in source.eval_batches()) == 256
  table = data.get_spec(config_for("cifar10", eval_split="train[:10%]", data_dir=tfds_dir))
  assert (table.eval_split, table.mean) == ("train[:10%]", datasets.DATASETS["cifar10"].mean)


@pytest.mark.parametrize("overrides,line", [
    ({"augment": "randaugment"},
     "augment='randaugment' is not valid; choose one of cifar, imagenet (or None: from the image "
     "size)"),
    ({"image_size": 4},
     "image_size=4 is not valid; it must be an integer of at least 8 (pixels), or None for the "
     "data's own"),
    ({"data_std": (58.0, 0.0, 57.0)},
     "data_std=(58.0, 0.0, 57.0) is not valid; give three numbers (R, G, B) on the 0-255 scale, "
     "all positive"),
    ({"data_mean": (1.0, 2.0)},
     "data_mean=(1.0, 2.0) is not valid; give three numbers (R, G, B) on the 0-255 scale"),
    ({"dataset": "mnist"},
     "unknown dataset 'mnist'; valid datasets: cifar10, cifar100, imagenet2012, imagenette, "
     "tfds:NAME (a tfds image classification dataset) or folder:DIR (a folder of class "
     "subfolders)"),
])
def test_bad_overrides_are_refused_in_one_line(overrides, line):
  with pytest.raises(ValueError) as raised:
    overrides = dict(overrides)
    data.get_spec(config_for(overrides.pop("dataset", "cifar10"), **overrides))
  assert str(raised.value) == line


def test_tfds_errors_say_what_to_do(tfds_dir, tmp_path, monkeypatch):
  with pytest.raises(ValueError, match=r"^cifar10 has no split 'valid' \(Unknown split "
                     r"'valid'.*\); its splits: train, test \(--config.train_split, "
                     r"--config.eval_split\)$"):
    data.get_spec(config_for("tfds:cifar10", data_dir=tfds_dir, eval_split="valid"))
  with pytest.raises(ValueError) as raised:
    data.get_spec(config_for("tfds:no_such_dataset_xyz"))
  assert str(raised.value) == ("tfds has no dataset 'no_such_dataset_xyz' (Dataset "
                               "no_such_dataset_xyz not found.); tfds.list_builders() names "
                               "the datasets it has")
  with pytest.raises(ValueError) as raised:
    ip.tfds_spec("tfds:imdb_reviews", tfds.builder("imdb_reviews"))
  assert str(raised.value) == ("tfds:imdb_reviews is not an image classification dataset: the "
                               "pipeline reads an 'image' feature and a 'label' class feature; "
                               "its features are text, label")
  monkeypatch.setattr(ip, "_online", lambda: False)  # offline: the hint, no download attempt
  with pytest.raises(ip.DatasetNotFoundError) as raised:
    data.get_spec(config_for("tfds:mnist", data_dir=str(tmp_path)))
  assert str(raised.value) == (
      f"dataset 'tfds:mnist' is not prepared in --data_dir={tmp_path}; prepare it on a machine "
      "with internet access (python -c \"import tensorflow_datasets as tfds; tfds.builder("
      f"'mnist', data_dir='{tmp_path}').download_and_prepare()\") and copy the data_dir here, "
      "or put the images in class subfolders and use folder:DIR")


def test_small_images_of_any_shape_become_rgb_of_the_input_size():
  rng = np.random.default_rng(0)
  grey = rng.integers(0, 256, (32, 32, 1), np.uint8)
  out = ip.small_image(tf.constant(grey), 32).numpy()
  np.testing.assert_array_equal(out, np.repeat(grey, 3, axis=-1))
  rgba = rng.integers(0, 256, (32, 32, 4), np.uint8)
  np.testing.assert_array_equal(ip.small_image(tf.constant(rgba), 32).numpy(), rgba[..., :3])
  buffer = io.BytesIO()
  Image.fromarray(rgba[..., :3]).save(buffer, format="PNG")
  png = tf.constant(buffer.getvalue())
  np.testing.assert_array_equal(ip.small_image(png, 32).numpy(), rgba[..., :3])
  resized = ip.small_image(png, 24).numpy()
  assert resized.shape == (24, 24, 3)
  np.testing.assert_array_equal(resized, ip._resize(rgba[..., :3], 24, False).numpy())
  # Padding of S / 8 pixels: a 24-pixel image's crops are windows of its 3-pixel padding.
  padded = np.pad(resized, ((3, 3), (3, 3), (0, 0)))
  crop = ip.cifar_train(tf.constant(resized), tf.constant([0, 1], tf.int64)).numpy()
  assert any(np.array_equal(crop, w) or np.array_equal(crop, w[:, ::-1])
             for w in (padded[y:y + 24, x:x + 24] for y in range(7) for x in range(7)))


def test_photos_of_any_format_get_the_jpeg_crops(imagenet_sample):
  """A PNG holding a photo's decoded pixels gets the centre crop of the same window, and
  the JPEG path's crops to a few rounding differences (partial JPEG decoding upsamples
  chroma at the window's edge differently)."""
  images, _ = imagenet_sample
  for i, raw in enumerate(images[::6]):
    raw = tf.constant(raw)
    pixels = tf.io.decode_jpeg(raw, channels=3)
    png = tf.io.encode_png(pixels)
    y, x, h, w = ip.center_crop_window(raw, 64).numpy()
    want = ip._resize(pixels[y:y + h, x:x + w], 64, False).numpy()
    np.testing.assert_array_equal(ip.decode_and_center_crop(png, 64, jpeg=False).numpy(), want)
    seed = tf.constant([2, i], tf.int64)
    for a, b in ((ip.decode_and_center_crop(raw, 64),
                  ip.decode_and_center_crop(png, 64, jpeg=False)),
                 (ip.decode_and_random_crop(raw, 64, seed),
                  ip.decode_and_random_crop(png, 64, seed, jpeg=False))):
      diff = np.abs(a.numpy().astype(int) - b.numpy().astype(int))
      assert diff.mean() < 0.05 and (diff > 0).mean() < 0.01, i
    # With jpeg=False, a JPEG still takes the direct path.
    np.testing.assert_array_equal(ip.decode_and_center_crop(raw, 64, jpeg=False).numpy(),
                                  ip.decode_and_center_crop(raw, 64).numpy())


def test_resident_input_holds_small_tfds_images_only(tfds_dir, tmp_path):
  config = config_for("tfds:cifar10", data_dir=tfds_dir)
  arrays = resident.load_arrays(ip.open_data(config), data.get_spec(config))
  assert arrays["train"][0].shape == (512, 32, 32, 3) and arrays["test"][1].shape == (200,)
  (tmp_path / "a").mkdir()
  (tmp_path / "b").mkdir()
  for name in ("a/0.png", "a/1.png", "b/0.png", "b/1.png"):
    Image.new("RGB", (32, 32)).save(tmp_path / name)
  config = config_for(f"folder:{tmp_path}", holdout_fraction=0.5, input="resident")
  with pytest.raises(ValueError, match=re.escape(
      f"config.input='resident' is for CIFAR datasets and tfds datasets of 32x32 RGB images "
      f"(held in device memory); 'folder:{tmp_path}' is not one: use input='tfds'")):
    data.create_source(config, DataParallel().data_sharding)


def test_cifar100_superclasses():
  """Each of the 20 superclasses holds 5 of the 100 classes."""
  assert len(datasets.CIFAR100_CLASSES) == len(datasets.CIFAR100_SUPERCLASS_OF) == 100
  assert np.bincount(datasets.CIFAR100_SUPERCLASS_OF).tolist() == [5] * 20
  of = dict(zip(datasets.CIFAR100_CLASSES, datasets.CIFAR100_SUPERCLASS_OF, strict=True))
  named = {datasets.CIFAR100_SUPERCLASSES[of[c]] for c in ("apple", "whale", "tractor")}
  assert named == {"fruit_and_vegetables", "aquatic_mammals", "vehicles_2"}


def _synthetic_cifar100(folder, per_class: dict[str, int], bad_label: bool = False) -> dict:
  """``train-jpeg.npz``/``test-jpeg.npz`` of random 32x32 images, encoded losslessly (PNG),
  ``per_class`` of each of the 100 classes; returns ``{split: (pixels, labels)}``."""
  rng = np.random.default_rng(1)
  out = {}
  for split, count in per_class.items():
    labels = np.repeat(np.arange(100), count).astype(np.uint8)
    if bad_label:
      labels[-1] = 100
    pixels = rng.integers(0, 256, (len(labels), 32, 32, 3), np.uint8)
    encoded = []
    for image in pixels:
      buffer = io.BytesIO()
      Image.fromarray(image).save(buffer, format="PNG")
      encoded.append(np.frombuffer(buffer.getvalue(), np.uint8))
    offsets = np.concatenate([[0], np.cumsum([len(e) for e in encoded])]).astype(np.int64)
    np.savez(folder / f"{split}-jpeg.npz", jpeg=np.concatenate(encoded), offsets=offsets,
             labels=labels)
    out[split] = (pixels, labels)
  return out


def test_cifar100_imports_offline_with_fine_and_coarse_labels(tmp_path, capsys):
  source = tmp_path / "src"
  source.mkdir()
  written = _synthetic_cifar100(source, {"train": 2, "test": 1})
  data_dir = tmp_path / "tfds"
  with pytest.raises(ip.DatasetNotFoundError, match=re.escape(
      "python -m regnet_jax.import_data --dataset=cifar100 --source=DIR_WITH_NPZ_FILES")):
    ip.get_builder("cifar100", str(data_dir), download=False)
  import_data.main(["--dataset=cifar100", f"--source={source}", f"--data_dir={data_dir}"])
  assert capsys.readouterr().out.splitlines()[-1] == (
      f"Imported cifar100 into {data_dir / 'cifar100' / '3.0.2'}")
  builder = ip.get_builder("cifar100", str(data_dir))
  info = builder.info
  assert {s: info.splits[s].num_examples for s in ("train", "test")} == {"train": 200,
                                                                           "test": 100}
  assert tuple(info.features["label"].names) == datasets.CIFAR100_CLASSES
  assert tuple(info.features["coarse_label"].names) == datasets.CIFAR100_SUPERCLASSES
  for split, (pixels, labels) in written.items():
    for ex in tfds.as_numpy(builder.as_dataset(split=split)):
      i = int(ex["id"].decode().split("_")[1])
      np.testing.assert_array_equal(ex["image"], pixels[i])
      assert ex["label"] == labels[i]
      assert ex["coarse_label"] == datasets.CIFAR100_SUPERCLASS_OF[labels[i]]
  spec = data.get_spec(config_for("cifar100", data_dir=str(data_dir)))
  assert (spec.num_classes, spec.class_names[:2]) == (100, ("apple", "aquarium_fish"))


def test_cifar100_import_refuses_labels_out_of_range(tmp_path):
  _synthetic_cifar100(tmp_path, {"train": 1, "test": 1}, bad_label=True)
  with pytest.raises(SystemExit):
    import_data.main(["--dataset=cifar100", f"--source={tmp_path}",
                      f"--data_dir={tmp_path / 'tfds'}"])
  with pytest.raises(ValueError, match=re.escape(
      f"{tmp_path / 'train-jpeg.npz'}: labels must be 0-99 for cifar100; they are 0-100")):
    import_data.import_dataset("cifar100", str(tmp_path), str(tmp_path / "tfds2"))


def test_runs_started_before_the_data_fields_existed_resume():
  """The data fields default to None (the data's own), so a config.json without them is the
  same recipe to the resume guard."""
  from regnet_jax.train import resume

  new = default.get_config().to_dict()
  added = ("train_split", "eval_split", "holdout_fraction", "holdout_seed", "image_size",
           "augment", "data_mean", "data_std")
  old = {k: v for k, v in new.items() if k not in added}
  assert len(old) == len(new) - len(added)
  assert resume.config_changes(old, new) == {}
  assert resume.config_changes(old, {**new, "holdout_fraction": 0.2}) == {
      "holdout_fraction": (None, 0.2)}
