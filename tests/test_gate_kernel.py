"""The compiled gate kernel (cell_impl='kernel') against the elementwise XLA form."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec

from regnet_jax import gate_kernel, models
from regnet_jax.cells import UPDATES, GateConv, _channel_pairs


def _reference(pairing, a, b, pointwise, depthwise, bias):
  """The same gates written with plain jnp ops and autodiff (no custom VJP), with the
  channel pairs taken by the cells' own ``_channel_pairs``."""
  p, q = _channel_pairs(a, b, pairing)
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


# name: (gates, number of states, number of outputs)
FUSED = {"lstm": (4, 1, 2), "gru_gates": (2, 1, 2), "gru_update": (1, 2, 1)}


def _fused_reference(name):
  """The cells' own update (``cells.UPDATES``, what ``impl='elementwise'`` runs) on the
  reference gates."""
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


def test_gate_conv_without_bias_equals_elementwise():
  a, b = (jax.random.normal(jax.random.PRNGKey(i), (2, 4, 4, 6)) for i in range(2))
  layers = [GateConv(6, 2, use_bias=False, impl=impl) for impl in ("elementwise", "kernel")]
  params = layers[0].init(jax.random.PRNGKey(2), a, b)
  assert "bias" not in params["params"]
  for k, e in zip(layers[1].apply(params, a, b), layers[0].apply(params, a, b), strict=True):
    np.testing.assert_allclose(k, e, rtol=1e-5, atol=1e-5)


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


@pytest.mark.parametrize("name,pairing", [("regnet20_gru", "concat"),
                                          ("regnet20_lstm", "interleave")])
def test_model_gradients_equal_elementwise(name, pairing):
  """A whole RegNet's loss and parameter gradients: 'kernel' equals 'elementwise'."""
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 16, 16, 3))
  make = lambda impl: models.create_model(name, 10, depth=8, cell_impl=impl, pairing=pairing)
  variables = make("elementwise").init(jax.random.PRNGKey(1), x, train=False)

  def grads(impl):
    def loss(params):
      logits, _ = make(impl).apply(dict(variables, params=params), x, train=True,
                                   mutable=["batch_stats"])
      return jnp.sum(jax.nn.log_softmax(logits)[:, 0])
    return jax.value_and_grad(loss)(variables["params"])

  (loss_k, grad_k), (loss_e, grad_e) = grads("kernel"), grads("elementwise")
  np.testing.assert_allclose(loss_k, loss_e, rtol=1e-5)
  for k, e in zip(jax.tree.leaves(grad_k), jax.tree.leaves(grad_e), strict=True):
    np.testing.assert_allclose(k, e, rtol=1e-4, atol=1e-4)


def test_unsupported_dtype_is_a_clear_error():
  a = jnp.ones((1, 4, 4, 2), jnp.bfloat16)
  with pytest.raises(ValueError, match=r"float32.*cell_impl='elementwise'"):
    GateConv(2, 1, impl="kernel", dtype=jnp.bfloat16).init(jax.random.PRNGKey(0), a, a)


def _uses_kernel(impl, dtype=jnp.float32):
  a = jnp.ones((1, 4, 4, 2), dtype)
  layer = GateConv(2, 1, impl=impl, dtype=dtype)
  params = layer.init(jax.random.PRNGKey(0), a, a)
  return "RegnetGateFwd" in str(jax.make_jaxpr(layer.apply)(params, a, a))


def test_auto_uses_the_kernel_where_it_runs_and_builds():
  assert _uses_kernel("auto") and not _uses_kernel("elementwise")
  assert not _uses_kernel("auto", jnp.bfloat16)


def test_auto_falls_back_where_the_kernel_does_not_build(no_compiler, caplog):
  assert not _uses_kernel("auto")
  assert "cell_impl='auto' -> 'elementwise'" in caplog.text
  assert "no-such-compiler-xyz" in caplog.text
