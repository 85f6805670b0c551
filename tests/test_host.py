"""host.retain_freed_memory: a repeated XLA:CPU computation stops page-faulting."""

import subprocess
import sys

import pytest

# Runs a jitted function whose temporaries (~200 MiB) are far above glibc's mmap threshold,
# and prints the minor page faults of 30 calls after 3 warm-up calls. Retained, the heap
# still grows now and then (fragmentation: measured 0-3 of 15 calls), so only the total is
# compared.
_SCRIPT = """
import resource, sys
from regnet_jax import host
if sys.argv[1] == "retain":
  assert host.retain_freed_memory()
import jax, jax.numpy as jnp
x = jnp.ones((256, 32, 32, 48))
f = jax.jit(lambda x: jnp.stack([jnp.sum(jnp.roll(x, i, 1) * x, (0, 1, 2)) for i in range(8)]))
for _ in range(3):
  f(x).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(30):
  f(x).block_until_ready()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
  out = subprocess.run([sys.executable, "-c", _SCRIPT, mode], capture_output=True, text=True,
                       check=True, env={"JAX_PLATFORMS": "cpu", "PYTHONPATH": "."})
  return int(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
def test_retained_memory_removes_page_faults():
  default, retained = _faults("default"), _faults("retain")
  assert default > 30 * 20_000  # each call maps its buffers afresh: ~4 KiB per fault
  assert retained < default / 4
