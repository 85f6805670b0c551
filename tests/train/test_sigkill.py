"""SIGKILL at random moments of a real training process: the next start resumes from the
newest complete checkpoint and ends with exactly the parameters and losses of an
uninterrupted run."""

import os
import random
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from regnet_jax.train import loop
from tests.conftest import REPO
from tests.train.test_loop import STEPS, scalars, tiny_config

_WORKER = """
import sys
from tests.train.test_loop import tiny_config
from regnet_jax.train import loop
loop.train_and_evaluate(tiny_config(sys.argv[1], checkpoint_every_steps=1), sys.argv[2])
"""


@pytest.fixture(scope="module")
def uninterrupted(tfds_dir, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("whole"))
  state = loop.train_and_evaluate(tiny_config(tfds_dir, checkpoint_every_steps=1), workdir)
  return workdir, jax.device_get(state.params)


def _start_and_kill(tfds_dir: str, workdir, wait_for: int, extra: float) -> list[str]:
  """Starts a training process and SIGKILLs it once ``wait_for`` complete checkpoints exist
  (saves run every step, so the kill often lands inside the next save), plus ``extra``
  seconds. Returns the checkpoint folder's entries at the kill (incl. orbax's tmp folders)."""
  proc = subprocess.Popen([sys.executable, "-c", _WORKER, tfds_dir, str(workdir)], cwd=REPO,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  ckpts = workdir / "checkpoints"
  deadline = time.time() + 300
  while proc.poll() is None and time.time() < deadline:
    done = [d for d in os.listdir(ckpts) if d.isdigit()] if ckpts.exists() else []
    if len(done) >= wait_for:
      time.sleep(extra)
      break
    time.sleep(0.01)
  proc.send_signal(signal.SIGKILL)
  proc.wait(timeout=60)
  return sorted(os.listdir(ckpts))


@pytest.mark.slow
def test_sigkill_then_resume_equals_uninterrupted(uninterrupted, tfds_dir, tmp_path):
  """Three kills at random moments of successive (resuming) processes, then a clean finish."""
  reference, params = uninterrupted
  workdir = tmp_path / "run"
  rng = random.Random(0)
  seen = []
  for kill in range(1, 4):
    seen.append(_start_and_kill(tfds_dir, workdir, min(kill, STEPS - 1), rng.uniform(0, 1.0)))
  state = loop.train_and_evaluate(tiny_config(tfds_dir, checkpoint_every_steps=1),
                                   str(workdir))
  assert int(state.step) == STEPS, seen
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params), params)
  got, want = scalars(str(workdir))["train_loss"], scalars(reference)["train_loss"]
  assert {s: got[s] for s in want} == want, seen  # a step logged twice keeps its last value
