"""host: glibc's huge-page tunable cuts XLA:CPU's page faults; the process restarts itself
once to apply it."""

import os
import subprocess
import sys

import pytest

from regnet_jax import host

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
  huge = int(_run(_FAULTS, host.hugepage_env(plain)).split()[-1])
  assert default > 10 * 20_000  # ~4 KiB per fault, every call
  assert huge < default / 10  # measured ~90x fewer


_REEXEC = """
import os, sys
print("start", os.environ.get("GLIBC_TUNABLES"), sys.argv[1:])
from regnet_jax import host
host.reexec_with_hugepages()
"""


def test_reexec_once_keeps_the_command_line():
  plain = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "REGNET_NO_REEXEC")}
  lines = _run(_REEXEC, dict(plain, GLIBC_TUNABLES="glibc.malloc.arena_max=4"), "a", "-b")
  assert lines.splitlines() == [
      "start glibc.malloc.arena_max=4 ['a', '-b']",
      "start glibc.malloc.arena_max=4:glibc.malloc.hugetlb=1 ['a', '-b']"]
  lines = _run(_REEXEC, dict(plain, REGNET_NO_REEXEC="1"), "a")
  assert lines.splitlines() == ["start None ['a']"]
