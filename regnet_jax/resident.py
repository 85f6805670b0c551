"""CIFAR training with the whole dataset resident on the accelerators.

    python -m regnet_jax.resident --config=configs/cifar.py:regnet20_gru --workdir=DIR \
        [--npz_dir=../shared/data/cifar10] [--deadline_s=3600]

On a GPU a CIFAR step takes a few milliseconds: the tfds pipeline and Python's per-step
dispatch would cost more than the step. Here the decoded uint8 images live on the devices and
each epoch is one jitted ``lax.scan`` over its steps (one call per step on CPUs): shuffle,
the augmentation of ``input_pipeline.cifar_train`` (4-pixel zero padding, random 32x32 crop,
random horizontal flip), normalisation, and the same
:func:`regnet_jax.train_steps.train_step` as ``main.py``.
The test split is evaluated after every epoch in one jitted call; with
``config.eval_precise_bn_batches = N`` also with BatchNorm statistics recomputed over the run's
first N training batches (epoch 1's order and augmentation), logged as ``precise_bn_eval_*``.

The workdir is ``main.py``'s: ``config.json`` and orbax checkpoints (one per epoch; a rerun of
the same command resumes, and epoch ``e``'s order and augmentation depend only on ``(seed,
e)``, so a resumed run matches an uninterrupted one), so ``main.py --mode=eval`` and the
analyses work on it. Metrics go to ``metrics.jsonl`` (one line per epoch) and, where clu's
TensorBoard writer can be imported (it needs TensorFlow), to TensorBoard events;
``--events_only`` writes the events of an existing ``metrics.jsonl`` later.

``--deadline_s`` bounds the run's wall time: an epoch is started only if it is expected to end
in time (the checkpoint then lets a later run continue). Random streams differ from the tfds
pipeline's, so the two paths do not give bit-identical runs.
"""

from __future__ import annotations

import functools
import io
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from regnet_jax import checkpoint, datasets, train_steps

METRICS_FILE = "metrics.jsonl"


def decode_npz(path: str) -> tuple[np.ndarray, np.ndarray]:
  """Images ``[N, 32, 32, 3] uint8`` and labels ``[N] int32`` of an offline ``.npz`` copy
  (see ``regnet_jax.import_data``), decoded with Pillow."""
  from PIL import Image

  from regnet_jax import import_data

  encoded, labels = import_data.read_npz(path)
  images = np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in encoded])
  return images, labels.astype(np.int32)


def load_arrays(dataset: str, npz_dir: str | None, data_dir: str | None
                ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """``{'train': (images, labels), 'test': ...}`` of a CIFAR dataset, uint8 images.

  From the offline ``.npz`` copies in ``npz_dir`` if given, else through tfds (prepared in
  ``data_dir``, or downloaded)."""
  spec = datasets.get_spec(dataset)
  if spec.kind != "cifar":
    raise ValueError(f"the resident path is for CIFAR datasets (32x32 images held in device "
                     f"memory); {dataset!r} is not one: use main.py")
  splits = {"train": spec.train_split, "test": spec.eval_split}
  if npz_dir is not None:
    files = {k: os.path.join(npz_dir, f"{k}-jpeg.npz") for k in splits}
    missing = [f for f in files.values() if not os.path.exists(f)]
    if missing:
      raise FileNotFoundError(f"{', '.join(missing)} not found: --npz_dir must hold the offline "
                              f"copies train-jpeg.npz and test-jpeg.npz")
    return {k: decode_npz(f) for k, f in files.items()}
  import tensorflow_datasets as tfds

  from regnet_jax import input_pipeline

  builder = input_pipeline.get_builder(dataset, data_dir)
  arrays = {}
  for key, split in splits.items():
    data = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
    arrays[key] = (data["image"], data["label"].astype(np.int32))
  return arrays


def augment(images: jax.Array, key: jax.Array) -> jax.Array:
  """``input_pipeline.cifar_train`` on a batch: 4-pixel zero padding, a random 32x32 crop and
  a random horizontal flip per image. ``[B, 32, 32, 3] -> [B, 32, 32, 3]``, same dtype."""
  b, h, w, c = images.shape
  crop_key, flip_key = jax.random.split(key)
  offsets = jax.random.randint(crop_key, (b, 2), 0, 9)
  flips = jax.random.bernoulli(flip_key, 0.5, (b,))
  padded = jnp.pad(images, ((0, 0), (4, 4), (4, 4), (0, 0)))

  def one(image, offset, flip):
    crop = jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (h, w, c))
    return jnp.where(flip, crop[:, ::-1], crop)
  return jax.vmap(one)(padded, offsets, flips)


def normalize(images: jax.Array, spec: datasets.DatasetSpec) -> jax.Array:
  """uint8 pixels -> float32 ``(x - mean) / std`` per channel, as the tfds pipeline."""
  return (images.astype(jnp.float32) - jnp.asarray(spec.mean)) / jnp.asarray(spec.std)


def train_batch(images: jax.Array, idx: jax.Array, key: jax.Array,
                spec: datasets.DatasetSpec) -> jax.Array:
  """The training batch of examples ``idx [B]`` of ``images [N, 32, 32, 3] uint8``, augmented
  with ``key`` and normalised: ``[B, 32, 32, 3]`` float32."""
  return normalize(augment(images[idx], key), spec)


_jitted_batch = jax.jit(train_batch, static_argnums=3)


def epoch_order(seed: int, epoch: int, num_examples: int, steps: int, batch: int
                ) -> tuple[jax.Array, jax.Array]:
  """Epoch ``epoch``'s example indices ``[steps, batch]`` (a permutation, remainder dropped)
  and one augmentation key per step ``[steps, 2]``: a pure function of ``(seed, epoch)``."""
  perm_key, aug_key = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(seed), epoch))
  order = jax.random.permutation(perm_key, num_examples)[:steps * batch]
  return order.reshape(steps, batch), jax.random.split(aug_key, steps)


def make_steps_fn(trainer: train_steps.Trainer, spec: datasets.DatasetSpec, step_fn: Callable,
                  scan: bool) -> Callable:
  """``run(state, images, labels, order, keys) -> (state, metrics)``, jitted: ``step_fn`` on
  the batch of each row of ``order`` (augmented with the key of the same row), in a
  ``lax.scan`` if ``scan`` (``metrics`` then holds each step's values ``[steps]``), else on one
  row (``order [batch]``, ``keys [2]``). ``images [N, 32, 32, 3] uint8`` and ``labels [N]`` are
  replicated on every device; each step's batch is sharded over them.

  On XLA:CPU a train step inside a scan runs ~25x slower than the same step jitted alone
  (measured 2026-11-28, jax 0.10.2, even for one step), so CPUs take one step per call."""
  def one_step(state, images, labels, idx, key):
    batch = {"image": train_batch(images, idx, key, spec), "label": labels[idx]}
    return step_fn(state, jax.lax.with_sharding_constraint(batch, trainer.data_sharding))

  def steps(state, images, labels, order, keys):
    return jax.lax.scan(lambda s, xs: one_step(s, images, labels, *xs), state, (order, keys))
  return jax.jit(steps if scan else one_step, donate_argnums=0)


def run_epoch(run: Callable, state: train_steps.TrainState, images: jax.Array,
              labels: jax.Array, order: jax.Array, keys: jax.Array, steps_per_call: int
              ) -> tuple[train_steps.TrainState, dict[str, np.ndarray]]:
  """The steps of one epoch (rows of ``order``), ``steps_per_call`` per call of ``run`` (from
  :func:`make_steps_fn`, scanning iff ``steps_per_call > 1``); each step's metrics
  ``[steps]``."""
  metrics = []
  for i in range(0, len(order), steps_per_call):
    if steps_per_call == 1:
      state, m = run(state, images, labels, order[i], keys[i])
      m = jax.tree.map(lambda x: x[None], m)
    else:
      state, m = run(state, images, labels, order[i:i + steps_per_call],
                     keys[i:i + steps_per_call])
    metrics.append(m)
  metrics = jax.device_get(metrics)
  return state, {k: np.concatenate([m[k] for m in metrics]) for k in metrics[0]}


def precise_bn_batches(spec: datasets.DatasetSpec, images: jax.Array, seed: int,
                       steps_per_epoch: int, batch: int, num_batches: int
                       ) -> Iterator[dict[str, np.ndarray]]:
  """The batches precise BN averages over (:func:`train_steps.precise_bn`): the run's first
  ``num_batches`` training batches, epoch 1's order and augmentation, ``{'image': [batch, 32,
  32, 3] float32}`` each; the same ones at every evaluation of a run."""
  order, keys = epoch_order(seed, 0, images.shape[0], steps_per_epoch, batch)
  for i in range(min(num_batches, steps_per_epoch)):
    yield {"image": np.asarray(_jitted_batch(images, order[i], keys[i], spec))}


def make_eval_fn(trainer: train_steps.Trainer, spec: datasets.DatasetSpec, batch: int
                 ) -> Callable:
  """``evaluate(state, images, labels) -> metrics``: every example once, in batches of
  ``batch`` (the last padded and masked), summed as ``train_steps.eval_step`` sums."""
  @jax.jit
  def evaluate(state, images, labels):
    n = images.shape[0]
    steps = math.ceil(n / batch)
    pad = steps * batch - n
    mask = jnp.concatenate([jnp.ones(n), jnp.zeros(pad)]).reshape(steps, batch)
    images = jnp.pad(images, ((0, pad), (0, 0), (0, 0), (0, 0))).reshape(steps, batch,
                                                                         *images.shape[1:])
    labels = jnp.pad(labels, (0, pad)).reshape(steps, batch)

    def body(sums, xs):
      image, label, m = xs
      out = train_steps.eval_step(state, jax.lax.with_sharding_constraint(
          {"image": normalize(image, spec), "label": label, "mask": m}, trainer.data_sharding))
      return jax.tree.map(jnp.add, sums, out), None
    zeros = {k: jnp.zeros(()) for k in ("loss", "top1", "top5", "count")}
    return jax.lax.scan(body, zeros, (images, labels, mask))[0]
  return evaluate


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  """The per-epoch lines of ``workdir``'s ``metrics.jsonl`` (empty if there is none)."""
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def write_events(workdir: str, rows: list[dict[str, Any]]) -> None:
  """TensorBoard events of ``rows`` (metrics.jsonl lines) with clu's writer, at their step."""
  from clu import metric_writers

  writer = metric_writers.create_default_writer(workdir)
  for row in rows:
    writer.write_scalars(row["step"], {k: v for k, v in row.items()
                                       if k not in ("step", "epoch")})
  writer.flush()


def _event_writer(workdir: str) -> Callable[[list[dict[str, Any]]], None] | None:
  try:
    import clu.metric_writers  # noqa: F401  (needs TensorFlow)
  except ImportError:
    return None
  return functools.partial(write_events, workdir)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       arrays: dict[str, tuple[np.ndarray, np.ndarray]],
                       deadline_s: float | None = None, devices: list | None = None,
                       eval_batch: int = 1000, steps_per_call: int | None = None
                       ) -> train_steps.TrainState:
  """Trains ``config`` on ``arrays`` (see :func:`load_arrays`) in ``workdir``, resuming from
  its newest checkpoint. Returns the final state.

  ``steps_per_call``: train steps per jitted call (a ``lax.scan`` when more than one); None:
  1 on CPUs, a whole epoch on accelerators (see :func:`make_steps_fn`)."""
  start_time, run_started = time.perf_counter(), time.time()
  spec = datasets.get_spec(config.dataset)
  trainer = train_steps.Trainer(devices)
  trainer.check_batch_size(config.batch_size)
  if eval_batch % len(trainer.devices):
    raise ValueError(f"eval_batch={eval_batch} must be a multiple of the device count "
                     f"({len(trainer.devices)})")
  train_images, train_labels = arrays["train"]
  steps_per_epoch = len(train_labels) // config.batch_size
  if steps_per_epoch == 0:
    raise ValueError(f"batch_size={config.batch_size} exceeds the {len(train_labels)} "
                     f"training examples")
  num_steps = (config.num_train_steps if config.num_train_steps > 0
               else math.ceil(config.num_epochs * steps_per_epoch))
  num_epochs = math.ceil(num_steps / steps_per_epoch)

  model = train_steps.build_model(config, spec.num_classes)
  schedule = train_steps.learning_rate_schedule(config, steps_per_epoch, num_steps)
  state = train_steps.create_train_state(
      model, train_steps.create_optimizer(config, schedule), config.seed, spec.image_size)
  checkpoint.check_workdir(workdir, sum(x.nbytes for x in jax.tree.leaves(state)),
                           config.keep_checkpoints)
  ckpt = checkpoint.Checkpointer(workdir, config.keep_checkpoints)
  state = trainer.replicate(ckpt.restore_latest(state, trainer.replicated) or state)
  checkpoint.write_config(workdir, config)
  if int(state.step) % steps_per_epoch and int(state.step) < num_steps:
    raise ValueError(f"the checkpoint at step {int(state.step)} in {workdir} is not at an epoch "
                     f"boundary ({steps_per_epoch} steps): it was not written by this path")
  rows = [r for r in read_metrics(workdir) if r["step"] <= int(state.step)]
  events = _event_writer(workdir)

  step_fn = functools.partial(train_steps.train_step, label_smoothing=config.label_smoothing,
                              schedule=schedule)
  if steps_per_call is None:
    steps_per_call = 1 if trainer.devices[0].platform == "cpu" else steps_per_epoch
  run = make_steps_fn(trainer, spec, step_fn, scan=steps_per_call > 1)
  eval_fn = make_eval_fn(trainer, spec, eval_batch)
  images, labels = trainer.replicate((train_images, train_labels))
  test = trainer.replicate(arrays["test"])
  precise = config.eval_precise_bn_batches
  if precise < 0:
    raise ValueError(f"eval_precise_bn_batches must be >= 0 (0: off), got {precise!r}")
  recompute = train_steps.precise_bn(trainer, model) if precise > 0 else None
  first_batches = functools.partial(precise_bn_batches, spec, images, config.seed,
                                    steps_per_epoch, config.batch_size, precise)

  def evaluate(state: train_steps.TrainState) -> dict[str, float]:
    result = train_steps.eval_summary(jax.device_get(eval_fn(state, *test)))
    if recompute is not None:  # the same weights, BN statistics recomputed
      stats = recompute({"params": state.params, "batch_stats": state.batch_stats},
                        first_batches(), precise)
      again = jax.device_get(eval_fn(state.replace(batch_stats=stats), *test))
      result |= {"precise_bn_" + k: v for k, v in train_steps.eval_summary(again).items()}
    return result

  epoch_seconds = None
  for epoch in range(int(state.step) // steps_per_epoch, num_epochs):
    elapsed = time.perf_counter() - start_time
    if deadline_s is not None and epoch_seconds is not None and \
        elapsed + 1.2 * epoch_seconds > deadline_s:
      print(f"deadline: stopping before epoch {epoch + 1}/{num_epochs}; rerun to resume",
            flush=True)
      break
    steps = min(steps_per_epoch, num_steps - epoch * steps_per_epoch)
    order, keys = epoch_order(config.seed, epoch, len(train_labels), steps_per_epoch,
                              config.batch_size)
    timer = time.perf_counter()
    state, metrics = run_epoch(run, state, images, labels, order[:steps], keys[:steps],
                               steps_per_call)
    train_seconds = time.perf_counter() - timer
    loss = float(np.mean(metrics["train_loss"]))
    if not (np.isfinite(loss) and all(np.isfinite(x).all() for x in
                                      jax.tree.leaves(jax.device_get(state.params)))):
      raise FloatingPointError(f"non-finite training loss or parameters in epoch {epoch + 1}; "
                               f"the last good "
                               f"checkpoint in {workdir} is kept (lower the learning rate?)")
    row = {"epoch": epoch + 1, "step": int(state.step), "train_loss": loss,
           "train_accuracy": float(np.mean(metrics["train_accuracy"])),
           "learning_rate": float(metrics["learning_rate"][-1]),
           **evaluate(state),
           "train_images_per_sec": steps * config.batch_size / train_seconds,
           "epoch_seconds": time.perf_counter() - timer,
           "wall_seconds": time.perf_counter() - start_time, "run_started": run_started}
    epoch_seconds = row["epoch_seconds"] if epoch_seconds is None else min(
        epoch_seconds, row["epoch_seconds"])  # the first epoch includes compilation
    ckpt.save(row["step"], state)
    rows.append(row)
    with open(os.path.join(workdir, METRICS_FILE), "w") as f:
      f.writelines(json.dumps(r) + "\n" for r in rows)
    if events is not None:
      events([row])
    print(json.dumps(row), flush=True)
  ckpt.wait()
  return state


def main(argv: list[str] | None = None) -> None:
  import sys

  from absl import flags
  from ml_collections import config_flags

  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "Training configuration file.",
                                  flag_values=flag_values, lock_config=True)
  flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics.",
                      flag_values=flag_values)
  flags.DEFINE_string("npz_dir", None, "Folder of the offline copies (train-jpeg.npz, "
                      "test-jpeg.npz); default: read through tfds.", flag_values=flag_values)
  flags.DEFINE_float("deadline_s", None, "Start no epoch expected to end after this many "
                     "seconds of the run.", flag_values=flag_values)
  flags.DEFINE_integer("steps_per_call", None, "Train steps per jitted call (default: 1 on "
                       "CPUs, an epoch on accelerators).", flag_values=flag_values)
  flags.DEFINE_bool("events_only", False, "Only write TensorBoard events from the workdir's "
                    "metrics.jsonl.", flag_values=flag_values)
  flag_values(sys.argv if argv is None else argv)
  workdir = flag_values.workdir
  if workdir is None:
    sys.exit("error: --workdir is required")
  try:
    if flag_values.events_only:
      write_events(workdir, read_metrics(workdir))
      return
    config = flag_values.config
    if config is None:
      raise ValueError("--config is required (e.g. --config=configs/cifar.py:resnet20)")
    arrays = load_arrays(config.dataset, flag_values.npz_dir, config.data_dir)
    train_and_evaluate(config, workdir, arrays, flag_values.deadline_s,
                       steps_per_call=flag_values.steps_per_call)
  except (ValueError, FileNotFoundError, FloatingPointError, OSError,
          checkpoint.CorruptCheckpointError) as e:
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  main()
