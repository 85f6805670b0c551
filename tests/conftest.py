"""Shared test set-up: CPU only, 8 fake host devices for the multi-device tests."""

import os
import pathlib
import shutil
import tempfile

import numpy as np
import pytest

# XLA:CPU's own convolutions, as main.py and the benchmarks use them (regnet_jax/host.py).
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8 "
                      "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution")
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
# The genuine offline datasets: ../shared/data beside the checkout (as in CI), or $REGNET_DATA.
SHARED_DATA = pathlib.Path(os.environ.get("REGNET_DATA", REPO.parent / "shared" / "data"))


def _slice_npz(src: pathlib.Path, dst: pathlib.Path, count: int) -> None:
  """Writes ``count`` evenly spaced examples of an offline .npz (classes are grouped)."""
  with np.load(src) as d:
    jpeg, offsets, labels = d["jpeg"], d["offsets"], d["labels"]
  idx = np.linspace(0, len(labels) - 1, count).astype(int)
  parts = [jpeg[offsets[i]:offsets[i + 1]] for i in idx]
  new_offsets = np.concatenate([[0], np.cumsum([len(p) for p in parts])]).astype(np.int64)
  np.savez(dst, jpeg=np.concatenate(parts), offsets=new_offsets, labels=labels[idx])


def _require(path: pathlib.Path) -> pathlib.Path:
  if not path.exists():
    pytest.skip(f"offline data not found at {path} (set REGNET_DATA)")
  return path


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory) -> str:
  """A tfds data_dir with real CIFAR-10 (512 train / 200 test) and Imagenette (40 train /
  20 validation) slices, imported with `regnet_jax.import_data`."""
  from regnet_jax import import_data

  root = tmp_path_factory.mktemp("data")
  data_dir = root / "tfds"
  for dataset, files in (("cifar10", {"train": 512, "test": 200}),
                         ("imagenette", {"train": 40, "val": 20})):
    src = _require(SHARED_DATA / dataset)
    dst = root / f"{dataset}_src"
    dst.mkdir()
    for split, count in files.items():
      _slice_npz(src / f"{split}-jpeg.npz", dst / f"{split}-jpeg.npz", count)
    import_data.import_dataset(dataset, str(dst), str(data_dir))
  return str(data_dir)


@pytest.fixture(scope="session")
def imagenet_sample() -> tuple[list[bytes], np.ndarray]:
  """The 209 ImageNet photographs of varied sizes (4 greyscale) as JPEG bytes and labels."""
  from regnet_jax.import_data import read_npz

  return read_npz(str(_require(SHARED_DATA / "imagenette" / "imagenet-sample-jpeg.npz")))


@pytest.fixture
def no_compiler(monkeypatch, tmp_path):
  """No C++ compiler and an empty kernel cache (``tmp_path``), with the compiled CPU kernels'
  cached library and build check cleared before and after the test."""
  from regnet_jax import cpu_kernels

  monkeypatch.setenv("CXX", "no-such-compiler-xyz")
  monkeypatch.setenv("REGNET_KERNEL_CACHE", str(tmp_path))
  clear = lambda: (cpu_kernels.library.cache_clear(), cpu_kernels._builds.cache_clear())
  clear()
  yield tmp_path
  clear()


def pytest_configure(config):
  """In the pytest-xdist controller: the folder for the workers' stderr files (``STDERR_DIR``
  above), made before the workers start, so they inherit it."""
  if config.getoption("numprocesses", None) and not os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ[STDERR_DIR] = tempfile.mkdtemp(prefix="regnet_jax_worker_stderr_")


def crash_report(text: str, context: int = 10, frames: int = 8) -> list[str]:
  """What a dead worker's stderr says of its death, short enough for the tail of a CI log: for
  each "Fatal Python error", the ``context`` lines before it (the C++ message, if any), the error
  and the innermost ``frames`` of the crashing thread (faulthandler calls it "Current thread")."""
  lines = [line[:300] for line in text.splitlines()]
  report = []
  for i, line in enumerate(lines):
    if line.startswith("Fatal Python error"):
      report += lines[max(0, i - context):i + 1]
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
