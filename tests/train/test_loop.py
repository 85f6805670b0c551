"""The training system end to end on a real CIFAR-10 slice: TensorBoard events, checkpoints,
evaluation in a new process, 1 device == 8 devices, resumed == uninterrupted."""

import ast
import os
import pathlib
import re
import shutil
import subprocess
import sys
import types

import jax
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from configs import cifar, default
from regnet_jax import console, data
from regnet_jax.data import pipeline as input_pipeline
from regnet_jax.train import checkpoint, evaluate, factory, loop, optim, weights
from regnet_jax.train import steps as train_steps
from regnet_jax.train.mesh import DataParallel
from tests.conftest import REPO

STEPS = 6


def tiny_config(data_dir, **overrides):
  config = default.get_config()
  config.model = "regnet20_gru"
  config.model_args.depth = 14  # two blocks per stage: the scan still runs
  config.data_dir = data_dir
  config.batch_size = 16
  config.num_train_steps = STEPS
  config.learning_rate = 0.05
  config.shuffle_buffer = 512
  config.log_every_steps = 1
  config.eval_every_steps = STEPS
  config.checkpoint_every_steps = 3
  config.update(overrides)
  return config


def scalars(workdir):
  """{tag: {step: value}} of the scalar summaries, read back with TensorBoard's own reader."""
  acc = EventAccumulator(workdir, size_guidance={"tensors": 0})
  acc.Reload()
  out = {}
  for tag in acc.Tags()["tensors"]:
    values = {e.step: tf.make_ndarray(e.tensor_proto) for e in acc.Tensors(tag)}
    if all(v.ndim == 0 and v.dtype.kind == "f" for v in values.values()):
      out[tag] = {step: float(v) for step, v in values.items()}
  return out


@pytest.fixture(scope="module")
def reference_run(tfds_dir, tmp_path_factory):
  """An uninterrupted run on all 8 (fake) devices."""
  workdir = str(tmp_path_factory.mktemp("run8"))
  state = loop.train_and_evaluate(tiny_config(tfds_dir), workdir)
  return workdir, jax.device_get(state.params)


def test_events_checkpoints_and_eval_in_a_new_process(reference_run):
  workdir, _ = reference_run
  tags = scalars(workdir)
  for tag in ("train_loss", "train_accuracy", "learning_rate", "train_images_per_sec",
              "eval_top1_error", "eval_top5_error", "eval_loss", "compile_seconds"):
    assert tag in tags, tag
  assert sorted(tags["compile_seconds"]) == [1]  # the first step's, apart from the rate
  assert 1 not in tags["train_images_per_sec"] and "uptime" not in tags
  assert sorted(tags["train_loss"]) == list(range(1, STEPS + 1))
  assert tags["eval_examples"][STEPS] == 200  # every test example, counted once
  assert tags["learning_rate"][1] == pytest.approx(0.05)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["3", "6"]

  env = dict(os.environ)
  out = subprocess.run([sys.executable, "main.py", f"--workdir={workdir}", "--mode=eval"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  top1 = 100 * tags["eval_top1_error"][STEPS]
  assert f"step {STEPS}: top-1 error {top1:.2f}%" in out.stdout
  assert "over 200 examples" in out.stdout


def test_one_step_on_one_device_equals_eight():
  """One step of RegNet-20 from the same state and batch: same update on 1 and 8 devices."""
  config = tiny_config(None)
  schedule = optim.learning_rate_schedule(config, 10, 10)
  model = factory.build_model(config, 10)
  state = jax.device_get(train_steps.create_train_state(
      model, optim.create_optimizer(config, schedule), 0, 32))
  rng = np.random.RandomState(0)
  batch = {"image": rng.randint(0, 256, (16, 32, 32, 3)).astype(np.uint8),
           "label": rng.randint(0, 10, 16).astype(np.int32)}
  results = []
  for devices in (jax.devices()[:1], jax.devices()):
    dp = DataParallel(devices)
    p_train = train_steps.compile_train_step(dp, data.get_spec("cifar10"), 0.0, schedule)
    new, metrics = p_train(dp.replicate(state), dp.shard(batch))
    results.append(jax.device_get((new.params, new.batch_stats, metrics["train_loss"])))
  (p1, s1, l1), (p8, s8, l8) = results
  assert l1 == pytest.approx(l8, rel=1e-6)
  # Absolute tolerance: the gradients of the stem kernel and of BatchNorm biases are long sums
  # of cancelling terms. Against a float64 run of this step (docs/performance.md), one device
  # is off by up to 4.7e-5 with XLA's own convolutions at batch 16 (YNNPACK's: 6.7e-5 at batch
  # 64), 8 devices by 1.7e-7; on an AVX2 CPU the two differed by up to 3.1e-4 in a few
  # elements: float32 rounding, so 1e-3. A sharding error shows in the loss and the BatchNorm
  # statistics (checked tightly) and moves the parameters by far more.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-3), p1, p8)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), s1, s8)


def test_training_on_one_device_equals_eight(reference_run, tfds_dir, tmp_path):
  """The whole loop on 1 and on 8 devices: same global batches, losses and BN statistics.

  Early training is chaotic: on one device, scaling every parameter by (1 + 1e-7) moves the
  third step's loss by ~1e-4 (measured). The two device counts round differently (~1e-6 per
  step, see the test above), so trajectories are compared at learning rate 0, which keeps
  the data order, sharding, forward pass and BatchNorm updates of every step under test; and
  the first two steps at the real learning rate."""
  workdir8, _ = reference_run
  losses, stats = {}, {}
  for n in (1, 8):
    workdir = str(tmp_path / str(n))
    config = tiny_config(tfds_dir, learning_rate=1e-30, eval_every_steps=100,
                         checkpoint_every_steps=100)
    state = loop.train_and_evaluate(config, workdir, jax.devices()[:n])
    losses[n] = scalars(workdir)["train_loss"]
    stats[n] = jax.device_get(state.batch_stats)
  np.testing.assert_allclose([losses[1][s] for s in range(1, STEPS + 1)],
                             [losses[8][s] for s in range(1, STEPS + 1)], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               stats[1], stats[8])
  one = str(tmp_path / "real_lr")
  loop.train_and_evaluate(tiny_config(tfds_dir, num_train_steps=2), one, jax.devices()[:1])
  first, ref = scalars(one)["train_loss"], scalars(workdir8)["train_loss"]
  # Step 2 differed by 2.4e-4 (relative) on a 2-core AMD EPYC VM, by less on Intel Xeon VMs.
  np.testing.assert_allclose([first[1], first[2]], [ref[1], ref[2]], rtol=1e-3)


def test_resumed_equals_uninterrupted(reference_run, tfds_dir, tmp_path):
  workdir, params8 = reference_run
  loop.train_and_evaluate(tiny_config(tfds_dir, num_train_steps=3), str(tmp_path))
  state = loop.train_and_evaluate(tiny_config(tfds_dir), str(tmp_path),  # resumes at 3
                                  allow_config_change=True)  # (the length: 3 -> 6 steps)
  assert int(state.step) == STEPS
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params), params8)
  resumed, full = scalars(str(tmp_path))["train_loss"], scalars(workdir)["train_loss"]
  assert [resumed[s] for s in range(4, STEPS + 1)] == [full[s] for s in range(4, STEPS + 1)]
  runs = checkpoint.read_runs(str(tmp_path))  # each start of the process is recorded
  assert len(runs) == 2 and runs[0]["started"] <= runs[1]["started"]
  assert runs[0]["devices"] == f"{jax.device_count()} x cpu" and runs[0]["jax"] == jax.__version__
  assert runs[1]["config_changes"] == {"num_train_steps": [3, STEPS]}


def test_a_resume_with_another_recipe_is_refused_or_recorded(reference_run, tfds_dir, tmp_path):
  """Another learning rate on a trained workdir: refused in one line naming the field (nothing
  written); allowed on purpose, the change is recorded in runs.jsonl and config.json."""
  copy = tmp_path / "run"
  shutil.copytree(reference_run[0], copy)
  before = (copy / "config.json").read_text(), (copy / "runs.jsonl").read_text()
  config = tiny_config(tfds_dir, learning_rate=0.5, log_every_steps=2)
  with pytest.raises(ValueError, match=r"holds a run with another recipe \(learning_rate: 0\.05 "
                     r"-> 0\.5\); resume it with its own config"):
    loop.train_and_evaluate(config, str(copy))
  assert ((copy / "config.json").read_text(), (copy / "runs.jsonl").read_text()) == before
  state = loop.train_and_evaluate(config, str(copy), allow_config_change=True)
  assert int(state.step) == STEPS  # (already finished: nothing more to train)
  assert checkpoint.read_runs(str(copy))[-1]["config_changes"] == {"learning_rate": [0.05, 0.5]}
  assert checkpoint.read_config(str(copy)).learning_rate == 0.5


def test_load_from_workdir_for_inference(reference_run):
  workdir, params8 = reference_run
  model, variables, config = evaluate.load_from_workdir(workdir)
  assert config.model == "regnet20_gru"
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(variables["params"]), params8)
  logits = model.apply(variables, np.zeros((2, 32, 32, 3), np.float32), train=False)
  assert logits.shape == (2, 10)
  with pytest.raises(FileNotFoundError, match=r"no checkpoint 7 in .*; it has steps 3, 6$"):
    evaluate.load_from_workdir(workdir, step=7)


def test_weight_decay_mask_skips_norms_and_biases():
  model = factory.build_model(tiny_config(None), 10)
  params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), np.zeros((1, 32, 32, 3)),
                                             train=False))["params"]
  mask = {jax.tree_util.keystr(k): v for k, v in
          jax.tree_util.tree_leaves_with_path(optim.weight_decay_mask(params))}
  assert mask["['stage2']['blocks']['conv1']['kernel']"]  # scanned, stacked kernel
  assert mask["['stage2']['cell']['zr']['pointwise']"]
  assert not mask["['stage2']['cell']['zr']['bias']"]
  assert not mask["['stage2']['blocks']['bn1']['scale']"]
  assert not mask["['stage2']['blocks']['regulator']['bn_h']['bias']"]
  assert not mask["['fc']['bias']"] and mask["['fc']['kernel']"]
  assert not mask["['stage2']['block0']['proj_conv']['bias']"]


def test_learning_rate_schedules():
  config = tiny_config(None, learning_rate=0.1, lr_boundaries=(2.0, 3.0))
  step = optim.learning_rate_schedule(config, steps_per_epoch=10, num_steps=50)
  assert [float(step(s)) for s in (0, 19, 20, 29, 30)] == pytest.approx(
      [0.1, 0.1, 0.01, 0.01, 0.001])
  config.update(dict(lr_schedule="cosine", warmup_epochs=1.0))
  cos = optim.learning_rate_schedule(config, steps_per_epoch=10, num_steps=50)
  assert [float(cos(s)) for s in (0, 5, 10, 30, 50)] == pytest.approx(
      [0.0, 0.05, 0.1, 0.05, 0.0], abs=1e-6)


def test_label_smoothing_loss():
  logits = np.log(np.array([[0.7, 0.2, 0.1]], np.float32))
  plain = float(train_steps.cross_entropy(logits, np.array([0]), 3)[0])
  smooth = float(train_steps.cross_entropy(logits, np.array([0]), 3, smoothing=0.3)[0])
  assert plain == pytest.approx(-np.log(0.7), rel=1e-5)
  want = -(0.8 * np.log(0.7) + 0.1 * np.log(0.2) + 0.1 * np.log(0.1))
  assert smooth == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("overrides,match", [
    ({"batch_size": 12}, "batch_size=12 must be a positive multiple of the number of "
     "devices \\(8\\); e.g. --config.batch_size=8"),
    ({"model": "resnet21"}, "unknown model 'resnet21'"),
    ({"dataset": "mnist"}, "unknown dataset 'mnist'"),
    ({"model_args": {"regulated_stages": (4,)}},
     "regulated_stages entry=4 is not valid"),
    ({"learning_rate": 0.0}, "learning_rate must be positive"),
    ({"batch_size": -8}, "batch_size must be positive"),
    ({"num_epochs": 0.0, "num_train_steps": -1}, "num_epochs must be positive"),
    ({"model_args": {"depth": 21}}, "depth=21 is not valid for a CIFAR ResNet; it must be 6n\\+2"),
    ({"model_args": {"cell_conv": "dense5x5"}}, "cell_conv='dense5x5' is not valid"),
    ({"eval_precise_bn_batches": -1}, "eval_precise_bn_batches must be >= 0"),
    ({"input_sharding": "host"}, "input_sharding='host' is not valid; choose one of process, "
     "global"),
])
def test_bad_config_fails_fast_and_writes_nothing(tfds_dir, tmp_path, overrides, match):
  workdir = tmp_path / "w"
  with pytest.raises(ValueError, match=match):
    loop.train_and_evaluate(tiny_config(tfds_dir, **overrides), str(workdir))
  assert not workdir.exists()


def test_mismatched_checkpoint_is_named_and_kept(reference_run, tfds_dir):
  workdir, _ = reference_run
  config_json = pathlib.Path(workdir, "config.json")
  before = config_json.read_text()
  other = tiny_config(tfds_dir, model="regnet20_lstm")
  with pytest.raises(ValueError, match=r"another recipe \(model: 'regnet20_gru' -> "
                     r"'regnet20_lstm'\)"):
    loop.train_and_evaluate(other, workdir)
  with pytest.raises(checkpoint.CheckpointMismatchError,  # if allowed, the checkpoint refuses
                     match=r"\(params\.stage1\.cell\.h\.bias is in the checkpoint but not in "
                     r"the model\)"):
    loop.train_and_evaluate(other, workdir, allow_config_change=True)
  assert config_json.read_text() == before
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["3", "6"]


@pytest.mark.parametrize("damage", ["truncate", "empty"])
def test_corrupt_newest_checkpoint_falls_back(reference_run, tfds_dir, tmp_path, caplog, damage):
  """A damaged newest checkpoint is set aside with a warning; training resumes from the one
  before and ends exactly where the uninterrupted run did."""
  workdir, params8 = reference_run
  copy = tmp_path / "run"
  shutil.copytree(workdir, copy)
  newest = copy / "checkpoints" / str(STEPS)
  if damage == "truncate":  # a torn write of the largest array file
    biggest = max((p for p in newest.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    with open(biggest, "r+b") as f:
      f.truncate(biggest.stat().st_size // 2)
  else:  # a step folder whose files were lost
    shutil.rmtree(newest)
    newest.mkdir()
  state = loop.train_and_evaluate(tiny_config(tfds_dir), str(copy))
  assert f"checkpoint {STEPS} in" in caplog.text and "falling back" in caplog.text
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params), params8)
  assert len(os.listdir(copy / "corrupt_checkpoints")) == 1  # kept for inspection
  assert sorted(os.listdir(copy / "checkpoints")) == ["3", "6"]


def test_regnet50_imagenet_config_on_real_photos(tfds_dir, tmp_path):
  """The ImageNet RegNet-50 config, small batch, two steps on Imagenette via the CLI: the
  bottleneck path, JPEG decoding and Inception crops on real photographs, end to end."""
  workdir = tmp_path / "r50"
  cmd = [sys.executable, "main.py", "--config=configs/imagenet_regnet50.py",
         f"--workdir={workdir}", "--config.dataset=imagenette", f"--config.data_dir={tfds_dir}",
         "--config.batch_size=8", "--config.num_train_steps=2", "--config.log_every_steps=1",
         "--config.shuffle_buffer=40"]
  out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  tags = scalars(str(workdir))
  assert sorted(tags["train_loss"]) == [1, 2]
  assert all(np.isfinite(v) for v in tags["train_loss"].values())
  assert tags["eval_examples"][2] == 20
  assert (workdir / "checkpoints" / "2").is_dir()


def test_unwritable_workdir_fails_before_training(tfds_dir, tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  with pytest.raises(OSError, match=r"cannot write to the workdir .*a_file/w: Not a directory"):
    loop.train_and_evaluate(tiny_config(tfds_dir), str(blocker / "w"))


def test_full_disk_fails_before_training(tfds_dir, tmp_path, monkeypatch):
  workdir = tmp_path / "w"
  real = shutil.disk_usage
  monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=1 << 20))
  with pytest.raises(OSError, match=r"has 1 MiB free; this run's 3 kept checkpoints need"):
    loop.train_and_evaluate(tiny_config(tfds_dir), str(workdir))
  assert not workdir.exists()


def test_missing_dataset_says_how_to_import_and_writes_nothing(tmp_path):
  workdir = tmp_path / "w"
  with pytest.raises(input_pipeline.DatasetNotFoundError,
                     match=r"python -m regnet_jax\.import_data --dataset=cifar10 --source="):
    loop.train_and_evaluate(tiny_config(str(tmp_path / "empty_data_dir")), str(workdir))
  assert not workdir.exists()


@pytest.mark.parametrize("args,match", [
    (["--config=configs/cifar.py:resnet20", "--config.no_such_field=1"],
     "error: --config.no_such_field=1: the config has no field 'no_such_field'"),
    (["--config=configs/nope.py"], "error: config file configs/nope.py not found"),
    (["--mode=eval"], "no checkpoint in"),
    (["--config=configs/cifar.py:resnet20", "--config.learning_rat=0.05"],
     "error: --config.learning_rat=0.05: the config has no field 'learning_rat' (did you mean "
     "'learning_rate'?); the config file lists every field"),
    (["--config=configs/cifar.py:resnet20", "--config.input=tfds",
      "--config.model_args.paring=concat"],
     "error: --config.model_args.paring=concat: the config has no field 'paring' (did you "
     "mean 'pairing'?)"),
])
def test_cli_bad_input_table(reference_run, tmp_path, args, match):
  """One clear last line, no traceback, nothing written to the workdir."""
  workdir = tmp_path / "w"
  workdir.mkdir()
  shutil.copy(pathlib.Path(reference_run[0], "config.json"), workdir)  # trained nowhere yet
  out = subprocess.run([sys.executable, "main.py", f"--workdir={workdir}", *args], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
  assert out.returncode != 0
  last = out.stderr.strip().splitlines()[-1]
  assert match in last, out.stderr[-2000:]
  assert "Traceback" not in out.stderr
  assert os.listdir(workdir) == ["config.json"]


def test_cli_reports_bad_input_in_one_line(tfds_dir, tmp_path):
  workdir = tmp_path / "w"
  out = subprocess.run([sys.executable, "main.py", "--config=configs/cifar.py:resnet21",
                        f"--workdir={workdir}", f"--config.data_dir={tfds_dir}"],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
  assert out.returncode == 1
  assert out.stderr.strip().splitlines()[-1].startswith("error: unknown model 'resnet21'")
  assert "Traceback" not in out.stderr and not workdir.exists()
  out = subprocess.run([sys.executable, "main.py", f"--workdir={workdir}", "--mode=eval"],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
  assert out.returncode == 1 and "Traceback" not in out.stderr
  assert "not a training workdir" in out.stderr.strip().splitlines()[-1]


def test_half_precision_step_keeps_float32_state():
  config = tiny_config(None, half_precision=True)
  schedule = optim.learning_rate_schedule(config, 10, 10)
  model = factory.build_model(config, 10)
  assert model.dtype == jax.numpy.bfloat16
  dp = DataParallel(jax.devices()[:2])
  state = dp.replicate(train_steps.create_train_state(
      model, optim.create_optimizer(config, schedule), 0, 32))
  rng = np.random.RandomState(0)
  batch = dp.shard({"image": rng.randn(4, 32, 32, 3).astype(np.float32),
                    "label": rng.randint(0, 10, 4).astype(np.int32)})
  p_train = train_steps.compile_train_step(dp, data.get_spec("cifar10"), 0.0, schedule)
  state, metrics = p_train(state, batch)
  assert np.isfinite(float(metrics["train_loss"]))
  dtypes = {x.dtype for x in jax.tree.leaves((state.params, state.batch_stats, state.opt_state))}
  assert dtypes <= {np.dtype("float32"), np.dtype("int32")}


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tfds_dir, tmp_path):
  config = tiny_config(tfds_dir, learning_rate=1e6, checkpoint_every_steps=1,
                       eval_every_steps=100)
  with pytest.raises(FloatingPointError, match=r"non-finite .* (step|steps) \d"):
    loop.train_and_evaluate(config, str(tmp_path))
  ckpt = checkpoint.Checkpointer(str(tmp_path))
  kept = ckpt.manager.all_steps()
  assert kept and max(kept) < STEPS
  assert not [d for d in os.listdir(tmp_path / "checkpoints") if "tmp" in d]  # all complete
  model = factory.build_model(config, 10)
  state = train_steps.create_train_state(model, optim.create_optimizer(
      config, optim.learning_rate_schedule(config, 10, 10)), 0, 32)
  restored = ckpt.restore(max(kept), state, DataParallel(jax.devices()[:1]).replicated)
  assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(restored.params))


@pytest.mark.parametrize("signum", ["SIGTERM", "SIGINT"])
def test_a_signal_stops_within_two_steps_with_a_checkpoint(tfds_dir, tmp_path, signum):
  """SIGTERM (preemption) or SIGINT (Ctrl-C) after step 3 is logged: the run stops at step 4
  or 5 (one step in flight), saves it, exits 0, and the same command resumes. The compiled
  steps went to the persistent compilation cache that ``--compilation_cache`` names."""
  import signal

  workdir, cache = tmp_path / "pre", tmp_path / "xla_cache"
  cmd = [sys.executable, "main.py", "--config=configs/cifar.py:resnet20", f"--workdir={workdir}",
         f"--config.data_dir={tfds_dir}", "--config.batch_size=16", "--config.log_every_steps=1",
         "--config.num_train_steps=100000", "--config.shuffle_buffer=512",
         f"--compilation_cache={cache}"]
  env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
  proc = subprocess.Popen(cmd, cwd=REPO, stderr=subprocess.PIPE, text=True, env=env)
  lines = []
  for line in proc.stderr:  # absl logs to stderr
    lines.append(line)
    if "[3] " in line and "train_loss" in line:
      proc.send_signal(getattr(signal, signum))
      break
  out = "".join(lines) + proc.stderr.read()
  assert proc.wait(timeout=120) == 0, out[-3000:]
  assert f"Stopped by {signum} at step" in out
  saved = sorted(int(s) for s in os.listdir(workdir / "checkpoints"))
  assert len(saved) == 1 and 3 < saved[0] <= 5, (saved, out[-3000:])
  assert any(cache.iterdir())
  config = cifar.get_config("resnet20")  # the command's config, one step further
  config.update(dict(data_dir=tfds_dir, batch_size=16, shuffle_buffer=512,
                     num_train_steps=saved[0] + 1, eval_every_steps=10**6))
  resumed = loop.train_and_evaluate(config, str(workdir), allow_config_change=True)
  assert int(resumed.step) == saved[0] + 1


def test_a_signal_during_evaluation_stops_within_a_batch_with_a_checkpoint(tfds_dir, tmp_path):
  """SIGINT while the step-2 evaluation reads its first batches: the evaluation is abandoned
  (nothing logged for it), step 2 is saved although it is no checkpoint step, and the run
  stops there."""
  import signal

  config = tiny_config(tfds_dir, eval_every_steps=2, checkpoint_every_steps=100)
  real = data.create_source(config, DataParallel().data_sharding)
  served = []

  def eval_batches():
    for batch in real.eval_batches():
      served.append(1)
      if len(served) == 1:
        os.kill(os.getpid(), signal.SIGINT)  # served by the loop's handler, not KeyboardInterrupt
      yield batch

  source = types.SimpleNamespace(steps_per_epoch=real.steps_per_epoch,
                                 train_batches=real.train_batches, eval_batches=eval_batches)
  state = loop.train_and_evaluate(config, str(tmp_path), source=source)
  assert int(state.step) == 2
  assert len(served) <= 4  # of 13: the batch in hand plus what the prefetch had read
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2"]
  logged = scalars(str(tmp_path))
  assert sorted(logged["train_loss"]) == [1, 2] and "eval_top1_error" not in logged


def test_precise_bn_is_the_mean_of_batch_statistics():
  config = tiny_config(None)
  model = factory.build_model(config, 10)
  dp = DataParallel(jax.devices()[:2])
  schedule = optim.learning_rate_schedule(config, 10, 10)
  state = dp.replicate(train_steps.create_train_state(
      model, optim.create_optimizer(config, schedule), 0, 32))
  rng = np.random.RandomState(0)
  batches = [{"image": rng.randn(4, 32, 32, 3).astype(np.float32) + i} for i in range(2)]
  variables = {"params": state.params, "batch_stats": state.batch_stats}
  recompute = evaluate.precise_bn(dp, model, data.get_spec("cifar10"))
  stats = jax.device_get(recompute(variables, iter(batches), 5))  # only 2 batches come
  kernel = np.asarray(state.params["stem_conv"]["kernel"], np.float64)
  moments = []
  for b in batches:  # the stem convolution by hand, in float64
    spec = data.get_spec("cifar10")  # the steps normalise the pixels first
    x = (b["image"].astype(np.float64) - np.array(spec.mean)) / np.array(spec.std)
    x = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    y = sum(x[:, i:i + 32, j:j + 32, :] @ kernel[i, j] for i in range(3) for j in range(3))
    moments.append((y.mean((0, 1, 2)), y.var((0, 1, 2))))
  np.testing.assert_allclose(stats["stem_bn"]["mean"], (moments[0][0] + moments[1][0]) / 2,
                             rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(stats["stem_bn"]["var"], (moments[0][1] + moments[1][1]) / 2,
                             rtol=1e-4)
  assert stats["stage3"]["blocks"]["regulator"]["bn_h"]["var"].shape == (1, 64)
  with pytest.raises(ValueError, match="at least one training batch"):
    recompute(variables, iter([]), 2)


def test_eval_with_precise_bn_logs_beside_the_running_averages(reference_run, tmp_path, capsys):
  copy = tmp_path / "run"
  shutil.copytree(reference_run[0], copy)
  result = evaluate.evaluate_workdir(str(copy), precise_bn_batches=2)
  assert result["eval_examples"] == 200
  out = capsys.readouterr().out  # the recomputation is announced before the result
  assert out.index("Recomputing BatchNorm statistics over 2 training batches...") < out.index(
      f"step {STEPS}: top-1 error")
  evals = scalars(str(copy / "eval"))  # apart from training's events
  assert evals["precise_bn_eval_top1_error"][STEPS] == pytest.approx(result["eval_top1_error"])
  assert scalars(str(copy)) == scalars(reference_run[0])


def test_precise_bn_evals_during_training_leave_training_unchanged(reference_run, tfds_dir,
                                                                   tmp_path):
  """``eval_precise_bn_batches`` adds a precise-BN evaluation beside every running-average one;
  the trained weights are bit-identical to a run without it, and the final one equals what
  ``--mode=eval --precise_bn`` computes for the final checkpoint."""
  workdir, params8 = reference_run
  run = str(tmp_path / "run")
  state = loop.train_and_evaluate(
      tiny_config(tfds_dir, eval_every_steps=3, eval_precise_bn_batches=2), run)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params), params8)
  tags = scalars(run)
  assert sorted(tags["precise_bn_eval_top1_error"]) == sorted(tags["eval_top1_error"]) == [3, 6]
  assert tags["eval_top1_error"][STEPS] == scalars(workdir)["eval_top1_error"][STEPS]
  assert tags["precise_bn_eval_loss"][STEPS] != tags["eval_loss"][STEPS]  # other statistics
  final = tags["precise_bn_eval_top1_error"][STEPS]
  shutil.copytree(workdir, tmp_path / "copy")
  assert evaluate.evaluate_workdir(str(tmp_path / "copy"), precise_bn_batches=2)[
      "eval_top1_error"] == pytest.approx(final, abs=1e-6)


def test_images_per_sec_leaves_evaluation_out(tfds_dir, tmp_path, monkeypatch):
  """The logged rate is (steps timed) x batch / their time, on a fake clock: each step takes 1 s
  and each evaluation 100 s, so every log says 16 img/s (batch 16). Counting the steps before
  an evaluation against the time after it would log 64 at step 4."""
  clock = types.SimpleNamespace(now=0.0)
  monkeypatch.setattr(loop, "time", types.SimpleNamespace(perf_counter=lambda: clock.now))
  compile_train_step = train_steps.compile_train_step

  def timed_compile_train_step(*args, **kwargs):
    p_train = compile_train_step(*args, **kwargs)

    def p_train_1s(state, batch):
      clock.now += 1.0
      return p_train(state, batch)

    return p_train_1s

  evaluate_real = evaluate.evaluate

  def evaluate_100s(*args, **kwargs):
    clock.now += 100.0
    return evaluate_real(*args, **kwargs)

  monkeypatch.setattr(train_steps, "compile_train_step", timed_compile_train_step)
  monkeypatch.setattr(evaluate, "evaluate", evaluate_100s)
  run = str(tmp_path / "run")
  loop.train_and_evaluate(tiny_config(tfds_dir, log_every_steps=4, eval_every_steps=3), run)
  logged = scalars(run)
  assert logged["train_images_per_sec"] == {4: 16.0, 6: 16.0}
  assert logged["compile_seconds"] == {1: 1.0}  # the first step, apart


def test_a_diverging_loss_warns_naming_the_step_and_the_learning_rate(caplog):
  """Four times the first logged loss or more: a warning that names the step and suggests a
  lower learning rate (a non-finite loss stops the run: the test above)."""
  with caplog.at_level("WARNING"):
    loop._check_divergence(7.9, 2.0, step=40, learning_rate=0.4)
  assert not caplog.text
  with caplog.at_level("WARNING"):
    loop._check_divergence(68.0, 6.9, step=40, learning_rate=0.4)
  assert ("The training loss at step 40 is 68, 10x its first value (6.9): training is "
          "diverging; lower the learning rate (now 0.4, --config.learning_rate).") in caplog.text


def test_imagenet_configs_compute_in_bfloat16_on_accelerators_only(monkeypatch):
  from configs import imagenet_regnet50

  config = imagenet_regnet50.get_config()
  assert config.half_precision is None and cifar.get_config().half_precision is False
  assert factory.compute_dtype(None) == np.float32  # this CPU
  assert factory.compute_dtype(True) == jax.numpy.bfloat16
  for backend, dtype in (("gpu", jax.numpy.bfloat16), ("tpu", jax.numpy.bfloat16),
                         ("cpu", np.float32)):
    monkeypatch.setattr(factory.jax, "default_backend", lambda b=backend: b)
    assert factory.compute_dtype(None) == dtype


def test_eval_on_a_device_count_that_does_not_divide_the_batch(reference_run, tmp_path):
  """Trained at batch 16 on 8 devices, evaluated on 3: the eval batch becomes 18 and every test
  example is still counted once, with the 8-device result."""
  copy = tmp_path / "run"
  shutil.copytree(reference_run[0], copy)
  result = evaluate.evaluate_workdir(str(copy), devices=jax.devices()[:3])
  assert result["eval_examples"] == 200
  assert result["eval_top1_error"] == pytest.approx(
      scalars(reference_run[0])["eval_top1_error"][STEPS], abs=1e-6)


@pytest.mark.parametrize("exported", [False, True])
def test_readme_python_api_runs_as_written(reference_run, tmp_path, exported):
  """README's Python API example, pasted as it stands into a new interpreter, on a trained
  workdir or its exported weights file: it prints the predicted and true class names, and
  nothing else (no library warnings on stderr; loading a file imports no TensorFlow, so the
  routine start-up lines TensorFlow's native code writes on some CPUs when the example's own
  tfds imports it are left out)."""
  workdir, _ = reference_run
  path = workdir
  if exported:
    path = str(tmp_path / "model.safetensors")
    weights.export(workdir, path)
  readme = (REPO / "README.md").read_text()
  [example] = re.findall(r"## Python API\n\n```python\n(.*?)```", readme, re.S)
  assert '"workdirs/cifar10_regnet20"' in example
  out = subprocess.run([sys.executable, "-c",
                        example.replace('"workdirs/cifar10_regnet20"', repr(path))],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
  stderr = "".join(line for line in out.stderr.splitlines(keepends=True)
                   if not console._ROUTINE_NATIVE.search(line))
  assert out.returncode == 0 and stderr == "", out.stderr[-2000:]
  predicted, true = (ast.literal_eval(part + "]") for part in
                     out.stdout.strip()[:-1].split("] "))
  names = tfds.builder("cifar10", data_dir=checkpoint.read_config(workdir).data_dir).info \
      .features["label"].names
  labels = tfds.as_numpy(tfds.load("cifar10", split="test[:8]", batch_size=-1,
                                   data_dir=checkpoint.read_config(workdir).data_dir))["label"]
  assert true == [names[i] for i in labels] and len(predicted) == 8
  assert set(predicted) <= set(names)
