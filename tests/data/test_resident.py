"""The device-resident CIFAR source: its augmentation is the tfds pipeline's, its batches follow
a seeded order, and the one training loop run on it gives one device == eight devices,
resumed == uninterrupted and precise-BN evaluations that leave training unchanged."""

import jax
import numpy as np
import pytest

from configs import default
from regnet_jax import data
from regnet_jax.data import resident
from regnet_jax.train import evaluate, factory, loop, steps
from regnet_jax.train.mesh import DataParallel

CIFAR = data.get_spec("cifar10")


def tiny_config(**overrides):
  config = default.get_config()
  config.model = "resnet20"
  config.model_args.depth = 8  # one block per stage
  config.input = "resident"
  config.batch_size = 16
  config.num_epochs = 2
  config.learning_rate = 0.05
  config.log_every_steps = 2
  config.update(overrides)
  return config


def tiny_arrays(train: int = 64, test: int = 24) -> dict:
  rng = np.random.RandomState(0)
  return {k: (rng.randint(0, 256, (n, 32, 32, 3)).astype(np.uint8),
              rng.randint(0, 10, n).astype(np.int32))
          for k, n in (("train", train), ("test", test))}


def source(config, devices=None, arrays=None):
  return resident.ResidentSource(arrays or tiny_arrays(), CIFAR, config.batch_size, config.seed,
                                 DataParallel(devices).data_sharding, eval_batch=8)


def test_augment_is_a_padded_crop_or_its_mirror():
  """Each output is one of the 81 crops of the 4-pixel zero-padded image, or its mirror."""
  images = np.random.RandomState(1).randint(1, 256, (32, 32, 32, 3)).astype(np.uint8)
  out = np.asarray(resident.augment(images, jax.random.PRNGKey(0)))
  padded = np.pad(images, ((0, 0), (4, 4), (4, 4), (0, 0)))
  seen = set()
  for i in range(len(images)):
    matches = [(dy, dx, flip) for dy in range(9) for dx in range(9) for flip in (False, True)
               if np.array_equal(out[i], (lambda c: c[:, ::-1] if flip else c)(
                   padded[i, dy:dy + 32, dx:dx + 32]))]
    assert len(matches) == 1, f"image {i}: {matches}"
    seen.add(matches[0])
  assert {m[2] for m in seen} == {False, True} and len({m[:2] for m in seen}) > 10


def test_epoch_order_is_a_function_of_seed_and_epoch():
  order, keys = resident.epoch_order(3, 5, 100, 6, 16)
  assert order.shape == (6, 16) and keys.shape == (6, 2)
  assert len(set(np.asarray(order).ravel().tolist())) == 96  # distinct examples
  again, _ = resident.epoch_order(3, 5, 100, 6, 16)
  other, _ = resident.epoch_order(3, 6, 100, 6, 16)
  np.testing.assert_array_equal(order, again)
  assert not np.array_equal(order, other)


def test_batches_are_the_augmented_examples_of_the_epoch_order():
  """Step s's batch: epoch s // 4's order and key (4 steps per epoch), augmented, sharded
  over the devices; resuming at a step gives the same batches; evaluation sees every test
  example once, the padding masked."""
  config = tiny_config()
  src = source(config)
  (images, labels), (test_images, _) = tiny_arrays()["train"], tiny_arrays()["test"]
  batches = [jax.device_get(b) for b in _take(src.train_batches(0), 6)]
  for s, batch in enumerate(batches):
    order, keys = resident.epoch_order(config.seed, s // 4, 64, 4, 16)
    idx = np.asarray(order[s % 4])
    np.testing.assert_array_equal(batch["image"], resident.augment(images[idx], keys[s % 4]))
    np.testing.assert_array_equal(batch["label"], labels[idx])
  resumed = jax.device_get(next(src.train_batches(5)))
  np.testing.assert_array_equal(resumed["image"], batches[5]["image"])
  assert next(src.train_batches(0))["image"].sharding == DataParallel().data_sharding
  evals = [jax.device_get(b) for b in src.eval_batches()]
  assert len(evals) == 3 and all(len(b["label"]) == 8 for b in evals)
  mask = np.concatenate([b["mask"] for b in evals])
  assert mask.sum() == 24
  np.testing.assert_array_equal(np.concatenate([b["image"] for b in evals]), test_images)


def _take(iterator, n):
  return [b for _, b in zip(range(n), iterator, strict=False)]


def test_eight_devices_train_like_one(tmp_path):
  """The one loop on the resident source: 8 devices == 1 device, up to float rounding."""
  config = tiny_config(num_train_steps=2)
  one = loop.train_and_evaluate(config, str(tmp_path / "a"), jax.devices()[:1],
                                source=source(config, jax.devices()[:1]))
  eight = loop.train_and_evaluate(config, str(tmp_path / "b"), source=source(config))
  # Steps with 2 images per device round differently from one device: on a 2-core AMD EPYC VM
  # parameters differed by up to 1.1e-4 (the stem kernel) and BatchNorm statistics by up to
  # 4.4e-5 relative, varying from run to run. A sharding error (per-device BatchNorm,
  # gradients summed instead of averaged) changes them by far more.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=3e-4),
               jax.device_get(eight.params), jax.device_get(one.params))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               jax.device_get(eight.batch_stats), jax.device_get(one.batch_stats))


def test_resumed_run_equals_uninterrupted(tmp_path):
  """Two epochs in one run == stopped by the deadline inside the first epoch, then resumed."""
  config = tiny_config()
  whole = loop.train_and_evaluate(config, str(tmp_path / "a"), source=source(config))
  first = loop.train_and_evaluate(config, str(tmp_path / "b"), deadline_s=1e-3,
                                  source=source(config))
  assert int(first.step) == 1  # stopped after its first step, mid-epoch
  resumed = loop.train_and_evaluate(config, str(tmp_path / "b"), source=source(config))
  assert int(resumed.step) == int(whole.step) == 8
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(resumed.params),
               jax.device_get(whole.params))
  # The evaluation path reads the workdir and agrees with the run's last evaluation.
  from regnet_jax.analysis import events

  model, variables, _ = evaluate.load_from_workdir(str(tmp_path / "b"))
  images, labels = tiny_arrays()["test"]
  logits = model.apply(variables, data.normalize(images, CIFAR), train=False)
  error = 1.0 - float(np.mean(np.argmax(logits, -1) == labels))
  logged = events.read_scalars(events.event_files(str(tmp_path / "b")))["eval_top1_error"]
  assert [s for s, _, _ in logged] == [4, 8]
  assert error == pytest.approx(logged[-1][1], abs=1e-6)


def test_precise_bn_evals_leave_training_unchanged(tmp_path):
  """``eval_precise_bn_batches`` adds a precise-BN evaluation to every epoch: the trained
  weights are bit-identical to a run without it, and the logged error is the test error with
  every BN layer's statistics averaged over the run's first two training batches, recomputed
  here."""
  from regnet_jax.analysis import events

  config = tiny_config(eval_precise_bn_batches=2)
  plain = loop.train_and_evaluate(tiny_config(), str(tmp_path / "a"),
                                  source=source(tiny_config()))
  state = loop.train_and_evaluate(config, str(tmp_path / "b"), source=source(config))
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params),
               jax.device_get(plain.params))
  logged = events.read_scalars(events.event_files(str(tmp_path / "b")))
  assert "precise_bn_eval_top1_error" not in events.read_scalars(events.event_files(
      str(tmp_path / "a")))
  model = factory.build_model(config, 10).clone(bn_momentum=0.0)  # stats of the batch
  variables = jax.device_get({"params": state.params, "batch_stats": state.batch_stats})
  stats = [model.apply(variables, data.normalize(b["image"], CIFAR), train=True,
                       mutable=["batch_stats"])[1]["batch_stats"]
           for b in _take(source(config).train_batches(0), 2)]
  variables["batch_stats"] = jax.tree.map(lambda a, b: (a + b) / 2, *stats)
  test_images, test_labels = tiny_arrays()["test"]
  logits = model.apply(variables, data.normalize(test_images, CIFAR), train=False)
  error = 1.0 - float(np.mean(np.argmax(logits, -1) == test_labels))
  loss = float(np.mean(steps.cross_entropy(logits, test_labels, 10)))
  assert logged["precise_bn_eval_top1_error"][-1][1] == pytest.approx(error, abs=1e-6)
  assert logged["precise_bn_eval_loss"][-1][1] == pytest.approx(loss, rel=1e-5)
  assert logged["precise_bn_eval_loss"][-1][1] != pytest.approx(logged["eval_loss"][-1][1],
                                                                rel=1e-3)


def test_bad_input_is_reported(tfds_dir, tmp_path):
  config = tiny_config(dataset="imagenette", data_dir=tfds_dir)
  with pytest.raises(ValueError, match="input='resident' is for CIFAR datasets"):
    data.create_source(config, DataParallel().data_sharding)
  with pytest.raises(ValueError, match=r"batch_size=128 is larger than the training split "
                     r"\(64 examples\)"):
    source(tiny_config(batch_size=128))
  with pytest.raises(ValueError, match="input='disk' is not valid; choose one of tfds, resident"):
    loop.train_and_evaluate(tiny_config(input="disk"), str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()
