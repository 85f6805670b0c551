"""The guard on resuming: a run continues only with the recipe it was started with.

Resuming compares the config given now with the workdir's ``config.json``. A difference in a
field that changes the result (model, data, batch, optimizer, schedule, length, seed,
precision, ...) is refused in one line naming each field with its old and new value, unless
the user allows it on purpose (``main.py --allow_config_change``), and then it is recorded in
``runs.jsonl``. Fields that only change how the run is watched or run (:data:`NEUTRAL`) may
differ freely.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

from regnet_jax.train import checkpoint

if TYPE_CHECKING:
  import ml_collections

# Fields (dotted, or a section's name for all its fields) that leave the result unchanged.
NEUTRAL = (
    "log_every_steps", "eval_every_steps", "checkpoint_every_steps", "keep_checkpoints",
    "eval_precise_bn_batches",  # evaluation only: training is unchanged
    "data_dir", "prefetch_batches",  # where the same data is read from, and how far ahead
    "implementation",  # the same computation, another implementation (regnet_jax/cpu)
    "model_args.scan_unroll",  # the same computation, unrolled differently
)


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(_flat(value, f"{prefix}{key}."))
    else:
      out[prefix + key] = tuple(value) if isinstance(value, list) else value
  return out


def _neutral(field: str) -> bool:
  return any(field == n or field.startswith(n + ".") for n in NEUTRAL)


def config_changes(old: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
  """``{field: (old, new)}`` of the result-changing fields that differ between two configs
  (as dicts; a field missing on one side counts as None there)."""
  a, b = _flat(checkpoint.upgrade_config(old)), _flat(checkpoint.upgrade_config(new))
  return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b))
          if not _neutral(k) and a.get(k) != b.get(k)}


def check_resume(workdir: str, config: ml_collections.ConfigDict, allow_changes: bool
                 ) -> dict[str, tuple[Any, Any]]:
  """The result-changing differences between ``config`` and the config of the run being
  resumed in ``workdir`` ({} if nothing is resumed: no checkpoint yet).

  Raises:
    ValueError: there are some and ``allow_changes`` is False, naming each with its values.
  """
  path = os.path.join(workdir, "config.json")
  if not (os.path.exists(path) and checkpoint.has_checkpoints(workdir)):
    return {}
  with open(path) as f:
    changes = config_changes(json.load(f), json.loads(config.to_json()))
  if changes and not allow_changes:
    listed = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changes.items())
    raise ValueError(f"{workdir} holds a run with another recipe ({listed}); resume it with "
                     "its own config, use another --workdir, or pass --allow_config_change "
                     "to continue it with this one on purpose")
  return changes
