"""Sweep files: which runs a sweep has, each with the exact ``main.py`` command line it trains
with, checked before anything starts.

A sweep file is Python, like the configs: ``get_sweep(arg)`` returns an ml_collections
ConfigDict with

- ``config``: a main.py config, ``PATH[:ARG]``; ``{model}`` in ARG is replaced by each run's
  model (``configs/cifar.py:{model},cifar100``), else the model is set with
  ``--config.model``. A relative PATH is looked up in the current folder, then in the folders
  above the sweep file (a sweep file in ``configs/`` names ``configs/cifar.py``).
- ``models``: the runs' model entries: a model name (``regnet20_gru``), or a model name and a
  variant, ``MODEL-VARIANT`` (``regnet20_gru-dense3x3``), for rows that differ in other fields.
- ``variants`` (optional): each variant's fields, ``{VARIANT: {FIELD: VALUE, ...}}``, nested
  like the config (``{"dense3x3": {"model_args": {"cell_conv": "dense3x3"}}}``).
- ``seeds``: the seeds every entry is trained with.
- ``overrides``: fields set for every run, nested like the config
  (``{"num_train_steps": 100, "model_args": {"pairing": "concat"}}``).

Each run lives in ``ROOT/<entry>_seed<seed>`` (``regnet20_gru-dense3x3_seed0``) and trains with
``main.py --config=PATH:ARG --config.FIELD=VALUE ... --config.seed=SEED``: the sweep's
overrides, then the variant's, then ``--set.FIELD=VALUE`` from the command line (later ones
win). A workdir started by hand with the same command is the same run.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import sys
from typing import TYPE_CHECKING, Any

from regnet_jax import main as main_cli

if TYPE_CHECKING:
  import ml_collections

VARIANT = re.compile(r"[A-Za-z0-9.]+")  # a variant's name (the workdir name keeps it)
SWEEP_FIELDS = ("config", "models", "seeds", "overrides", "variants")
PER_RUN = ("model", "seed")  # fields the sweep sets itself, run by run


@dataclasses.dataclass(frozen=True)
class Run:
  """One run of a sweep: a model entry trained with one seed."""

  name: str  # the workdir's name under the root: '<entry>_seed<seed>'
  entry: str  # 'regnet20_gru' or 'regnet20_gru-dense3x3'
  seed: int
  args: tuple[str, ...]  # main.py's config flags for it: --config=..., --config.FIELD=VALUE
  config: ml_collections.ConfigDict  # the config main.py builds from ``args``


@dataclasses.dataclass(frozen=True)
class Sweep:
  """A sweep file's runs, in order (seed by seed, each seed every entry)."""

  label: str  # FILE[:ARG] as given
  name: str  # a file-name-safe form of ARG (or of FILE's name): the report's name
  runs: tuple[Run, ...]
  import_path: str  # the folder main.py needs on its path to import the config's modules

  def shard(self, index: int, count: int) -> tuple[Run, ...]:
    """Shard ``index`` of ``count``: every ``count``-th run from the ``index``-th, so that the
    shards partition the runs and each gets models and seeds alike."""
    return self.runs[index::count]


def parse_shard(text: str) -> tuple[int, int]:
  """``"I/N"`` -> ``(I, N)``; a ValueError saying what a shard is otherwise."""
  match = re.fullmatch(r"(\d+)/(\d+)", text.strip())
  if not match or not int(match.group(1)) < int(match.group(2)):
    raise ValueError(f"--shard={text}: give I/N, shard I of N counting from 0 "
                     f"(0 <= I < N, e.g. --shard=0/4)")
  return int(match.group(1)), int(match.group(2))


def slurm_shard(env: dict[str, str]) -> tuple[int, int] | None:
  """The shard of a SLURM array task: its index among the array's tasks and their count (from
  ``SLURM_ARRAY_TASK_ID``, ``_MIN``, ``_STEP`` and ``_COUNT``); None outside an array."""
  if "SLURM_ARRAY_TASK_ID" not in env or "SLURM_ARRAY_TASK_COUNT" not in env:
    return None
  step = int(env.get("SLURM_ARRAY_TASK_STEP", "1") or 1)
  index = (int(env["SLURM_ARRAY_TASK_ID"]) - int(env.get("SLURM_ARRAY_TASK_MIN", "0"))) // step
  return parse_shard(f"{index}/{env['SLURM_ARRAY_TASK_COUNT']}")


def _load_module(path: str) -> Any:
  """Executes the Python file ``path`` as a module."""
  spec = importlib.util.spec_from_file_location(
      "_sweep_" + re.sub(r"\W", "_", os.path.abspath(path)), path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _resolve(path: str, sweep_file: str) -> tuple[str, str]:
  """A config path named in ``sweep_file`` -> (the path to give main.py, the folder to import
  the config's modules from): relative to the current folder where it exists there (kept
  relative, as a user types it), else to the nearest folder above the sweep file."""
  if os.path.isabs(path):
    return path, os.path.dirname(os.path.dirname(path))
  if os.path.isfile(path):
    return path, os.getcwd()
  folder = os.path.dirname(os.path.abspath(sweep_file))
  while True:
    if os.path.isfile(os.path.join(folder, path)):
      return os.path.join(folder, path), folder
    if os.path.dirname(folder) == folder:
      raise ValueError(f"{sweep_file} names the config {path}, which is neither in the current "
                       "folder nor in a folder above the sweep file")
    folder = os.path.dirname(folder)


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  """``{"model_args": {"pairing": "concat"}}`` -> ``{"model_args.pairing": "concat"}``."""
  out = {}
  for key, value in (tree.items() if tree is not None else ()):
    if hasattr(value, "items"):
      out.update(flatten(value, f"{prefix}{key}."))
    else:
      out[prefix + key] = value
  return out


def command_value(value: Any) -> str:
  """A Python value as typed after ``--config.FIELD=`` for main.py's parser to read it back."""
  if value is None:
    raise ValueError("None cannot be given on main.py's command line")
  if isinstance(value, list | tuple):
    return repr(tuple(value))
  return str(value) if isinstance(value, str) else repr(value)


def _get(config: ml_collections.ConfigDict, field: str) -> Any:
  for key in field.split("."):
    config = config[key]
  return config


class _Expander:
  """Turns a sweep file's ConfigDict into its runs, checking everything on the way."""

  def __init__(self, sweep: ml_collections.ConfigDict, label: str, path: str,
               sets: dict[str, str]):
    from regnet_jax import models

    self.label = label
    unknown = sorted(set(sweep.keys()) - set(SWEEP_FIELDS))
    missing = [f for f in ("config", "models", "seeds") if f not in sweep]
    if unknown or missing:
      raise ValueError(f"{label}: a sweep has the fields {', '.join(SWEEP_FIELDS)} (variants "
                       f"and overrides optional); "
                       + (f"unknown: {', '.join(unknown)}" if unknown else
                          f"missing: {', '.join(missing)}"))
    config_path, _, arg = sweep.config.partition(":")
    self.config_path, self.import_path = _resolve(config_path, path)
    self.config_arg = arg
    self.variants = {k: flatten(v) for k, v in (sweep.get("variants") or {}).items()}
    for name in self.variants:
      if not VARIANT.fullmatch(name):
        raise ValueError(f"{label}: variant {name!r}: use letters, digits and dots only (the "
                         "name goes into the runs' workdir names)")
    self.sources: dict[str, tuple[Any, str]] = {}  # field -> (value, where it was given)
    for field, value in flatten(sweep.get("overrides")).items():
      self._add(field, value, f"{label} overrides {field}={value!r}")
    for field, value in sets.items():
      self._add(field, value, f"--set.{field}={value}")
    self.sets = sets
    entries = list(sweep.models)
    for entry in entries:
      model, _, variant = entry.partition("-")
      try:
        models.get_spec(model)
      except ValueError as e:
        raise ValueError(f"{label}: {e}") from None
      if variant and variant not in self.variants:
        raise ValueError(f"{label}: model entry {entry!r} names the variant {variant!r}, which "
                         f"is not in its variants ({', '.join(self.variants) or 'none'})")
    self.entries = entries
    self.seeds = [int(s) for s in sweep.seeds]
    if not entries or not self.seeds or len(set(entries)) < len(entries):
      raise ValueError(f"{label}: give at least one model and one seed, each model entry once")

  def _add(self, field: str, value: Any, where: str) -> None:
    if field in PER_RUN:
      raise ValueError(f"{where}: the sweep sets each run's {field} (its models and seeds "
                       "lists); change those instead")
    self.sources[field] = (value, where)

  def run(self, entry: str, seed: int) -> Run:
    """The run of ``entry`` with ``seed``: its command-line flags and config, checked."""
    from regnet_jax.train.validate import validate_config

    model, _, variant = entry.partition("-")
    arg = self.config_arg.replace("{model}", model)
    fields: dict[str, tuple[Any, str]] = dict(self.sources)
    for field, value in self.variants.get(variant, {}).items():
      fields[field] = (value, f"{self.label} variant {variant} {field}={value!r}")
    for field in self.sets:  # the command line wins over the file
      fields[field] = self.sources[field]
    if "{model}" not in self.config_arg:
      fields["model"] = (model, "the run's model")
    fields["seed"] = (seed, "the run's seed")
    args = [f"--config={self.config_path}" + (f":{arg}" if arg else "")]
    texts = {}
    for field, (value, where) in fields.items():
      try:
        texts[field] = value if where.startswith("--set.") else command_value(value)
      except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
      args.append(f"--config.{field}={texts[field]}")
    try:
      config = main_cli.parse_config(args)
    except ValueError as e:
      message = str(e)
      for field, (_, where) in fields.items():
        message = message.replace(f"--config.{field}={texts[field]}", where)
      raise ValueError(f"{self.label}, run {entry}_seed{seed}: {message}") from None
    for field, (value, where) in fields.items():
      if not where.startswith("--set.") and _parsed(value) != _parsed(_get(config, field)):
        raise ValueError(f"{where}: main.py's command line reads it back as "
                         f"{_get(config, field)!r}; give the field's type")
    try:
      validate_config(config)
    except ValueError as e:
      raise ValueError(f"{self.label}, run {entry}_seed{seed}: {e}") from None
    return Run(f"{entry}_seed{seed}", entry, seed, tuple(args), config)


def _parsed(value: Any) -> Any:
  return tuple(value) if isinstance(value, list | tuple) else value


def load(spec: str, sets: dict[str, str] | None = None) -> Sweep:
  """The sweep ``FILE[:ARG]`` (``get_sweep(ARG)`` of FILE) with ``sets`` (``--set.FIELD=VALUE``
  as typed: ``{FIELD: VALUE}``) applied to every run.

  Raises:
    ValueError: one line naming what is wrong: the file, the sweep's name, a model, a field,
      a value, or a config that cannot train.
  """
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise ValueError(f"sweep file {path} not found (e.g. --sweep=configs/sweeps.py:table1)")
  module = _load_module(path)
  if not hasattr(module, "get_sweep"):
    raise ValueError(f"{path} has no get_sweep(arg) function: not a sweep file")
  try:
    sweep = module.get_sweep(arg) if arg else module.get_sweep()
  except (ValueError, KeyError, TypeError) as e:
    raise ValueError(f"{spec}: {e}") from None
  expander = _Expander(sweep, spec, path, dict(sets or {}))
  added = expander.import_path not in sys.path
  if added:  # the config imports its siblings (``from configs import default``) as in main.py
    sys.path.insert(0, expander.import_path)
  try:
    runs = tuple(expander.run(entry, seed) for seed in expander.seeds
                 for entry in expander.entries)
  finally:
    if added:
      sys.path.remove(expander.import_path)
  name = re.sub(r"\W+", "_", arg or os.path.splitext(os.path.basename(path))[0]).strip("_")
  return Sweep(spec, name, runs, expander.import_path)
