"""Building, caching and loading the compiled CPU kernels (regnet_jax/cpu/kernels.py)."""

import logging
import os
import pathlib
import re

import jax
import pytest

from regnet_jax.cpu import kernels as cpu_kernels


def test_missing_compiler_is_a_clear_error(no_compiler):
  with pytest.raises(RuntimeError, match=r"no-such-compiler-xyz.*cell_impl='reference' and "
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
                       r"cache .*REGNET_KERNEL_CACHE.*cell_impl='reference'"):
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


def test_the_build_announces_itself_and_its_time(monkeypatch, tmp_path, caplog):
  monkeypatch.setenv("REGNET_KERNEL_CACHE", str(tmp_path))
  cpu_kernels.library.cache_clear()
  try:
    with caplog.at_level(logging.INFO):
      cpu_kernels.library()
  finally:
    cpu_kernels.library.cache_clear()
  assert re.search(r"Compiling regnet_jax's CPU kernels .*\n.*Compiled regnet_jax's CPU kernels "
                   r"in [0-9.]+ s", caplog.text)
  assert len(list(tmp_path.glob("regnet_kernels-*.so"))) == 1
