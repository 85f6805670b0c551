"""The checks every layer shares, each with its one error message: a value among its choices,
and a batch that splits evenly. No dependencies, so models, data, cpu and train all use it."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> None:
  """Raises a ValueError naming the valid choices if ``value`` is not one of them."""
  choices = tuple(choices)
  if value not in choices:
    raise ValueError(f"{name}={value!r} is not valid; choose one of "
                     f"{', '.join(map(str, choices))}")


def split_batch(batch_size: int, parts: int, what: str) -> int:
  """``batch_size // parts``; a ValueError suggesting a valid batch size if ``batch_size`` is
  not a positive multiple of ``parts`` (the count of ``what``: devices or processes)."""
  if not isinstance(batch_size, int) or batch_size <= 0 or batch_size % parts:
    suggestion = max(parts, int(batch_size) // parts * parts) if isinstance(
        batch_size, int | float) else parts
    raise ValueError(f"batch_size={batch_size!r} must be a positive multiple of the number of "
                     f"{what} ({parts}); e.g. --config.batch_size={suggestion}")
  return batch_size // parts
