"""The compiled gate kernels against the reference gates and cell equations (plain jnp)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec

from regnet_jax.cpu import gate_kernel
from regnet_jax.models.cells import channel_pairs


def _reference(pairing, a, b, pointwise, depthwise, bias):
  """The same gates written with plain jnp ops and autodiff (no custom VJP), with the
  channel pairs taken by the cells' own ``channel_pairs``."""
  p, q = channel_pairs(a, b, pairing)
  n = p.shape[-1]
  mix = jnp.concatenate([p] * (bias.shape[0] // n), -1) * pointwise[0] + jnp.concatenate(
      [q] * (bias.shape[0] // n), -1) * pointwise[1]
  h, w = p.shape[1:3]
  padded = jnp.pad(mix, ((0, 0), (1, 1), (1, 1), (0, 0)))
  return bias + sum(padded[:, i:i + h, j:j + w] * depthwise[i, j]
                    for i in range(3) for j in range(3))


def _args(pairing, shape, gates, seed=0):
  keys = jax.random.split(jax.random.PRNGKey(seed), 6)
  c = gates * shape[-1]
  return (pairing, jax.random.normal(keys[0], shape), jax.random.normal(keys[1], shape),
          jax.random.normal(keys[2], (2, c)), jax.random.normal(keys[3], (3, 3, c)),
          jax.random.normal(keys[4], (c,))), jax.random.normal(keys[5], (*shape[:-1], c))


# Odd sizes, 1-pixel images (every tap hits the padding), one image and more images than
# threads, 1 to 4 gates (RNN, GRU z|r, ..., LSTM), a width that is not a multiple of 8; both
# pairings, 'concat' also with an odd N (a pair made of a's last and b's first channel).
@pytest.mark.parametrize("pairing,shape,gates", [
    ("concat", (2, 5, 7, 3), 2), ("interleave", (1, 1, 1, 4), 4), ("concat", (3, 1, 6, 5), 1),
    ("interleave", (5, 4, 2, 8), 3), ("concat", (1, 9, 9, 16), 4)])
def test_forward_and_gradients_equal_reference(pairing, shape, gates):
  args, cotangent = _args(pairing, shape, gates)
  np.testing.assert_allclose(gate_kernel.gate(*args), _reference(*args), rtol=1e-5, atol=1e-5)
  loss = lambda f: lambda *a: jnp.vdot(f(*a), cotangent)
  got = jax.grad(loss(gate_kernel.gate), range(1, 6))(*args)
  want = jax.grad(loss(_reference), range(1, 6))(*args)
  for g, w in zip(got, want, strict=True):
    assert g.shape == w.shape
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)


def _lstm(i, f, o, g, c):
  c_new = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
  return jax.nn.sigmoid(o) * jnp.tanh(c_new), c_new


# The cells' updates after each fused gate convolution, as ConvCell writes them.
UPDATES = {
    "lstm": _lstm,
    "gru_gates": lambda z, r, h: (jax.nn.sigmoid(z), jax.nn.sigmoid(r) * h),
    "gru_update": lambda y, z, h: (1.0 - z) * h + z * jnp.tanh(y),
}
# name: (gates, number of states, number of outputs)
FUSED = {"lstm": (4, 1, 2), "gru_gates": (2, 1, 2), "gru_update": (1, 2, 1)}


def _fused_reference(name):
  """The cell's update on the reference gates."""
  gates = FUSED[name][0]
  return lambda *args: UPDATES[name](*jnp.split(_reference(*args[:6]), gates, axis=-1),
                                     *args[6:])


@pytest.mark.parametrize("name", FUSED)
@pytest.mark.parametrize("pairing,shape", [
    ("concat", (2, 5, 7, 3)), ("concat", (1, 1, 1, 4)), ("interleave", (5, 2, 3, 9)),
    ("concat", (1, 3, 4, 24)),  # channel blocks of 16, 8 and single channels
    ("concat", (2, 3, 5, 32))])  # pairs taken apart 16 at a time (N = 16 in the test above)
def test_fused_cell_updates_and_gradients_equal_reference(name, pairing, shape):
  """Each update fused into the kernel, forward and every gradient (inputs, parameters,
  states) against autodiff of the plain-jnp gates and update."""
  gates, states, outputs = FUSED[name]
  fused, reference = getattr(gate_kernel, name), _fused_reference(name)
  args, _ = _args(pairing, shape, gates)
  keys = jax.random.split(jax.random.PRNGKey(7), states + outputs)
  args = (*args, *(jax.random.normal(k, shape) for k in keys[:states]))
  cotangents = [jax.random.normal(k, shape) for k in keys[states:]]
  listed = lambda f: lambda *a: f(*a) if outputs > 1 else (f(*a),)
  for got, want in zip(listed(fused)(*args), listed(reference)(*args), strict=True):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  loss = lambda f: lambda *a: sum(
      jnp.vdot(y, c) for y, c in zip(listed(f)(*a), cotangents, strict=True))
  got = jax.grad(loss(fused), range(1, len(args)))(*args)
  want = jax.grad(loss(reference), range(1, len(args)))(*args)
  for g, w in zip(got, want, strict=True):
    assert g.shape == w.shape
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)


def test_sharded_over_devices_equals_one_call():
  """Inside ``shard_map`` (the train step's data parallelism) each device runs the kernel on
  its share of the batch; together they equal one call on the whole batch."""
  (_, *args), _ = _args("concat", (8, 4, 4, 4), 2)
  gate = functools.partial(gate_kernel.gate, "concat")
  mesh = Mesh(np.array(jax.devices()[:8]), ("data",))
  batch, rep = PartitionSpec("data"), PartitionSpec()
  sharded = jax.jit(jax.shard_map(gate, mesh=mesh, in_specs=(batch, batch, rep, rep, rep),
                                  out_specs=batch))
  np.testing.assert_allclose(sharded(*args), gate(*args), rtol=1e-6, atol=1e-6)


def test_vmapped_equals_one_call_per_element():
  """``jax.vmap`` over stacked parameters and inputs (a per-block cell's init does this), with
  its gradient."""
  stacked = [_args("concat", (2, 3, 4, 4), 2, seed=s)[0][1:] for s in range(3)]
  batched = [jnp.stack(xs) for xs in zip(*stacked, strict=True)]
  gate = functools.partial(gate_kernel.gate, "concat")
  loss = lambda *a: jnp.sum(jnp.sin(gate(*a)))
  np.testing.assert_allclose(jax.vmap(gate)(*batched), jnp.stack([gate(*a) for a in stacked]),
                             rtol=1e-6, atol=1e-6)
  got = jax.vmap(jax.grad(loss, range(5)))(*batched)
  for i, g in enumerate(got):
    np.testing.assert_allclose(g, jnp.stack([jax.grad(loss, range(5))(*a)[i] for a in stacked]),
                               rtol=1e-6, atol=1e-6)
