"""cpu.process: glibc's huge-page tunable cuts XLA:CPU's page faults; the process restarts itself
once to apply it and XLA:CPU's convolution setting, only where the CPU is the backend."""

import os
import subprocess
import sys

import pytest

from regnet_jax.cpu import process as host

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")

# A jitted function whose temporaries (~200 MiB) are far above glibc's mmap threshold, so
# every call maps them afresh; prints the minor page faults of 10 calls after 3 warm-up calls.
_FAULTS = """
import resource
import jax, jax.numpy as jnp
x = jnp.ones((256, 32, 32, 48))
f = jax.jit(lambda x: jnp.stack([jnp.sum(jnp.roll(x, i, 1) * x, (0, 1, 2)) for i in range(8)]))
for _ in range(3):
  f(x).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
  f(x).block_until_ready()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _run(code: str, env: dict, *args: str) -> str:
  return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                        check=True, env=dict(env, JAX_PLATFORMS="cpu", PYTHONPATH=".")).stdout


def test_hugepages_cut_page_faults():
  plain = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
  default = int(_run(_FAULTS, plain).split()[-1])
  huge = int(_run(_FAULTS, host.cpu_env(plain)).split()[-1])
  assert default > 10 * 20_000  # ~4 KiB per fault, every call
  assert huge < default / 10  # measured ~90x fewer


_REEXEC = """
import os, sys
print("start", os.environ.get("GLIBC_TUNABLES"), os.environ.get("XLA_FLAGS"), sys.argv[1:])
from regnet_jax.cpu import process as host
host.reexec_with_cpu_settings()
"""


def test_reexec_once_keeps_the_command_line():
  plain = {k: v for k, v in os.environ.items()
           if k not in ("GLIBC_TUNABLES", "XLA_FLAGS", "REGNET_NO_REEXEC")}
  lines = _run(_REEXEC, dict(plain, GLIBC_TUNABLES="glibc.malloc.arena_max=4",
                             XLA_FLAGS="--xla_force_host_platform_device_count=2"), "a", "-b")
  assert lines.splitlines() == [
      "start glibc.malloc.arena_max=4 --xla_force_host_platform_device_count=2 ['a', '-b']",
      "start glibc.malloc.arena_max=4:glibc.malloc.hugetlb=1 "
      f"--xla_force_host_platform_device_count=2 {host.XLA_CPU_FLAGS} ['a', '-b']"]
  lines = _run(_REEXEC, dict(plain, REGNET_NO_REEXEC="1"), "a")
  assert lines.splitlines() == ["start None None ['a']"]


def test_cpu_env_leaves_what_the_user_set():
  user = {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0",
          "XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type="}
  assert host.cpu_env(user) is None
  assert host.cpu_env({}, hugepages=False, cpu_only=True) == {"XLA_FLAGS": host.XLA_CPU_FLAGS}
  assert host.cpu_env({}, hugepages=False, cpu_only=False) is None  # a GPU/TPU backend
  assert host.cpu_env({"JAX_PLATFORMS": "cuda"}) is None  # nothing to restart for


@pytest.mark.parametrize("platforms,plugin,cpu", [
    ("", False, True), ("", True, False), ("cpu", True, True), ("cuda,cpu", False, False),
    ("cuda", True, False)])
def test_cpu_backend_follows_jax_platforms_then_plugins(monkeypatch, platforms, plugin, cpu):
  monkeypatch.setattr(host, "accelerator_plugin_installed", lambda: plugin)
  assert host.cpu_backend({"JAX_PLATFORMS": platforms} if platforms else {}) == cpu


class _Dist:
  def __init__(self, name):
    self.metadata = {"Name": name}


@pytest.mark.parametrize("names,found", [
    (["jax", "jaxlib", "numpy"], False), (["jax", "jax-cuda12-plugin"], True),
    (["jax_cuda13_pjrt"], True), (["libtpu"], True), (["jax-rocm7-plugin"], True)])
def test_accelerator_plugins_are_recognised(monkeypatch, names, found):
  monkeypatch.setattr(host.importlib.metadata, "distributions",
                      lambda: [_Dist(n) for n in names])
  assert host.accelerator_plugin_installed() == found


_CONV_IMPL = """
import jax, jax.numpy as jnp
x, k = jnp.ones((128, 32, 32, 16)), jnp.ones((3, 3, 16, 16))
conv = lambda x, k: jax.lax.conv_general_dilated(
    x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
grad = jax.jit(jax.grad(lambda x, k: jnp.sum(conv(x, k) ** 2), argnums=(0, 1)))
print("ynn_fusion" in grad.lower(x, k).compile().as_text())
"""


def test_xla_cpu_flag_takes_convolutions_from_ynnpack():
  """The flag is honoured by this jaxlib: a ResNet-20 stage-1 convolution's gradient (compiled,
  not run) has a YNNPACK fusion without it and none with it."""
  plain = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  assert _run(_CONV_IMPL, plain).split()[-1] == "True"
  assert _run(_CONV_IMPL, dict(plain, XLA_FLAGS=host.XLA_CPU_FLAGS)).split()[-1] == "False"
