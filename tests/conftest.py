"""Shared test set-up: CPU only, 8 fake host devices for the multi-device tests."""

import os
import pathlib
import re
import shutil
import tempfile

import numpy as np
import pytest

# XLA:CPU's own convolutions, as main.py and the benchmarks use them (regnet_jax/cpu/process.py).
# Eight fake devices share two busy cores, so one device's thread can reach a collective
# (all-reduce) well after the others: XLA aborts the process when that takes over 40 s, its
# default, so the tests allow 10 minutes.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 "
                      "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution "
                      "--xla_cpu_collective_call_terminate_timeout_seconds=600")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Identical computations (the same tiny model trained in several tests, and in the `main.py`
# subprocesses) compile once: XLA's persistent cache, shared by the pytest-xdist workers.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
    tempfile.gettempdir(), "regnet_jax_test_xla_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

# A pytest-xdist worker that dies (abort, segfault) loses the C++ message that says why inside
# pytest's capture, and its all-thread traceback buries the rest in CI's log. So each worker's
# stderr (fd 2: C++ diagnostics and faulthandler's dump; pyproject sets --capture=sys, so tests
# leave fd 2 alone) goes to a file, and the controller prints what the file of a worker that
# died says of it at the end of the run.
STDERR_DIR = "REGNET_TEST_WORKER_STDERR"
if os.environ.get("PYTEST_XDIST_WORKER") and os.environ.get(STDERR_DIR):
  _log = os.open(os.path.join(os.environ[STDERR_DIR], os.environ["PYTEST_XDIST_WORKER"]),
                 os.O_WRONLY | os.O_CREAT | os.O_APPEND)
  os.dup2(_log, 2)
  os.close(_log)

REPO = pathlib.Path(__file__).resolve().parents[1]
# Small real slices of the offline datasets, shipped with the tests (tests/testdata/make_slices.py).
TESTDATA = REPO / "tests" / "testdata"
# The full offline copies, for the few tests that need them: where $REGNET_DATA points.
FULL_DATA = os.environ.get("REGNET_DATA")


def full_data(*parts: str) -> pathlib.Path:
  """A file of the full offline copies; the test skips, saying why, where $REGNET_DATA is unset."""
  if not FULL_DATA:
    pytest.skip("needs the full offline datasets: set REGNET_DATA to their folder")
  path = pathlib.Path(FULL_DATA, *parts)
  if not path.exists():
    pytest.fail(f"REGNET_DATA={FULL_DATA} has no {'/'.join(parts)}")
  return path


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory) -> str:
  """A tfds data_dir with the real CIFAR-10 (512 train / 200 test) and Imagenette (40 train /
  20 validation) slices of tests/testdata, imported with `regnet_jax.import_data`."""
  from regnet_jax import import_data

  data_dir = tmp_path_factory.mktemp("data") / "tfds"
  for dataset in ("cifar10", "imagenette"):
    import_data.import_dataset(dataset, str(TESTDATA / dataset), str(data_dir))
  return str(data_dir)


@pytest.fixture(scope="session")
def imagenet_sample() -> tuple[list[bytes], np.ndarray]:
  """34 ImageNet photographs of varied sizes (4 greyscale) as JPEG bytes and labels."""
  from regnet_jax.import_data import read_npz

  return read_npz(str(TESTDATA / "imagenette" / "imagenet-sample-jpeg.npz"))


@pytest.fixture
def no_compiler(monkeypatch, tmp_path):
  """No C++ compiler and an empty kernel cache (``tmp_path``), with the compiled CPU kernels'
  cached library and build check cleared before and after the test."""
  from regnet_jax.cpu import kernels

  monkeypatch.setenv("CXX", "no-such-compiler-xyz")
  monkeypatch.setenv("REGNET_KERNEL_CACHE", str(tmp_path))
  clear = lambda: (kernels.library.cache_clear(), kernels.builds.cache_clear())
  clear()
  yield tmp_path
  clear()


def pytest_configure(config):
  """In the pytest-xdist controller: the folder for the workers' stderr files (``STDERR_DIR``
  above), made before the workers start, so they inherit it."""
  if config.getoption("numprocesses", None) and not os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ[STDERR_DIR] = tempfile.mkdtemp(prefix="regnet_jax_worker_stderr_")


# The first line of a C++ fatal message: glog/absl's "F<mmdd> ...", a failed CHECK, a C++
# exception that ends the process.
_CPP_FATAL = re.compile(r"^F\d{4} |Check failed|terminate called|\*\*\* Check failure")


def crash_report(text: str, context: int = 10, frames: int = 8) -> list[str]:
  """What a dead worker's stderr says of its death, short enough for the tail of a CI log: for
  each "Fatal Python error", the C++ fatal message above it (however many stack frames lie in
  between) with the line after it, the ``context`` lines before the error, the error, and the
  innermost ``frames`` of the crashing thread (faulthandler calls it "Current thread")."""
  lines = [line[:300] for line in text.splitlines()]
  report = []
  for i, line in enumerate(lines):
    if line.startswith("Fatal Python error"):
      first = max(0, i - context)
      message = next((j for j in range(max(0, i - 500), first)
                      if _CPP_FATAL.search(lines[j])), None)
      if message is not None:
        report += [*lines[message:min(message + 2, first)], "..."]
      report += lines[first:i + 1]
      current = next((j for j in range(i, len(lines)) if lines[j].startswith("Current thread")),
                     None)
      if current is not None:
        report += lines[current:current + 1 + frames]
  return report


_DEAD_WORKERS: list[str] = []


@pytest.hookimpl(optionalhook=True)  # a pytest-xdist hook, in the controller
def pytest_testnodedown(node, error):
  if error is not None:
    _DEAD_WORKERS.append(node.gateway.id)


def pytest_terminal_summary(terminalreporter):
  """In the controller: what each dead worker's stderr says of its death, then the folder goes."""
  folder = os.environ.get(STDERR_DIR)
  if not folder or os.environ.get("PYTEST_XDIST_WORKER") or not os.path.isdir(folder):
    return
  for name in _DEAD_WORKERS:
    path = pathlib.Path(folder, name)
    text = path.read_text(errors="replace") if path.exists() else ""
    report = crash_report(text) or [
        "(no fatal error on its stderr: killed from outside, e.g. by the OOM killer?)",
        *text.splitlines()[-10:]]
    terminalreporter.section(f"worker {name} died; what its stderr says")
    for line in report:
      terminalreporter.write_line(line)
  shutil.rmtree(folder, ignore_errors=True)
