"""The device-resident CIFAR path: its augmentation is the tfds pipeline's, its steps are
`train_steps.train_step`'s, a scan of steps equals one call per step, one device equals eight,
and a resumed run equals an uninterrupted one."""

import functools
import json

import jax
import numpy as np
import pytest

from configs import default
from regnet_jax import datasets, resident, train_steps

CIFAR = datasets.get_spec("cifar10")


def tiny_config(**overrides):
  config = default.get_config()
  config.model = "resnet20"
  config.model_args.depth = 8  # one block per stage
  config.batch_size = 16
  config.num_epochs = 2
  config.learning_rate = 0.05
  config.update(overrides)
  return config


def tiny_arrays(train: int = 64, test: int = 24) -> dict:
  rng = np.random.RandomState(0)
  return {k: (rng.randint(0, 256, (n, 32, 32, 3)).astype(np.uint8),
              rng.randint(0, 10, n).astype(np.int32))
          for k, n in (("train", train), ("test", test))}


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


def test_normalize_matches_the_tfds_pipeline():
  from regnet_jax import input_pipeline

  images = np.random.RandomState(2).randint(0, 256, (4, 32, 32, 3)).astype(np.uint8)
  np.testing.assert_allclose(resident.normalize(images, CIFAR),
                             input_pipeline.normalize(images, CIFAR).numpy(), rtol=1e-6)


def test_epoch_order_is_a_function_of_seed_and_epoch():
  order, keys = resident.epoch_order(3, 5, 100, 6, 16)
  assert order.shape == (6, 16) and keys.shape == (6, 2)
  assert len(set(np.asarray(order).ravel().tolist())) == 96  # distinct examples
  again, _ = resident.epoch_order(3, 5, 100, 6, 16)
  other, _ = resident.epoch_order(3, 6, 100, 6, 16)
  np.testing.assert_array_equal(order, again)
  assert not np.array_equal(order, other)


def _steps(devices, scan):
  """Two steps of the tiny model from the same state: params, BN stats and losses."""
  config = tiny_config()
  schedule = train_steps.learning_rate_schedule(config, 10, 10)
  model = train_steps.build_model(config, 10)
  trainer = train_steps.Trainer(devices)
  state = trainer.replicate(train_steps.create_train_state(
      model, train_steps.create_optimizer(config, schedule), 0, 32))
  step_fn = functools.partial(train_steps.train_step, label_smoothing=0.0, schedule=schedule)
  run = resident.make_steps_fn(trainer, CIFAR, step_fn, scan=scan)
  images, labels = trainer.replicate(tiny_arrays()["train"])
  order, keys = resident.epoch_order(0, 0, 64, 2, 16)
  state, metrics = resident.run_epoch(run, state, images, labels, order, keys,
                                      2 if scan else 1)
  return jax.device_get((state.params, state.batch_stats, metrics["train_loss"]))


def test_step_is_the_train_step_on_the_augmented_batch():
  """One call of the resident step == `train_steps.train_step` on the batch built by hand."""
  config = tiny_config()
  schedule = train_steps.learning_rate_schedule(config, 10, 10)
  model = train_steps.build_model(config, 10)
  state = jax.device_get(train_steps.create_train_state(  # host copy: the step donates
      model, train_steps.create_optimizer(config, schedule), 0, 32))
  step_fn = functools.partial(train_steps.train_step, label_smoothing=0.0, schedule=schedule)
  trainer = train_steps.Trainer(jax.devices()[:1])
  images, labels = tiny_arrays()["train"]
  order, keys = resident.epoch_order(0, 0, 64, 1, 16)
  new, metrics = resident.make_steps_fn(trainer, CIFAR, step_fn, scan=False)(
      trainer.replicate(state), images, labels, order[0], keys[0])
  idx = np.asarray(order[0])
  batch = {"image": resident.normalize(resident.augment(images[idx], keys[0]), CIFAR),
           "label": labels[idx]}
  ref, ref_metrics = jax.jit(step_fn)(state, batch)
  assert float(metrics["train_loss"]) == pytest.approx(float(ref_metrics["train_loss"]),
                                                       rel=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               jax.device_get(new.params), jax.device_get(ref.params))


def test_scan_equals_one_call_per_step_and_eight_devices_equal_one():
  p1, s1, l1 = _steps(jax.devices()[:1], scan=False)
  for devices, scan in ((jax.devices()[:1], True), (jax.devices(), False)):
    p, s, losses = _steps(devices, scan)
    np.testing.assert_allclose(losses, l1, rtol=1e-5)
    # Two steps with 2 images per device round differently from one device: on a 2-core AMD
    # EPYC VM parameters differed by up to 1.1e-4 (the stem kernel) and BatchNorm statistics
    # by up to 4.4e-5 relative, varying from run to run (2026-11-29); on the Intel Xeon VMs of
    # earlier sessions by less. A sharding error (per-device BatchNorm, gradients
    # summed instead of averaged) changes the losses checked above by far more.
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=3e-4), p, p1)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), s, s1)


def test_resumed_run_equals_uninterrupted(tmp_path):
  """Two epochs in one run == one epoch, stopped by the deadline, then resumed; the workdir
  is `main.py`'s (config.json, checkpoints) with one metrics line per epoch."""
  from regnet_jax import evaluate

  arrays = tiny_arrays()
  whole = resident.train_and_evaluate(tiny_config(), str(tmp_path / "a"), arrays,
                                      eval_batch=8)
  first = resident.train_and_evaluate(tiny_config(), str(tmp_path / "b"), arrays,
                                      deadline_s=1e-3, eval_batch=8)
  assert int(first.step) == 4  # 64 examples / 16 per batch; stopped before epoch 2
  resumed = resident.train_and_evaluate(tiny_config(), str(tmp_path / "b"), arrays,
                                        eval_batch=8)
  assert int(resumed.step) == int(whole.step) == 8
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(resumed.params),
               jax.device_get(whole.params))
  rows_a, rows_b = (resident.read_metrics(str(tmp_path / d)) for d in "ab")
  assert [r["epoch"] for r in rows_b] == [1, 2] and [r["step"] for r in rows_b] == [4, 8]
  for a, b in zip(rows_a, rows_b, strict=True):
    assert a["eval_top1_error"] == b["eval_top1_error"] and a["train_loss"] == b["train_loss"]
  # The normal evaluation path reads the workdir and agrees with the run's last line.
  model, variables, _ = evaluate.load_from_workdir(str(tmp_path / "b"))
  images, labels = arrays["test"]
  logits = model.apply(variables, resident.normalize(images, CIFAR), train=False)
  error = 1.0 - float(np.mean(np.argmax(logits, -1) == labels))
  assert error == pytest.approx(rows_b[-1]["eval_top1_error"], abs=1e-6)
  # The results table and curves read it without a tfds dataset; hours add the two runs.
  from regnet_jax.analysis import results

  row = results.summarize(str(tmp_path / "b"))
  assert row["test_error"] == pytest.approx(100 * rows_b[-1]["eval_top1_error"])
  assert row["hours"] == pytest.approx(sum(r["wall_seconds"] for r in rows_b) / 3600)  # 1 + 1
  assert len({r["run_started"] for r in rows_b}) == 2
  assert row["history"]["test_error"] == [
      [r["epoch"], pytest.approx(100 * r["eval_top1_error"])] for r in rows_b]
  results.plot_curves([row], str(tmp_path / "curves.png"), "t")
  assert (tmp_path / "curves.png").stat().st_size > 0


def test_precise_bn_evals_leave_training_unchanged(tmp_path):
  """``eval_precise_bn_batches`` adds a precise-BN evaluation to every epoch: the trained
  weights are bit-identical to a run without it, and the logged error is the test error with
  every BN layer's statistics averaged over the run's first two training batches (epoch 1's
  order and augmentation), recomputed here."""
  arrays, config = tiny_arrays(), tiny_config(eval_precise_bn_batches=2)
  plain = resident.train_and_evaluate(tiny_config(), str(tmp_path / "a"), arrays, eval_batch=8)
  state = resident.train_and_evaluate(config, str(tmp_path / "b"), arrays, eval_batch=8)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params),
               jax.device_get(plain.params))
  rows = resident.read_metrics(str(tmp_path / "b"))
  assert not any(k.startswith("precise_bn_") for k in resident.read_metrics(
      str(tmp_path / "a"))[-1])
  images, labels = arrays["train"]
  order, keys = resident.epoch_order(config.seed, 0, len(labels), 4, 16)
  model = train_steps.build_model(config, 10).clone(bn_momentum=0.0)  # stats of the batch
  variables = jax.device_get({"params": state.params, "batch_stats": state.batch_stats})
  stats = [model.apply(variables, resident.train_batch(images, order[i], keys[i], CIFAR),
                       train=True, mutable=["batch_stats"])[1]["batch_stats"] for i in (0, 1)]
  variables["batch_stats"] = jax.tree.map(lambda a, b: (a + b) / 2, *stats)
  test_images, test_labels = arrays["test"]
  logits = model.apply(variables, resident.normalize(test_images, CIFAR), train=False)
  error = 1.0 - float(np.mean(np.argmax(logits, -1) == test_labels))
  loss = float(np.mean(train_steps.cross_entropy(logits, test_labels, 10)))
  assert rows[-1]["precise_bn_eval_top1_error"] == pytest.approx(error, abs=1e-6)
  assert rows[-1]["precise_bn_eval_loss"] == pytest.approx(loss, rel=1e-5)
  assert rows[-1]["precise_bn_eval_loss"] != pytest.approx(rows[-1]["eval_loss"], rel=1e-3)
  with pytest.raises(ValueError, match="eval_precise_bn_batches must be >= 0"):
    resident.train_and_evaluate(tiny_config(eval_precise_bn_batches=-1), str(tmp_path / "c"),
                                arrays)


def test_events_written_from_metrics(tmp_path):
  from regnet_jax.analysis import results

  rows = [{"epoch": 1, "step": 4, "train_loss": 2.5, "eval_top1_error": 0.75},
          {"epoch": 2, "step": 8, "train_loss": 2.0, "eval_top1_error": 0.5}]
  (tmp_path / resident.METRICS_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))
  resident.main(["resident", f"--workdir={tmp_path}", "--events_only"])
  scalars = results.read_scalars(str(tmp_path))
  assert [(s, v) for s, v, _ in scalars["eval_top1_error"]] == [(4, 0.75), (8, 0.5)]
  assert [(s, v) for s, v, _ in scalars["train_loss"]] == [(4, 2.5), (8, 2.0)]


def test_bad_input_is_reported(tmp_path):
  with pytest.raises(ValueError, match="resident path is for CIFAR"):
    resident.load_arrays("imagenette", str(tmp_path), None)
  with pytest.raises(FileNotFoundError, match=r"train-jpeg\.npz"):
    resident.load_arrays("cifar10", str(tmp_path), None)
  with pytest.raises(ValueError, match=r"exceeds the 64 training examples"):
    resident.train_and_evaluate(tiny_config(batch_size=128), str(tmp_path / "w"),
                                tiny_arrays())
