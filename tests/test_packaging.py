"""The package as users install it: a plain (non-editable) wheel with the CPU kernels' sources
inside the CPU package only, whose command-line tools run from where it is installed."""

import os
import subprocess
import sys
import zipfile

import pytest

from tests.conftest import REPO


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
  """The wheel ``pip wheel .`` builds, and a folder it is unpacked into (what ``pip install``
  puts in site-packages)."""
  out = tmp_path_factory.mktemp("wheel")
  subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                  "-q", "-w", str(out), str(REPO)], check=True, capture_output=True,
                 timeout=300)
  (wheel,) = out.glob("regnet_jax-*.whl")
  site = out / "site"
  with zipfile.ZipFile(wheel) as z:
    z.extractall(site)
  return wheel, site


def test_the_wheel_holds_the_package_and_the_kernel_sources_in_the_cpu_package(installed):
  wheel, _ = installed
  names = zipfile.ZipFile(wheel).namelist()
  sources = sorted(n for n in names if n.endswith((".cc", ".h")))
  assert sources == ["regnet_jax/cpu/conv_kernel.cc", "regnet_jax/cpu/gate_kernel.cc",
                     "regnet_jax/cpu/kernel_common.h"]
  for module in ("models/cells.py", "data/pipeline.py", "train/loop.py", "models/counts.py",
                 "import_data.py", "export.py", "train/weights.py", "analysis/results.py",
                 "analysis/summary.py", "main.py", "sweep/__main__.py"):
    assert f"regnet_jax/{module}" in names, module
  assert not any(n.startswith(("tests/", "configs/", "benchmarks/")) for n in names)
  assert any(n.endswith("licenses/LICENSE") or n.endswith("/LICENSE") for n in names)


def test_tools_run_from_the_installed_package(installed, tmp_path):
  """``python -m regnet_jax.analysis.summary`` from another folder, importing the unpacked
  wheel; the CPU kernels build from the installed sources."""
  _, site = installed
  env = {**os.environ, "PYTHONPATH": str(site), "JAX_PLATFORMS": "cpu",
         "REGNET_KERNEL_CACHE": str(tmp_path / "cache")}
  run = lambda *args: subprocess.run([sys.executable, *args], cwd=tmp_path, env=env,
                                     capture_output=True, text=True, timeout=300)
  out = run("-m", "regnet_jax.analysis.summary", "--models", "regnet20_gru")
  assert out.returncode == 0, out.stderr[-2000:]
  assert "| regnet20_gru " in out.stdout and "310,202" in out.stdout
  # A sweep file of the checkout names its configs relative to the checkout.
  out = run("-m", "regnet_jax.sweep", "status", f"--sweep={REPO}/configs/sweeps.py:table1",
            "--root=runs")
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.splitlines()[-3:] == [
      "regnet20_gru-dense3x3_seed2        -        -  not started", "9 runs: 9 not started",
      "time left: unknown until a run of each model has logged its steps"]
  out = run("-c", "import regnet_jax, regnet_jax.cpu as c; print(regnet_jax.__file__); "
            "print(sorted(c.implementations()))")
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.splitlines() == [str(site / "regnet_jax" / "__init__.py"),
                                     "['cell_cls', 'conv']"]


@pytest.mark.parametrize("module, allowed", [
    ("regnet_jax.models", {"models"}),  # the models know nothing of data, training or the CPU
    ("regnet_jax.data", {"data"}),
    ("regnet_jax.cpu", {"cpu"}),
    ("regnet_jax.train.evaluate", {"models", "data", "cpu", "train"}),
    ("regnet_jax.train.loop", {"models", "data", "cpu", "train"}),  # never the analyses
    ("regnet_jax.train.weights", {"models", "data", "cpu", "train"}),
])
def test_dependencies_point_one_way(module, allowed):
  """What importing each package pulls in of the others (in a fresh interpreter; the neutral
  ``regnet_jax.checks`` is allowed everywhere); evaluation never imports the training loop."""
  code = (f"import sys, {module}; print(sorted({{k for k in sys.modules "
          "if k.startswith('regnet_jax.')}))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       cwd=REPO).stdout
  loaded = eval(out)
  assert {m.split(".")[1] for m in loaded if m.count(".")} <= allowed | {"checks"}, loaded
  assert module == "regnet_jax.train.loop" or "regnet_jax.train.loop" not in loaded


def test_import_regnet_jax_stays_light_until_load_pretrained_is_used():
  """``import regnet_jax`` loads neither JAX nor any subpackage; ``regnet_jax.load_pretrained``
  is imported on first use."""
  code = ("import sys, regnet_jax; print(sorted(m for m in sys.modules if m.startswith("
          "('jax', 'flax', 'regnet_jax.')))); f = regnet_jax.load_pretrained; "
          "print(f.__module__, 'jax' in sys.modules)")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                       cwd=REPO).stdout
  assert out.splitlines() == ["[]", "regnet_jax.train.weights True"]
