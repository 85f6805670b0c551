"""Scalars of TensorBoard event files, read with TensorBoard's own record reader (no
TensorFlow): ``{tag: [(step, value, wall_time), ...]}``."""

from __future__ import annotations

import glob
import os
from collections.abc import Iterator

from tensorboard.compat.proto import event_pb2
from tensorboard.compat.tensorflow_stub import errors, pywrap_tensorflow
from tensorboard.util import tensor_util

Scalars = dict[str, list[tuple[int, float, float]]]


def event_files(folder: str) -> list[str]:
  """The event files directly in ``folder`` (a training run writes one per process start),
  oldest first."""
  return sorted(glob.glob(os.path.join(folder, "events.out.tfevents.*")))


def _records(path: str) -> Iterator[bytes]:
  """The serialized records of one event file; like TensorBoard, a record cut short (a process
  killed while writing) ends the file."""
  reader = pywrap_tensorflow.PyRecordReader_New(path)
  while True:
    try:
      reader.GetNext()
    except (errors.OutOfRangeError, errors.DataLossError):
      return
    yield reader.record()


def _read_file(path: str, found: dict[str, dict[int, tuple[float, float]]]) -> list[float]:
  """Adds one event file's scalars to ``found`` (``{tag: {step: (value, wall_time)}}``) and
  returns the wall times of its training-run events (not the later ``precise_bn_`` ones)."""
  times = []
  for record in _records(path):
    event = event_pb2.Event.FromString(record)
    for value in event.summary.value:
      if value.HasField("tensor"):
        array = tensor_util.make_ndarray(value.tensor)
        if array.size != 1 or array.dtype.kind not in "fiu":
          continue  # hparams and text summaries
        number = float(array.reshape(()))
      else:
        number = value.simple_value
      found.setdefault(value.tag, {})[event.step] = (number, event.wall_time)
      if not value.tag.startswith("precise_bn_"):
        times.append(event.wall_time)
  return times


def read_scalars(paths: list[str]) -> Scalars:
  """Every scalar of the event files ``paths``, read in that order: ``{tag: [(step, value,
  wall_time), ...]}``, sorted by step; a step logged twice (a resumed run) keeps its last
  value."""
  found: dict[str, dict[int, tuple[float, float]]] = {}
  for path in paths:
    _read_file(path, found)
  return {tag: [(s, v, t) for s, (v, t) in sorted(by_step.items())]
          for tag, by_step in found.items()}


def training_hours(folder: str) -> float:
  """Wall-clock hours of the training processes that wrote the event files in ``folder``: each
  file (one per process start) from its first to its last training event, summed, so time
  between an interruption and the resumed run is not counted."""
  spans = [_read_file(path, {}) for path in event_files(folder)]
  return sum(max(t) - min(t) for t in spans if t) / 3600
