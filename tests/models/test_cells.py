"""The gate convolutions and the cells against independently written references."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from regnet_jax.models.cells import ConvCell, DenseGateConv, LightGateConv, initial_state

N, G = 6, 3


def _inputs(seed=0, n=N):
  ka, kb = jax.random.split(jax.random.PRNGKey(seed))
  return jax.random.normal(ka, (2, 5, 7, n)), jax.random.normal(kb, (2, 5, 7, n))


def dense_reference(params, a, b, pairing):
  """The light-weight conv as two dense convolutions with equivalent sparse kernels (built
  from the parameters with selection matrices, so it is differentiable)."""
  pw, dw = params["pointwise"], params["depthwise"]
  n, gn = a.shape[-1], pw.shape[1]
  # Dense 1x1 kernel 2N -> G*N over concat([a, b]); gate channel (g, k) reads pair k.
  select = np.zeros((2, 2 * n, gn), np.float32)
  for o in range(gn):
    k = o % n
    first, second = (k, n + k) if pairing == "interleave" else (2 * k, 2 * k + 1)
    select[0, first, o], select[1, second, o] = 1.0, 1.0
  k1 = (select[0] * pw[0] + select[1] * pw[1])[None, None]
  k3 = dw[:, :, None, :] * np.eye(gn, dtype=np.float32)
  conv = lambda x, k: jax.lax.conv_general_dilated(
      x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return conv(conv(jnp.concatenate([a, b], -1), k1), k3) + params["bias"]


@pytest.mark.parametrize("pairing", ["concat", "interleave"])
def test_light_conv_equals_sparse_dense_reference(pairing):
  a, b = _inputs()
  layer = LightGateConv(N, G, pairing=pairing)
  params = layer.init(jax.random.PRNGKey(1), a, b)["params"]
  params = dict(params, bias=jax.random.normal(jax.random.PRNGKey(2), (G * N,)))
  out = layer.apply({"params": params}, a, b)
  assert out.shape == (2, 5, 7, G * N)
  np.testing.assert_allclose(out, dense_reference(params, a, b, pairing), atol=1e-5)


@pytest.mark.parametrize("pairing", ["concat", "interleave"])
def test_light_conv_gradients_equal_dense_reference(pairing):
  """Gradients for both inputs and every parameter, at a random cotangent."""
  a, b = _inputs(7)
  layer = LightGateConv(N, G, pairing=pairing)
  params = layer.init(jax.random.PRNGKey(1), a, b)["params"]
  cotangent = jax.random.normal(jax.random.PRNGKey(3), (2, 5, 7, G * N))
  loss = lambda f: lambda p, a, b: jnp.vdot(f(p, a, b), cotangent)
  got = jax.grad(loss(lambda p, a, b: layer.apply({"params": p}, a, b)), (0, 1, 2))(
      params, a, b)
  want = jax.grad(loss(lambda p, a, b: dense_reference(p, a, b, pairing)), (0, 1, 2))(
      params, a, b)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)


def test_interleave_is_the_default_pairing():
  assert LightGateConv(N).pairing == "interleave"


def test_light_conv_weight_count_is_11n_per_gate_plus_bias():
  a, b = _inputs()
  params = LightGateConv(N, G).init(jax.random.PRNGKey(1), a, b)["params"]
  assert sum(p.size for p in jax.tree.leaves(params)) == G * (11 * N + N)
  no_bias = LightGateConv(N, G, use_bias=False).init(jax.random.PRNGKey(1), a, b)["params"]
  assert set(no_bias) == {"pointwise", "depthwise"}
  dense = DenseGateConv(N, G, use_bias=False).init(jax.random.PRNGKey(1), a, b)
  assert sum(p.size for p in jax.tree.leaves(dense)) == G * 18 * N * N


def test_concat_pairing_keeps_inputs_apart():
  """Literal concat pairing: gate channels k < N/2 read only a, k >= N/2 only b."""
  a, b = _inputs()
  layer = LightGateConv(N, 1, pairing="concat")
  params = layer.init(jax.random.PRNGKey(1), a, b)
  out = layer.apply(params, a, b)
  out_b_zero = layer.apply(params, a, jnp.zeros_like(b))
  np.testing.assert_allclose(out[..., : N // 2], out_b_zero[..., : N // 2], atol=1e-6)
  assert not np.allclose(out[..., N // 2:], out_b_zero[..., N // 2:])


def _dense_gates(params, a, b):
  """A dense 3x3 gate convolution over concat([a, b]), 'SAME' zero padding."""
  return jax.lax.conv_general_dilated(
      jnp.concatenate([a, b], -1), params["conv"]["kernel"], (1, 1), "SAME",
      dimension_numbers=("NHWC", "HWIO", "NHWC")) + params["conv"]["bias"]


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
@pytest.mark.parametrize("kind", ["light", "dense3x3"])
def test_cell_equations(cell, kind):
  """One step of each cell against the equations written out with the references."""
  x, h = _inputs(3)
  c = jax.random.normal(jax.random.PRNGKey(9), x.shape)
  state = (h, c) if cell == "lstm" else (h,)
  light = kind == "light"
  module = ConvCell(N, cell, gate_conv=LightGateConv if light else DenseGateConv)

  def _gates(cell_params, name, a, b):
    if light:  # the default pairing
      return dense_reference(cell_params[name], a, b, "interleave")
    return _dense_gates(cell_params[name], a, b)

  params = module.init(jax.random.PRNGKey(4), x, state)["params"]
  params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.PRNGKey(5), p.shape),
                        params)
  h_new, new_state = module.apply({"params": params}, x, state)
  sig = jax.nn.sigmoid
  if cell == "rnn":
    want_h = jnp.tanh(_gates(params, "h", x, h))
    want_state = (want_h,)
  elif cell == "gru":
    zr = sig(_gates(params, "zr", x, h))
    z, r = zr[..., :N], zr[..., N:]
    want_h = (1 - z) * h + z * jnp.tanh(_gates(params, "h", x, r * h))
    want_state = (want_h,)
  else:
    gates = _gates(params, "ifog", x, h)
    i, f, o, g = (gates[..., k * N:(k + 1) * N] for k in range(4))
    want_c = sig(f) * c + sig(i) * jnp.tanh(g)
    want_h = sig(o) * jnp.tanh(want_c)
    want_state = (want_h, want_c)
  np.testing.assert_allclose(h_new, want_h, atol=1e-5)
  for got, want in zip(new_state, want_state, strict=True):
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_initial_state_is_zero_with_input_shape():
  x = jnp.ones((2, 4, 4, N))
  assert [s.shape for s in initial_state("lstm", x)] == [x.shape, x.shape]
  assert len(initial_state("gru", x)) == 1
  assert not np.any(initial_state("rnn", x)[0])


@pytest.mark.parametrize("cell", ["rnn", "gru", "lstm"])
def test_concat_pairing_first_step_half_constant(cell):
  """From the zero initial state, the literal concat pairing makes hidden channels >= N/2 a
  function of the parameters only (their gate pairs read only the zero state): the
  near-constant BN channels of docs/results.md. Interleave pairing has none."""
  x1, x2 = _inputs(11)
  for pairing, constant in (("concat", True), ("interleave", False)):
    module = ConvCell(N, cell, gate_conv=functools.partial(LightGateConv, pairing=pairing))
    params = module.init(jax.random.PRNGKey(4), x1, initial_state(cell, x1))
    h1, _ = module.apply(params, x1, initial_state(cell, x1))
    h2, _ = module.apply(params, x2, initial_state(cell, x2))
    assert np.allclose(h1[..., N // 2:], h2[..., N // 2:], atol=1e-6) == constant
    assert not np.allclose(h1[..., : N // 2], h2[..., : N // 2])
