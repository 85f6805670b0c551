"""Trained weights in one file: a workdir's checkpoint exported, and a model loaded from such a
file or from a workdir.

    python -m regnet_jax.export --workdir=W [--step=N] [--precise_bn=N] --out=FILE

    model, variables, info = load_pretrained(FILE)              # or a workdir (``step=N``)
    logits = model.apply(variables, info.normalize(images), train=False)   # [B, classes]

The file is a safetensors file: a JSON header, then the arrays, flat. Loading one runs no code
(unlike a pickle), any framework reads it (numpy, PyTorch, JAX, ...) and it is how model hubs
share weights. Its arrays are the model's variables, named by their path in them:
``params/stage1/cell/...`` and ``batch_stats/...``, float32. Its header's metadata (strings)
holds ``format`` (:data:`FORMAT`), ``version`` (:data:`VERSION`) and, each as JSON, the fields
of :class:`WeightsInfo`: the model's name and constructor arguments, the class names where
known, the input normalisation, where the weights come from, and the run's config.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from flax import traverse_util

from regnet_jax import data, models
from regnet_jax.train import checkpoint, evaluate, factory
from regnet_jax.train.mesh import DataParallel

FORMAT = "regnet_jax.weights"  # the header's "format"
VERSION = 1  # the header's "version": what this code writes, and the newest it reads
EXPORT_COMMAND = "python -m regnet_jax.export --workdir=W --out=FILE"

Variables = dict[str, Any]  # {'params': ..., 'batch_stats': ...}


@dataclasses.dataclass(frozen=True)
class WeightsInfo:
  """What trained weights need beside the arrays: how to build the model, what its outputs
  mean, how to prepare its input, and where the weights come from."""

  model: str  # a name of :func:`regnet_jax.models.list_models`
  model_args: dict[str, Any]  # the model's constructor arguments besides num_classes
  num_classes: int
  half_precision: bool | None  # the run's compute dtype (configs/default.py)
  class_names: tuple[str, ...]  # label i's name; () where unknown
  dataset: str  # the dataset the weights were trained on (config.dataset)
  image_size: int  # the input side the model was trained at, in pixels
  mean: tuple[float, ...]  # input normalisation per channel (R, G, B), on the 0-255 scale
  std: tuple[float, ...]
  # The workdir (absolute path), checkpoint step, code version of the run's last start, and
  # the training batches BatchNorm statistics were recomputed over (0: the running averages).
  source: dict[str, Any]
  config: ml_collections.ConfigDict  # the training run's config

  def normalize(self, images: Any) -> jax.Array:
    """Pixels on the 0-255 scale (uint8 or float, ``[..., 3]`` RGB) -> the model's input:
    float32 ``(x - mean) / std`` per channel (as :func:`regnet_jax.data.normalize` for the
    training dataset)."""
    return (jnp.asarray(images, jnp.float32) - jnp.asarray(self.mean)) / jnp.asarray(self.std)

  def build_model(self) -> models.Network:
    """The model, in the run's compute dtype, with this backend's implementation
    (:func:`regnet_jax.train.factory.build_model`)."""
    config = ml_collections.ConfigDict({"model": self.model, "model_args": self.model_args,
                                        "half_precision": self.half_precision})
    return factory.build_model(config, self.num_classes)

  def metadata(self) -> dict[str, str]:
    """The file header's metadata."""
    fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
    fields["config"] = json.loads(self.config.to_json())
    return {"format": FORMAT, "version": str(VERSION),
            **{name: json.dumps(value) for name, value in fields.items()}}

  @classmethod
  def from_metadata(cls, metadata: dict[str, str] | None, path: str) -> WeightsInfo:
    """Reads :meth:`metadata` back.

    Raises:
      ValueError: ``path``'s header is not an export's, or of a newer version.
    """
    metadata = metadata or {}
    if metadata.get("format") != FORMAT:
      raise ValueError(f"{path} is a safetensors file but not a regnet-jax weights file (its "
                       f"header has no format {FORMAT!r}); export one with {EXPORT_COMMAND}")
    if int(metadata.get("version", 0)) > VERSION:
      raise ValueError(f"{path} is a weights file of version {metadata['version']}, newer than "
                       f"this regnet-jax reads ({VERSION}); upgrade regnet-jax")
    names = [f.name for f in dataclasses.fields(cls)]
    missing = [name for name in names if name not in metadata]
    if missing:
      raise ValueError(f"{path} is an incomplete weights file: its header has no "
                       f"{', '.join(missing)}; export it again with {EXPORT_COMMAND}")
    fields = {name: json.loads(metadata[name]) for name in names}
    config = ml_collections.ConfigDict(fields["config"])
    args = factory.model_args(ml_collections.ConfigDict({"model_args": fields["model_args"]}))
    return cls(**{**fields, "model_args": args,
                  "class_names": tuple(fields["class_names"]), "mean": tuple(fields["mean"]),
                  "std": tuple(fields["std"]), "config": config})


def class_names(config: ml_collections.ConfigDict, spec: data.DatasetSpec) -> tuple[str, ...]:
  """Label i's name for the run's dataset: a folder's class folders, else tfds's metadata
  (tfds ships it for its datasets, prepared or not); () with a warning where there is none."""
  if spec.class_names:
    return tuple(spec.class_names)
  from regnet_jax import console

  try:
    console.import_tensorflow()  # (tfds's import of it, without its routine start-up lines)
    import tensorflow_datasets as tfds

    builder = tfds.builder(spec.tfds_name, data_dir=config.get("data_dir"))
    return tuple(builder.info.features["label"].names)
  except Exception as e:  # (the names are optional: whatever fails, none)
    logging.warning("No class names for %s (%s: %s)", config.dataset, type(e).__name__, e)
    return ()


def load_workdir(workdir: str, step: int | None = None, precise_bn_batches: int = 0,
                 dp: DataParallel | None = None
                 ) -> tuple[models.Network, Variables, WeightsInfo]:
  """The model, variables and :class:`WeightsInfo` of checkpoint ``step`` (None: the newest)
  of ``workdir``, on ``dp``'s devices (default: one), with BatchNorm statistics recomputed
  over ``precise_bn_batches`` training batches where > 0.

  Raises:
    FileNotFoundError: not a workdir, no checkpoint, or no checkpoint ``step``.
  """
  run = evaluate.restore_for_inference(workdir, step, precise_bn_batches, dp)
  config = run.config
  spec = data.get_spec(config)  # with the run's overrides (size, statistics)
  runs = checkpoint.read_runs(workdir)
  info = WeightsInfo(
      model=config.model, model_args=factory.model_args(config),
      num_classes=run.model.num_classes, half_precision=config.get("half_precision"),
      class_names=class_names(config, spec), dataset=config.dataset, image_size=spec.image_size,
      mean=spec.mean, std=spec.std,
      source={"workdir": os.path.abspath(workdir), "step": run.step,
              "code": runs[-1].get("code") if runs else None,
              "precise_bn_batches": precise_bn_batches},
      config=config)
  return run.model, run.variables, info


def read(path: str) -> tuple[Variables, WeightsInfo]:
  """The variables (numpy) and :class:`WeightsInfo` of weights file ``path``.

  Raises:
    FileNotFoundError: no such file.
    ValueError: not a weights file (unreadable as safetensors, or not an export).
  """
  import safetensors

  if not os.path.isfile(path):
    raise FileNotFoundError(f"no weights file {path}; export one with {EXPORT_COMMAND}")
  try:
    with safetensors.safe_open(path, framework="numpy") as f:
      metadata = f.metadata()
      arrays = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 (not a dict)
  except Exception as e:  # (safetensors' errors: not a safetensors file)
    reason = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise ValueError(f"{path} is not a weights file: it cannot be read as safetensors "
                     f"({reason}); export one with {EXPORT_COMMAND}") from None
  info = WeightsInfo.from_metadata(metadata, path)
  return traverse_util.unflatten_dict(arrays, sep="/"), info


def write(path: str, variables: Variables, info: WeightsInfo) -> None:
  """Writes ``variables`` and ``info`` to weights file ``path`` (its folder made if needed):
  to a temporary name first, renamed once complete, so ``path`` is never half-written.

  Raises:
    OSError: ``path`` cannot be written, in one line.
  """
  import safetensors.numpy

  arrays = {name: np.ascontiguousarray(jax.device_get(value)) for name, value
            in traverse_util.flatten_dict(variables, sep="/").items()}
  folder, name = os.path.split(os.path.abspath(path))
  temporary = os.path.join(folder, f".{name}.{os.getpid()}.tmp")
  try:
    os.makedirs(folder, exist_ok=True)
    safetensors.numpy.save_file(arrays, temporary, metadata=info.metadata())
    os.replace(temporary, path)
  except OSError as e:
    raise OSError(f"cannot write {path}: {e.strerror or e}") from None
  finally:
    if os.path.exists(temporary):
      os.remove(temporary)


def load_pretrained(path: str, step: int | None = None
                    ) -> tuple[models.Network, Variables, WeightsInfo]:
  """A trained model, ready for ``model.apply(variables, info.normalize(images),
  train=False)`` (``images [B, H, W, 3]`` pixels -> logits ``[B, num_classes]``).

  Args:
    path: a weights file of ``python -m regnet_jax.export``, or a training workdir.
    step: a workdir's checkpoint (default: the newest); a file holds one.
  Returns:
    The model (:meth:`WeightsInfo.build_model`), its variables (``params`` and
    ``batch_stats``, on the default device) and the :class:`WeightsInfo`.
  Raises:
    FileNotFoundError: no such file or workdir, or a workdir without the checkpoint.
    ValueError: a file that is not a weights file, or whose arrays do not fit its model.
  """
  if os.path.isdir(path):
    return load_workdir(path, step)
  if not os.path.exists(path):
    raise FileNotFoundError(f"no weights file or workdir {path}; give a file of "
                            f"{EXPORT_COMMAND} or a training workdir")
  if step is not None:
    raise ValueError(f"step={step} is for workdirs; the weights file {path} holds one step "
                     "(python -m regnet_jax.export --step=N exports another)")
  variables, info = read(path)
  model = info.build_model()
  shapes = jax.eval_shape(lambda: model.init(
      jax.random.PRNGKey(0), jnp.zeros((1, info.image_size, info.image_size, 3)), train=False))
  difference = checkpoint.first_difference(variables, shapes, "the file", f"its {info.model}")
  if difference is not None:
    raise ValueError(f"{path} does not fit its own model: {difference}; export it again with "
                     f"{EXPORT_COMMAND}")
  return model, jax.device_put(variables), info


def export(workdir: str, out: str, step: int | None = None, precise_bn_batches: int = 0
           ) -> WeightsInfo:
  """Writes checkpoint ``step`` (None: the newest) of ``workdir`` to the weights file ``out``,
  with BatchNorm statistics recomputed over ``precise_bn_batches`` training batches where
  > 0 (this reads the dataset); returns what the file's header holds."""
  _, variables, info = load_workdir(workdir, step, precise_bn_batches)
  write(out, variables, info)
  return info


def main(argv: list[str] | None = None) -> None:
  from regnet_jax import console
  from regnet_jax.data import pipeline

  console.quiet()
  parser = argparse.ArgumentParser(
      prog="python -m regnet_jax.export",
      description="Writes a workdir's checkpoint to one weights file (safetensors): parameters, "
                  "BatchNorm statistics, the model's name and arguments, the class names and "
                  "the input normalisation.")
  parser.add_argument("--workdir", required=True, help="the training workdir")
  parser.add_argument("--step", type=int, default=None, help="default: the newest checkpoint")
  parser.add_argument("--precise_bn", type=int, default=0, help="first recompute BatchNorm "
                      "statistics over this many training batches (0: the running averages)")
  parser.add_argument("--out", required=True, help="the file to write, e.g. model.safetensors")
  args = parser.parse_args(argv)
  try:
    info = export(args.workdir, args.out, args.step, args.precise_bn)
  except (FileNotFoundError, ValueError, OSError, checkpoint.CorruptCheckpointError,
          pipeline.DatasetNotFoundError) as e:
    parser.exit(1, f"error: {e}\n")
  bn = (f"BatchNorm statistics over {args.precise_bn} training batches" if args.precise_bn
        else "running BatchNorm averages")
  print(f"Exported step {info.source['step']} of {args.workdir} ({info.model}, "
        f"{info.num_classes} classes, {bn}) to {args.out} "
        f"({os.path.getsize(args.out) / 2**20:.1f} MiB)")
