"""Orbax checkpoints of the train state, and the run's config and provenance beside them.

Layout of a workdir: ``config.json`` (the run's config), ``runs.jsonl`` (one line per start of
the training process: when, the command, the code's commit, the machine, and what reports need:
steps per epoch, train steps, parameters, MACs), ``checkpoints/<step>/``
(orbax), and TensorBoard event files. Checkpoints hold arrays only (no pickled objects).
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from flax import serialization

if TYPE_CHECKING:  # annotations only: checkpoints also work where ml_collections is missing
  import ml_collections


def write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Writes ``config.json`` (process 0 only)."""
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json(indent=2))


RUNS_FILE = "runs.jsonl"


def _code_version() -> str:
  """The git commit of the checkout this package runs from (``+dirty`` when tracked files
  differ from it), or the installed package's version outside a git checkout."""
  here = os.path.dirname(os.path.abspath(__file__))

  def git(*args: str) -> str:
    return subprocess.run(["git", "-C", here, *args], capture_output=True, text=True,
                          timeout=10, check=True).stdout.strip()

  try:
    commit = git("rev-parse", "--short=10", "HEAD")
    return commit + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
  except (OSError, subprocess.SubprocessError):
    from importlib import metadata
    try:
      return "regnet-jax " + metadata.version("regnet-jax")
    except metadata.PackageNotFoundError:
      return "unknown"


def _cpu_name(cpuinfo: str = "/proc/cpuinfo") -> str:
  """The CPU's model name, marked "(AVX-512)" where it has AVX-512: virtual machines often
  show one generic name for CPUs whose speeds differ by that."""
  try:
    with open(cpuinfo) as f:
      info = f.read()
  except OSError:
    return platform.processor() or platform.machine()
  name = re.search(r"^model name\s*:\s*(.*)$", info, re.M)
  flags = re.search(r"^flags\s*:(.*)$", info, re.M)
  avx512 = flags is not None and " avx512f" in flags.group(1)
  return ((name.group(1).strip() if name else platform.machine())
          + (" (AVX-512)" if avx512 else ""))


def record_start(workdir: str, devices: list, **facts: Any) -> dict[str, Any]:
  """Appends this start of training to ``runs.jsonl`` (process 0 only) and returns it: UTC
  time, command line, code version, CPU, devices, process count and jax version, then
  ``facts``: what the run's reports need to know without the dataset or the model (training
  records its steps per epoch and train steps, the model's parameters and MACs, and
  ``config_changes``, the recipe changes a resume was allowed)."""
  kinds: dict[str, int] = {}
  for d in devices:
    kinds[d.device_kind] = kinds.get(d.device_kind, 0) + 1
  run = {
      "started": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
      "command": " ".join([os.path.basename(sys.argv[0]), *sys.argv[1:]]),
      "code": _code_version(),
      "cpu": f"{_cpu_name()}, {os.cpu_count()} cores",
      "devices": ", ".join(f"{n} x {kind}" for kind, n in kinds.items()),
      "processes": jax.process_count(),
      "jax": jax.__version__,
      **facts,
  }
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, RUNS_FILE), "a") as f:
      f.write(json.dumps(run) + "\n")
  return run


def read_runs(workdir: str) -> list[dict[str, Any]]:
  """The starts recorded in ``runs.jsonl``, oldest first ([] for workdirs without one)."""
  path = os.path.join(workdir, RUNS_FILE)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def check_workdir(workdir: str, checkpoint_bytes: int, keep: int) -> None:
  """Fails early, in one line, if ``workdir`` cannot be written or its disk cannot hold the
  ``keep`` checkpoints of ``checkpoint_bytes`` each (plus one being written).

  Raises:
    OSError: naming the workdir and the problem; a workdir this call created is removed.
  """
  if jax.process_index() != 0:
    return
  existed = os.path.isdir(workdir)
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, f".write_test.{os.getpid()}")
    with open(probe, "wb") as f:
      f.write(b"ok")
    os.remove(probe)
  except OSError as e:
    raise OSError(f"cannot write to the workdir {workdir}: {e.strerror or e}") from None
  needed = (keep + 1) * checkpoint_bytes
  free = shutil.disk_usage(workdir).free
  if free < needed:
    if not existed:
      os.rmdir(workdir)
    raise OSError(f"the disk of {workdir} has {free / 2**20:.0f} MiB free; this run's "
                  f"{keep} kept checkpoints need about {needed / 2**20:.0f} MiB "
                  "(free space, another --workdir, or a lower keep_checkpoints)")


def has_checkpoints(workdir: str) -> bool:
  """Whether ``workdir`` holds a checkpoint folder (a run to resume); reads, never writes."""
  directory = os.path.join(workdir, "checkpoints")
  return os.path.isdir(directory) and any(name.isdigit() for name in os.listdir(directory))


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The run's config from ``config.json``, in today's layout (:func:`upgrade_config`)."""
  import ml_collections

  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{workdir} has no config.json: not a training workdir")
  with open(path) as f:
    return ml_collections.ConfigDict(upgrade_config(json.load(f)))


def upgrade_config(config: dict[str, Any]) -> dict[str, Any]:
  """A config written by an older version in today's layout: the implementation choices
  (``cell_impl``, ``conv_grad``), once in ``model_args``, are in ``implementation``."""
  model_args = dict(config.get("model_args", {}))
  moved = {k: model_args.pop(k) for k in ("cell_impl", "conv_grad") if k in model_args}
  if not moved:
    return config
  return {**config, "model_args": model_args,
          "implementation": {**moved, **config.get("implementation", {})}}


class CheckpointMismatchError(ValueError):
  """A checkpoint's parameters do not fit the model being restored."""


class CorruptCheckpointError(RuntimeError):
  """A checkpoint's files cannot be read (truncated, overwritten, half-deleted)."""


class CheckpointNotSavedError(OSError):
  """A requested save did not produce its checkpoint folder."""


def _leaf_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  """``{'.params.stage1...': shape}`` of a tree's leaves (arrays, scalars, metadata)."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    name = "".join(f".{getattr(k, 'key', getattr(k, 'idx', k))}" for k in path)
    out[name] = tuple(getattr(leaf, "shape", ()) or ())
  return out


def first_difference(saved: Any, expected: Any, saved_name: str = "the checkpoint",
                     expected_name: str = "the model") -> str | None:
  """The first leaf (model parameters first) whose presence or shape differs, or None; the
  two trees are called ``saved_name`` and ``expected_name``."""
  a, b = _leaf_shapes(saved), _leaf_shapes(expected)
  names = sorted(set(a) | set(b), key=lambda n: (not n.startswith(".params"), n))
  for name in names:
    if a.get(name) != b.get(name):
      where = name.lstrip(".")
      if name not in a:
        return f"{where} is missing from {saved_name}"
      if name not in b:
        return f"{where} is in {saved_name} but not in {expected_name}"
      return f"{where} has shape {a[name]} in {saved_name}, {b[name]} in {expected_name}"
  return None


class Checkpointer:
  """Saves and restores a train state with an orbax ``CheckpointManager``."""

  def __init__(self, workdir: str, max_to_keep: int = 3, create: bool = True):
    """``create=False`` (evaluation) never writes to the workdir, and restores any part of a
    checkpoint (e.g. the parameters without the optimizer state)."""
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    self.partial = not create
    # Reading: no deletions and no saves (orbax's read_only=True would say so in a warning).
    options = (ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True) if create else
               ocp.CheckpointManagerOptions(max_to_keep=None, save_interval_steps=0,
                                            create=False))
    handler = ocp.PyTreeCheckpointHandler() if self.partial else ocp.StandardCheckpointHandler()
    self.manager = ocp.CheckpointManager(self.directory, options=options, item_handlers=handler)
    self._requested: int | None = None  # the newest step passed to save()

  def save(self, step: int, state: Any) -> None:
    """Saves asynchronously; the step's folder appears only once it is complete
    (:meth:`wait` checks that it did).

    Raises:
      CheckpointNotSavedError: orbax declined to save this step.
    """
    if not self.manager.save(step, args=ocp.args.StandardSave(serialization.to_state_dict(state))):
      raise CheckpointNotSavedError(f"orbax declined to save step {step} in {self.directory}")
    self._requested = step

  def wait(self) -> None:
    """Waits for in-flight saves, then checks that the newest saved step is on disk.

    Raises:
      CheckpointNotSavedError: its folder is missing (the save was lost), naming the step.
    """
    self.manager.wait_until_finished()
    step = self._requested
    if (step is not None and jax.process_index() == 0
        and not os.path.isdir(os.path.join(self.directory, str(step)))):
      self.manager.reload()
      raise CheckpointNotSavedError(
          f"the checkpoint of step {step} did not appear in {self.directory} after its save "
          f"finished; the newest checkpoint there is {self.manager.latest_step()}")

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def saved_step(self, step: int | None = None) -> int:
    """``step`` (None: the newest), checked to be saved here.

    Raises:
      FileNotFoundError: there is no checkpoint, or none of ``step`` (listing those there are).
    """
    saved = sorted(self.manager.all_steps())
    workdir = os.path.dirname(self.directory)
    if not saved:
      raise FileNotFoundError(f"no checkpoint in {self.directory}: train first "
                              f"(python main.py --config=... --workdir={workdir})")
    if step is not None and step not in saved:
      raise FileNotFoundError(f"no checkpoint {step} in {self.directory}; it has steps "
                              f"{', '.join(map(str, saved))}")
    return saved[-1] if step is None else step

  def restore(self, step: int, target: Any, sharding: Any) -> Any:
    """Restores checkpoint ``step`` into the structure of ``target``, placed with ``sharding``
    (with ``create=False``: only the parts of the checkpoint that ``target`` has).

    Raises:
      CheckpointMismatchError: the checkpoint's tree or shapes differ from ``target``'s
        (read from its metadata, before any array).
      CorruptCheckpointError: its metadata or arrays cannot be read.
    """
    template = serialization.to_state_dict(target)
    try:
      saved = self.manager.item_metadata(step)
      saved = getattr(saved, "tree", saved)  # the PyTree handler wraps the tree
      if saved is None or not jax.tree.leaves(saved):
        raise ValueError("its metadata lists no arrays")
    except Exception as e:  # any failure to read it: damaged
      raise self._unreadable(step, e) from None
    if self.partial:
      saved = {k: v for k, v in saved.items() if k in template}
    difference = first_difference(saved, template)
    if difference is not None:
      raise CheckpointMismatchError(
          f"checkpoint {step} in {self.directory} does not match this config's model "
          f"({difference}); use another --workdir or the config it was trained with")
    abstract = jax.tree.map(  # (template leaves: arrays, ShapeDtypeStructs or Python scalars)
        lambda x: jax.ShapeDtypeStruct(getattr(x, "shape", ()),
                                       getattr(x, "dtype", None) or jnp.result_type(x),
                                       sharding=sharding), template)
    args = (ocp.args.PyTreeRestore(abstract, partial_restore=True,
                                   restore_args=ocp.checkpoint_utils.construct_restore_args(
                                       abstract))
            if self.partial else ocp.args.StandardRestore(abstract))
    try:
      restored = self.manager.restore(step, args=args)
    except Exception as e:  # tensorstore raises bare Exceptions
      raise self._unreadable(step, e) from None
    return serialization.from_state_dict(target, restored)

  def _unreadable(self, step: int, error: Exception) -> CorruptCheckpointError:
    return CorruptCheckpointError(f"checkpoint {step} in {self.directory} is unreadable "
                                  f"({type(error).__name__}: {str(error)[:200]})")

  def restore_latest(self, target: Any, sharding: Any) -> Any | None:
    """The newest readable checkpoint restored like :meth:`restore`, or None if there is none.

    A damaged checkpoint is moved to ``<workdir>/corrupt_checkpoints/<step>`` (kept for
    inspection, out of orbax's way) with a warning, and the next older one is tried.
    """
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        return self.restore(step, target, sharding)
      except CorruptCheckpointError as e:
        logging.warning("%s; falling back to the previous checkpoint.", e)
        self._quarantine(step)
    return None

  def _quarantine(self, step: int) -> None:
    if jax.process_index() == 0:
      aside = os.path.join(os.path.dirname(self.directory), "corrupt_checkpoints")
      os.makedirs(aside, exist_ok=True)
      os.replace(os.path.join(self.directory, str(step)),
                 os.path.join(aside, f"{step}-{int(time.time())}"))
    self.manager.reload()
