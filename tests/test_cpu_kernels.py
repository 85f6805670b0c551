"""Building, caching and loading the compiled CPU kernels (regnet_jax/cpu_kernels.py)."""

import os
import pathlib

import jax
import jax.numpy as jnp
import pytest

from regnet_jax import cpu_kernels, models


def test_missing_compiler_is_a_clear_error(no_compiler):
  with pytest.raises(RuntimeError, match=r"no-such-compiler-xyz.*cell_impl='elementwise' and "
                     r"conv_grad='swapped'"):
    cpu_kernels.library()
  assert not os.listdir(no_compiler)


def test_unwritable_cache_is_a_clear_error(monkeypatch, tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  monkeypatch.setenv("REGNET_KERNEL_CACHE", str(blocker / "cache"))
  cpu_kernels.library.cache_clear()
  try:
    with pytest.raises(RuntimeError, match=r"cannot write the compiled CPU kernels to .*a_file/"
                       r"cache .*REGNET_KERNEL_CACHE.*cell_impl='elementwise'"):
      cpu_kernels.library()
  finally:
    cpu_kernels.library.cache_clear()


def test_cache_key_follows_the_ffi_headers_contents(monkeypatch, tmp_path):
  """A jaxlib upgraded in place keeps the headers' path; the cached library must not be reused
  across it."""
  api = tmp_path / "xla" / "ffi" / "api"
  api.mkdir(parents=True)
  real = pathlib.Path(jax.ffi.include_dir(), "xla", "ffi", "api")
  for header in real.glob("*.h"):
    (api / header.name).write_bytes(header.read_bytes())
  monkeypatch.setattr(jax.ffi, "include_dir", lambda: str(tmp_path))
  copied = cpu_kernels._cache_key("c++")
  monkeypatch.undo()
  assert copied == cpu_kernels._cache_key("c++")  # same contents, another path: same key
  monkeypatch.setattr(jax.ffi, "include_dir", lambda: str(tmp_path))
  with open(api / "ffi.h", "a") as f:
    f.write("// a newer jaxlib\n")
  assert cpu_kernels._cache_key("c++") != copied
  assert cpu_kernels._cache_key("g++") != copied


def test_cache_key_follows_every_source_and_header(monkeypatch, tmp_path):
  key = cpu_kernels._cache_key("c++")
  for name in ("_SOURCES", "_HEADERS"):
    copies = []
    for path in getattr(cpu_kernels, name):
      copies.append(tmp_path / path.name)
      copies[-1].write_bytes(path.read_bytes())
    monkeypatch.setattr(cpu_kernels, name, tuple(copies))
    assert cpu_kernels._cache_key("c++") == key
    with open(copies[-1], "a") as f:
      f.write("// changed\n")
    assert cpu_kernels._cache_key("c++") != key
    monkeypatch.undo()


def test_conv_grad_auto_is_the_kernel_where_it_runs_and_builds():
  assert models.default_conv_grad() == "kernel"
  assert models.default_conv_grad(jnp.bfloat16) == "swapped"


def test_conv_grad_auto_falls_back_where_the_kernels_do_not_build(no_compiler, caplog):
  assert models.default_conv_grad() == "swapped"
  assert "conv_grad='auto' -> 'swapped'" in caplog.text
  assert "no-such-compiler-xyz" in caplog.text
