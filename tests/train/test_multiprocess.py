"""Two processes on localhost (4 fake CPU devices each) train like one process with 8, and
resume from the checkpoint they saved together. That equality holds with the 'global' input
sharding, where the global batches do not depend on the process count; the default 'process'
sharding's guarantee (every example once per epoch, each process reading only its share) is
tested in tests/data/test_pipeline.py.

At a normal learning rate the two runs' first losses agree exactly and then drift apart
(measured: 1e-5 relative at step 2, 4% by step 6): the cross-process gradient all-reduce
sums in another order, and early training amplifies rounding differences (one process
with parameters scaled by 1 + 1e-7 drifts as fast). So the whole loop (data order, sharding,
BatchNorm statistics, evaluation, checkpoints) is compared at a learning rate of 1e-6.
"""

import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from regnet_jax.train import evaluate, loop
from tests.conftest import REPO
from tests.train.test_loop import scalars, tiny_config

STEPS = 4
# A ResNet (the regulated models' data parallelism is tested in one process, test_loop.py) with
# one block per stage (depth 8) keeps the five compilations short.
OVERRIDES = dict(num_train_steps=STEPS, eval_every_steps=STEPS, checkpoint_every_steps=2,
                 learning_rate=1e-6, input_sharding="global")

_WORKER = """
import sys
from regnet_jax.train import distributed
distributed.initialize_distributed(sys.argv[1], 2, int(sys.argv[2]))
import jax
assert jax.process_count() == 2 and len(jax.devices()) == 8 and len(jax.local_devices()) == 4
from tests.train.test_multiprocess import config
from regnet_jax.train import loop
loop.train_and_evaluate(config(sys.argv[3], num_train_steps=int(sys.argv[5])), sys.argv[4],
                        allow_config_change=True)  # the second job trains longer
distributed.finished()
"""


def config(data_dir, **overrides):
  c = tiny_config(data_dir, **{**OVERRIDES, **overrides})
  c.model = "resnet20"
  c.model_args.depth = 8
  return c


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_like_one(tfds_dir, tmp_path):
  one = str(tmp_path / "one")
  state = loop.train_and_evaluate(config(tfds_dir), one)  # this process: 8 devices
  two = str(tmp_path / "two")
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
  for steps in (2, STEPS):  # the second job restores the first one's checkpoint, then trains on
    address = f"localhost:{_free_port()}"
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, address, str(i), tfds_dir, two,
                               str(steps)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
      assert p.returncode == 0, err[-3000:]
  assert sorted(os.listdir(os.path.join(two, "checkpoints"))) == ["2", "4"]
  # Only process 0 wrote events (one file per job); all processes wrote the checkpoints.
  assert len([f for f in os.listdir(two) if f.startswith("events")]) == 2
  ref, got = scalars(one), scalars(two)
  assert sorted(ref["train_loss"]) == list(range(1, STEPS + 1))
  for tag in ("train_loss", "train_accuracy", "eval_top1_error", "eval_loss"):
    steps = sorted(ref[tag])
    np.testing.assert_allclose([got[tag][s] for s in steps], [ref[tag][s] for s in steps],
                               rtol=1e-5, err_msg=tag)
  _, variables, _ = evaluate.load_from_workdir(two, STEPS)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               jax.device_get(variables["params"]), jax.device_get(state.params))


def _launch_main(tmp_path, tfds_dir) -> tuple[list[subprocess.Popen], pathlib.Path]:
  """Starts a two-process main.py run (2 fake devices each) of a long training, and returns
  once its checkpoint of step 2 is written: (processes, workdir). Logs: tmp_path/{0,1}.log."""
  workdir = tmp_path / "w"
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
  address = f"localhost:{_free_port()}"
  logs = [open(tmp_path / f"{i}.log", "w+") for i in range(2)]  # noqa: SIM115
  procs = [subprocess.Popen(
      [sys.executable, "main.py", "--config=configs/cifar.py:resnet20", f"--workdir={workdir}",
       f"--config.data_dir={tfds_dir}", "--config.batch_size=8", "--config.shuffle_buffer=64",
       "--config.num_train_steps=10000", "--config.checkpoint_every_steps=2",
       f"--coordinator_address={address}", "--num_processes=2", f"--process_id={i}"],
      cwd=REPO, env=env, stdout=logs[i], stderr=subprocess.STDOUT) for i in range(2)]
  try:
    deadline = time.monotonic() + 300
    while not (workdir / "checkpoints" / "2").is_dir():  # training is under way
      assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
      time.sleep(0.5)
  except BaseException:
    for p in procs:
      p.kill()
    raise
  return procs, workdir


@pytest.mark.slow
@pytest.mark.parametrize("victim", [0, 1])
def test_a_dead_peer_ends_the_other_process_with_one_line(tfds_dir, tmp_path, victim):
  """Process ``victim`` of a two-process main.py run is killed mid-training: the other one
  ends at once with one line naming it, not in a collective timeout and C++ abort (before the
  peer watch: blocked about 75 s, then a stack dump and exit 134)."""
  procs, _ = _launch_main(tmp_path, tfds_dir)
  survivor = procs[1 - victim]
  try:
    procs[victim].kill()
    killed = time.monotonic()
    returncode = survivor.wait(timeout=120)
    waited = time.monotonic() - killed
  finally:
    for p in procs:
      p.kill()
  log = (tmp_path / f"{1 - victim}.log").read_text()
  assert returncode == 1, log[-3000:]
  ours = (f"error: process {victim} of this 2-process run died or ended early (see its log); "
          f"this process {1 - victim} stops too.")
  if victim == 0 and ours not in log:
    # Process 0 hosts JAX's coordination service, whose client in process 1 ends it from a C++
    # thread as soon as the service is gone; that thread and the peer watch race (the watch
    # usually wins), and either way the end is immediate with exit code 1.
    assert "Terminating process because the JAX distributed service detected fatal" in log
  else:
    assert log.strip().splitlines()[-1].startswith(ours), log[-3000:]
  assert "Fatal Python error" not in log and "Check failure" not in log
  assert waited < 30  # the watch ends it at once; without it, about 75 s and an abort


@pytest.mark.slow
def test_a_signal_to_one_process_stops_every_process_at_the_same_step(tfds_dir, tmp_path):
  """SIGTERM reaches process 1 only (a preempted host): both processes stop at the same step
  and save its checkpoint together, and both exit normally. (Before, process 1 alone stopped
  and waited in the checkpoint's barrier while process 0 waited in the next step's
  all-reduce.)"""
  procs, workdir = _launch_main(tmp_path, tfds_dir)
  try:
    procs[1].send_signal(signal.SIGTERM)
    returncodes = [p.wait(timeout=120) for p in procs]
  finally:
    for p in procs:
      p.kill()
  logs = [(tmp_path / f"{i}.log").read_text() for i in range(2)]
  assert returncodes == [0, 0], logs[0][-2000:] + logs[1][-2000:]
  stopped = [re.findall(r"Stopped by SIGTERM on process 1 at step (\d+); checkpoint saved", log)
             for log in logs]
  assert len(stopped[0]) == 1 and stopped[0] == stopped[1], logs[0][-2000:] + logs[1][-2000:]
  assert stopped[0][0] in os.listdir(workdir / "checkpoints")
