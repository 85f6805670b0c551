"""tfds pipelines on real CIFAR-10 and ImageNet photographs: import, augmentation, order,
resumption, evaluation coverage, and the missing-dataset error."""

import io
import itertools
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from regnet_jax.data import datasets
from regnet_jax.data import pipeline as ip
from tests.conftest import TESTDATA

CIFAR = datasets.get_spec("cifar10")
NETTE = datasets.get_spec("imagenette")


def test_import_keeps_every_pixel(tfds_dir):
  """The tfds copy decodes to exactly the pixels Pillow gets from the original JPEG bytes."""
  builder = ip.get_builder("cifar10", tfds_dir)
  assert builder.info.splits["train"].num_examples == 512
  assert builder.info.splits["test"].num_examples == 200
  assert builder.info.features["label"].names[9] == "truck"
  examples = tfds.as_numpy(builder.as_dataset(split="test"))
  first = next(ex for ex in examples if ex["id"] == b"test_00000")  # tfds shuffles on write
  with np.load(TESTDATA / "cifar10" / "test-jpeg.npz") as d:
    raw, label = d["jpeg"][d["offsets"][0]:d["offsets"][1]].tobytes(), d["labels"][0]
  np.testing.assert_array_equal(first["image"], np.asarray(Image.open(io.BytesIO(raw))))
  assert first["label"] == label


def test_train_batches_shapes_and_normalisation(tfds_dir):
  builder = ip.get_builder("cifar10", tfds_dir)
  batch = next(ip.train_batches(builder, CIFAR, 64, seed=0))
  assert batch["image"].shape == (64, 32, 32, 3) and batch["image"].dtype == np.uint8
  assert batch["label"].dtype == np.int32 and set(batch["label"]) <= set(range(10))
  assert batch["image"].min() == 0  # the padding of the random crops
  # Unaugmented test images, normalised as the steps do: standardised with the CIFAR-10
  # statistics.
  test = np.asarray(datasets.normalize(next(ip.eval_batches(builder, CIFAR, 200))["image"],
                                       CIFAR))
  np.testing.assert_allclose(test.mean(axis=(0, 1, 2)), 0.0, atol=0.1)
  np.testing.assert_allclose(test.std(axis=(0, 1, 2)), 1.0, atol=0.1)
  np.testing.assert_allclose(datasets.normalize(np.zeros((1, 3), np.uint8), "cifar10")[0],
                             -np.asarray(CIFAR.mean) / np.asarray(CIFAR.std), rtol=1e-6)


def test_a_generator_left_open_exits_quietly(tfds_dir):
  """A process that stops reading its training batches (evaluate.py, a benchmark) exits
  without "Exception ignored in: <generator ...>" from the generator's shutdown."""
  code = ("from regnet_jax.data import datasets, pipeline as ip\n"
          f"it = ip.train_batches(ip.get_builder('cifar10', {tfds_dir!r}), "
          "datasets.get_spec('cifar10'), 16, seed=0)\n"
          "print(next(it)['image'].shape)\n")
  done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                        timeout=300, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert done.returncode == 0 and done.stdout.strip() == "(16, 32, 32, 3)", done.stderr
  assert "Exception ignored" not in done.stderr, done.stderr


def _take(it, n):
  return list(itertools.islice(it, n))


def test_order_is_a_function_of_seed_and_step(tfds_dir):
  builder = ip.get_builder("cifar10", tfds_dir)
  steps = ip.steps_per_epoch(builder, CIFAR, 64)
  assert steps == 8
  full = _take(ip.train_batches(builder, CIFAR, 64, seed=3), 16)  # two epochs
  for start in (5, 8, 10):
    resumed = _take(ip.train_batches(builder, CIFAR, 64, seed=3, start_step=start), 2)
    for a, b in zip(full[start:start + 2], resumed, strict=True):
      np.testing.assert_array_equal(a["image"], b["image"])
      np.testing.assert_array_equal(a["label"], b["label"])
  # Every epoch is a permutation of the split, and epochs differ in order.
  labels = [np.concatenate([b["label"] for b in full[e * 8:(e + 1) * 8]]) for e in (0, 1)]
  assert sorted(labels[0]) == sorted(labels[1]) and not np.array_equal(*labels)
  other = _take(ip.train_batches(builder, CIFAR, 64, seed=4), 1)[0]
  assert not np.array_equal(other["label"], full[0]["label"])


@pytest.mark.parametrize("sharding", ["process", "global"])
def test_processes_share_each_epoch(tfds_dir, sharding):
  """P processes fill every row of every global batch of an epoch once, with every example
  of the split once (512 = 8 x 64 drops none). With 'process' sharding each process reads
  only its own share of the records; with 'global' the global batches are those of one
  process. With one process the two are the same."""
  builder = ip.get_builder("cifar10", tfds_dir)

  def read(index, count, how=sharding):  # (position in the global batches, tfds_id)
    ds = ip._epoch_order(builder, CIFAR, 64, seed=3, epoch=1, shuffle_buffer=1000,
                         sharding=how, process=(index, count), raw=True)
    return [(int(g), ex["tfds_id"].decode()) for g, ex in tfds.as_numpy(ds)]

  one = read(0, 1)
  assert [g for g, _ in one] == list(range(512)) and len(set(dict(one).values())) == 512
  assert one == read(0, 1, "global" if sharding == "process" else "process")
  for count in (2, 4):
    shares = [read(i, count) for i in range(count)]
    together = dict(pair for share in shares for pair in share)
    assert sum(map(len, shares)) == len(together) == 512  # no position twice
    assert sorted(together.values()) == sorted(dict(one).values())  # every example once
    for i, share in enumerate(shares):  # process i holds its rows of each global batch
      assert {g % 64 // (64 // count) for g, _ in share} == {i}
      if sharding == "process":  # ... taken from its own records
        own = tfds.as_numpy(builder.as_dataset(split=tfds.even_splits("train", count)[i],
                                               read_config=tfds.ReadConfig(add_tfds_id=True),
                                               decoders={"image": tfds.decode.SkipDecoding()}))
        assert {name for _, name in share} == {ex["tfds_id"].decode() for ex in own}
    if sharding == "global":
      assert together == dict(one)


def test_cifar_augmentation_is_a_padded_crop_and_flip():
  image = tf.random.uniform([32, 32, 3], 0, 255, tf.int32)
  padded = np.pad(image.numpy(), ((4, 4), (4, 4), (0, 0)))
  windows = {(dy, dx, f) for dy in range(9) for dx in range(9) for f in (0, 1)}
  seen = set()
  for i in range(40):
    out = ip.cifar_train(image, tf.constant([7, i], tf.int64)).numpy()
    match = [(dy, dx, f) for dy, dx, f in windows
             if np.array_equal(out, (lambda w: w[:, ::-1] if f else w)(
                 padded[dy:dy + 32, dx:dx + 32]))]
    assert match, "output is not a flipped or unflipped 32x32 window of the padded image"
    seen.add(match[0])
  assert len(seen) > 20  # the crops and flips vary


@pytest.mark.parametrize("batch", [64, 200, 48])
def test_eval_covers_every_example_once(tfds_dir, batch):
  builder = ip.get_builder("cifar10", tfds_dir)
  batches = list(ip.eval_batches(builder, CIFAR, batch))
  assert all(b["image"].shape[0] == batch for b in batches)
  mask = np.concatenate([b["mask"] for b in batches])
  labels = np.concatenate([b["label"] for b in batches])[mask == 1]
  assert mask.sum() == 200 and mask[:200].all() and not mask[200:].any()
  want = [int(ex["label"]) for ex in tfds.as_numpy(builder.as_dataset(split="test"))]
  assert list(labels) == want


def test_missing_dataset_says_how_to_import(tmp_path):
  with pytest.raises(ip.DatasetNotFoundError, match=r"python -m regnet_jax\.import_data "
                     r"--dataset=cifar10 --source="):
    ip.get_builder("cifar10", str(tmp_path))
  with pytest.raises(ip.DatasetNotFoundError, match="downloads/manual"):
    ip.get_builder("imagenet2012", str(tmp_path))
  with pytest.raises(ValueError, match="unknown dataset 'mnist'; valid datasets: cifar10"):
    ip.get_builder("mnist", str(tmp_path))


# ImageNet preprocessing on real photographs of varied sizes.


def _pil(raw: bytes) -> np.ndarray:
  return np.asarray(Image.open(io.BytesIO(raw)).convert("RGB")).astype(np.float32)


# Mean |ours - Pillow's bilinear| on these photos: 0.80-0.99 (JPEG decoders and rounding
# differ); against Pillow's bicubic it is 1.29-2.19, so the bound also tells the filters apart.
MAX_MEAN_DIFF = 1.2


def test_center_crop_on_varied_photos(imagenet_sample):
  images, _ = imagenet_sample
  for raw in images[::7]:
    out = ip.decode_and_center_crop(tf.constant(raw), 224, antialias=True).numpy()
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8
    # Reference: the central 224/256 square of the shorter side, resized with Pillow's
    # bilinear filter (which, like antialias=True, widens its support when it shrinks).
    ref = _pil(raw)
    h, w = ref.shape[:2]
    side = int(224 / 256 * min(h, w))
    top, left = (h - side + 1) // 2, (w - side + 1) // 2
    crop = Image.fromarray(ref[top:top + side, left:left + side].astype(np.uint8))
    want = np.asarray(crop.resize((224, 224), Image.BILINEAR)).astype(np.float32)
    assert np.abs(out - want).mean() < MAX_MEAN_DIFF, (h, w)


@pytest.mark.parametrize("antialias", [False, True])
def test_crops_resize_as_jax_image_resize(imagenet_sample, antialias):
  """Both crops equal jax.image.resize's bilinear resize of the decoded window (an independent
  implementation of the same filters), to the rounding of a few pixels."""
  import jax

  images, _ = imagenet_sample
  shrunk = 0
  for i, raw in enumerate(images[::3]):
    raw, seed = tf.constant(raw), tf.constant([4, i], tf.int64)
    flip_seed = tf.random.experimental.stateless_split(seed, 2)[1]
    for window, out, flip in (
        (ip.center_crop_window(raw, 224), ip.decode_and_center_crop(raw, 224, antialias), False),
        (ip.random_crop_window(raw, 224, seed),
         ip.decode_and_random_crop(raw, 224, seed, antialias), True)):
      crop = tf.image.decode_and_crop_jpeg(raw, window, channels=3).numpy()
      shrunk += max(crop.shape[:2]) > 224
      want = jax.image.resize(crop.astype(np.float32), (224, 224, 3), "linear",
                              antialias=antialias)
      want = np.clip(np.round(np.asarray(want)), 0, 255)
      if flip:  # the training crop's random flip, with its seed
        want = tf.image.stateless_random_flip_left_right(want, seed=flip_seed).numpy()
      diff = np.abs(out.numpy().astype(np.float32) - want)
      assert diff.max() <= 1 and (diff > 0).mean() < 1e-3, (i, crop.shape)
  assert shrunk >= 5  # crops where antialiasing matters


def test_antialiasing_changes_only_shrinking_crops(imagenet_sample):
  """Enlarged crops come out the same with and without antialiasing (to rounding); shrunk
  ones differ (the default samples them at the output pixels only)."""
  images, _ = imagenet_sample
  enlarged = shrunk = 0
  for raw in images:
    raw = tf.constant(raw)
    side = ip.center_crop_window(raw, 224).numpy()[2]
    diff = np.abs(ip.decode_and_center_crop(raw, 224, True).numpy().astype(int)
                  - ip.decode_and_center_crop(raw, 224, False).numpy().astype(int))
    if side < 224:
      enlarged += 1
      assert diff.max() <= 1, side
    elif side > 224:  # these photos: 14-86 levels at the sharpest edges
      shrunk += 1
      assert diff.max() >= 10, side
  assert enlarged >= 10 and shrunk >= 10


def test_every_photo_of_the_full_sample_decodes_and_crops():
  """All 209 photos of the full ImageNet sample (one per class, every size and colour mode
  there is): both crops give 224x224x3 pixels in range. Needs $REGNET_DATA."""
  from regnet_jax.import_data import read_npz
  from tests.conftest import full_data

  images, _ = read_npz(str(full_data("imagenette", "imagenet-sample-jpeg.npz")))
  assert len(images) == 209
  for i, raw in enumerate(images):
    for out in (ip.decode_and_center_crop(tf.constant(raw), 224),
                ip.decode_and_random_crop(tf.constant(raw), 224, tf.constant([0, i], tf.int64))):
      out = out.numpy()
      assert out.shape == (224, 224, 3) and out.min() >= 0 and out.max() <= 255, i


def test_greyscale_photos_become_three_equal_channels(imagenet_sample):
  images, _ = imagenet_sample
  grey = [raw for raw in images if Image.open(io.BytesIO(raw)).mode == "L"]
  assert len(grey) == 4
  for raw in grey:
    for out in (ip.decode_and_center_crop(tf.constant(raw), 224),
                ip.decode_and_random_crop(tf.constant(raw), 224, tf.constant([1, 2], tf.int64))):
      out = out.numpy()
      assert out.shape == (224, 224, 3)
      np.testing.assert_array_equal(out[..., 0], out[..., 1])
      np.testing.assert_array_equal(out[..., 0], out[..., 2])


def test_inception_crop_is_seeded_and_varies(imagenet_sample):
  images, _ = imagenet_sample
  raw = tf.constant(max(images, key=len))  # a large photograph
  outs = [ip.decode_and_random_crop(raw, 224, tf.constant([0, i], tf.int64)).numpy()
          for i in range(6)]
  again = ip.decode_and_random_crop(raw, 224, tf.constant([0, 0], tf.int64)).numpy()
  np.testing.assert_array_equal(outs[0], again)
  assert all(o.shape == (224, 224, 3) and o.min() >= 0 and o.max() <= 255 for o in outs)
  assert len({o.tobytes() for o in outs}) == 6


def _jpeg(height: int, width: int) -> tf.Tensor:
  pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), np.uint8)
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, format="JPEG")
  return tf.constant(buffer.getvalue())


def test_inception_crop_windows():
  """The windows lie inside the image and cover 8-100% of it with aspect ratio within
  [3/4, 4/3]; where no such box exists (a 20x1000 strip), the centre crop's window."""
  raw = _jpeg(300, 400)
  areas, ratios = [], []
  for i in range(200):
    y, x, h, w = ip.random_crop_window(raw, 224, tf.constant([5, i], tf.int64)).numpy()
    assert y >= 0 and x >= 0 and y + h <= 300 and x + w <= 400
    areas.append(h * w / 120_000)
    ratios.append(w / h)
  assert min(areas) >= 0.07 and max(areas) <= 1.0 and np.median(areas) < 0.8
  assert min(ratios) >= 0.7 and max(ratios) <= 1.4
  strip = _jpeg(20, 1000)
  centre = ip.center_crop_window(strip, 224).numpy()
  np.testing.assert_array_equal(centre, [2, 492, 17, 17])  # side 224/256 of 20, centred
  for i in range(5):
    np.testing.assert_array_equal(
        ip.random_crop_window(strip, 224, tf.constant([5, i], tf.int64)).numpy(), centre)


def test_imagenette_batches(tfds_dir):
  builder = ip.get_builder("imagenette", tfds_dir)
  batch = next(ip.train_batches(builder, NETTE, 8, seed=0, shuffle_buffer=40))
  assert batch["image"].shape == (8, 224, 224, 3) and batch["image"].dtype == np.uint8
  evals = list(ip.eval_batches(builder, NETTE, 8))
  assert sum(b["mask"].sum() for b in evals) == 20


@pytest.mark.parametrize("antialias", [False, True])
def test_config_resize_antialias_reaches_every_crop(tfds_dir, monkeypatch, antialias):
  """config.resize_antialias is the antialiasing of the training and the eval crops' resize
  (recorded as tf.data traces the pipeline)."""
  from configs import default
  from regnet_jax import data
  from regnet_jax.train.mesh import DataParallel

  seen, resize = [], ip._resize

  def recording_resize(image: tf.Tensor, size: int, antialias: bool) -> tf.Tensor:
    seen.append(antialias)
    return resize(image, size, antialias)

  monkeypatch.setattr(ip, "_resize", recording_resize)
  config = default.get_config()
  config.update(dict(dataset="imagenette", data_dir=tfds_dir, batch_size=4, shuffle_buffer=8,
                     resize_antialias=antialias))
  source = data.create_source(config, DataParallel().data_sharding)
  assert next(source.train_batches(0))["image"].shape == (4, 224, 224, 3)
  assert seen and set(seen) == {antialias}
  seen.clear()
  assert next(source.eval_batches())["image"].shape == (4, 224, 224, 3)
  assert seen and set(seen) == {antialias}


@pytest.fixture(scope="module")
def corrupt_tfds_dir(tmp_path_factory):
  """Imagenette, 8 training photos, one of which has its JPEG data overwritten (header kept,
  so the import accepts it and only decoding fails)."""
  from regnet_jax import import_data

  root = tmp_path_factory.mktemp("corrupt")
  src = root / "src"
  src.mkdir()
  for name, count in (("train-jpeg.npz", 8), ("val-jpeg.npz", 4)):
    with np.load(TESTDATA / "imagenette" / name) as d:
      arrays = dict(d)
    offsets = arrays["offsets"][:count + 1]
    arrays.update(jpeg=arrays["jpeg"][:offsets[-1]], offsets=offsets,
                  labels=arrays["labels"][:count])
    if name.startswith("train"):
      start, end = offsets[2:4]
      arrays["jpeg"][start + 200:end] = 7
    np.savez(src / name, **arrays)
  import_data.import_dataset("imagenette", str(src), str(root / "tfds"))
  return str(root / "tfds")


def test_undecodable_image_is_named_or_skipped(corrupt_tfds_dir):
  spec = datasets.get_spec("imagenette")
  builder = ip.get_builder("imagenette", corrupt_tfds_dir)
  # Independently: the one record of the split whose image does not decode.
  bad = []
  for ex in ip.read_split(builder, "train", spec, None, raw=True):
    try:
      tf.io.decode_image(ex["image"], channels=3, expand_animations=False)
    except tf.errors.OpError:
      bad.append(ex["tfds_id"].numpy().decode())
  assert len(bad) == 1
  with pytest.raises(ip.BadImageError, match=(
      rf"training image {re.escape(bad[0])} \(global batch [12]\) cannot be decoded "
      r"\(.*\); repair or remove it, or set --config.skip_bad_images=True")):
    _take(ip.train_batches(builder, spec, 4, seed=0, shuffle_buffer=8), 2)
  # Skipped: 7 good photos make one full batch of 4 per epoch (the remainder is dropped).
  batches = _take(ip.train_batches(builder, spec, 4, seed=0, shuffle_buffer=8,
                                               skip_bad_images=True), 3)
  assert [b["image"].shape for b in batches] == [(4, 224, 224, 3)] * 3


def test_import_command_says_what_it_did_without_progress_bars(tmp_path, capfd):
  from regnet_jax import import_data

  args = ["--dataset=cifar10", f"--source={TESTDATA / 'cifar10'}", f"--data_dir={tmp_path}"]
  import_data.main(args)
  out, err = capfd.readouterr()
  path = tmp_path / "cifar10" / "3.0.2"
  assert out.splitlines() == [f"Importing cifar10 from {TESTDATA / 'cifar10'} (a minute or two)...",
                              f"Imported cifar10 into {path}"]
  assert "examples/s" not in err and "downloaded" not in out + err
  import_data.main(args)
  assert capfd.readouterr().out == f"cifar10 is already imported in {path}\n"
