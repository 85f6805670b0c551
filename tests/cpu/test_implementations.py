"""The CPU implementations behind the models' module slots: chosen once, outside tracing, and
equal to the pure-JAX reference."""

import functools
import logging

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from regnet_jax import cpu, models
from regnet_jax.cpu import kernels
from regnet_jax.cpu.cell import KernelConvCell
from regnet_jax.models.cells import ConvCell
from regnet_jax.train import factory


def _init(model, x):
  return jax.jit(lambda rng, x: model.init(rng, x, train=False))(jax.random.PRNGKey(0), x)


def test_auto_on_cpu_picks_the_gate_kernels_and_the_swapped_gradient():
  chosen = cpu.implementations()
  assert chosen["cell_cls"] is KernelConvCell
  assert chosen["conv"].keywords["conv_general_dilated"].keywords == {"kernel_grad": "swapped"}
  assert "cell_cls" not in cpu.implementations(dtype=jnp.bfloat16)  # the kernels are float32
  assert "cell_cls" not in cpu.implementations(cell_conv="dense3x3")  # and light-weight
  assert cpu.implementations("reference", "reference") == {}


def test_auto_falls_back_to_the_reference_where_the_kernels_do_not_build(no_compiler, caplog):
  with caplog.at_level(logging.WARNING):
    chosen = cpu.implementations()
  assert "cell_cls" not in chosen
  assert "no-such-compiler-xyz" in caplog.text and "pure-JAX reference" in caplog.text
  with pytest.raises(ValueError, match=r"cell_impl='kernel': the CPU kernels do not build here.*"
                     r"use cell_impl='reference'"):
    cpu.implementations(cell_impl="kernel")


@pytest.mark.parametrize("args,match", [
    (dict(cell_impl="fast"), "cell_impl='fast' is not valid; choose one of auto, reference"),
    (dict(conv_grad="lax"), "conv_grad='lax' is not valid; choose one of auto, reference"),
    (dict(cell_impl="kernel", dtype=jnp.bfloat16), "float32, not bfloat16: use cell_impl="),
    (dict(cell_impl="kernel", cell_conv="dense3x3"), "light-weight gates.*cell_impl='reference'"),
    (dict(conv_grad="kernel", dtype=jnp.bfloat16), "float32, not bfloat16: use conv_grad="),
])
def test_bad_choices_are_clear_errors(args, match):
  with pytest.raises(ValueError, match=match):
    cpu.implementations(**args)


def test_model_init_never_builds_the_kernels(no_compiler, caplog):
  """The reference is what `create_model` builds, on every backend: no compiler is looked for
  while a model is initialised or traced."""
  model = models.create_model("regnet20_gru", 10, depth=8)
  assert model.cell_cls is ConvCell
  with caplog.at_level(logging.WARNING):
    _init(model, jnp.zeros((1, 8, 8, 3)))
  assert not caplog.text and not kernels.builds.cache_info().currsize


@pytest.mark.parametrize("name,overrides", [("regnet20_gru", {}),
                                            ("regnet20_lstm", {"pairing": "interleave"}),
                                            ("se_regnet20_rnn", {"cell_sharing": "block"})])
def test_kernel_model_loss_and_gradients_equal_the_reference(name, overrides):
  """A whole RegNet, train mode: the CPU implementations (gate kernels, swapped kernel
  gradients) give the reference's parameter tree, loss and every gradient."""
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 16, 16, 3))
  reference = models.create_model(name, 10, depth=8, **overrides)
  fast = factory.implement(models.create_model(name, 10, depth=8, **overrides))
  assert fast.cell_cls is KernelConvCell
  variables = _init(reference, x)
  assert jax.tree.structure(_init(fast, x)) == jax.tree.structure(variables)

  def grads(model):
    def loss(params):
      logits, _ = model.apply(dict(variables, params=params), x, train=True,
                              mutable=["batch_stats"])
      return jnp.sum(jax.nn.log_softmax(logits)[:, 0])
    return jax.jit(jax.value_and_grad(loss))(variables["params"])

  (loss_k, grad_k), (loss_r, grad_r) = grads(fast), grads(reference)
  np.testing.assert_allclose(loss_k, loss_r, rtol=1e-5)
  for k, r in zip(jax.tree.leaves(grad_k), jax.tree.leaves(grad_r), strict=True):
    np.testing.assert_allclose(k, r, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("make,size", [
    (lambda conv: models.create_model("regnet20_gru", 10, **conv), 8),
    (lambda conv: models.create_model("regnet20_gru", 10, cell_conv="dense3x3", **conv), 8),
    # The ImageNet layout (7x7/2 stem, strided 3x3s, 1x1 projections), narrow and shallow.
    (lambda conv: models.ImageNetResNet(10, cell="lstm", widths=(4, 4, 4, 4),
                                        layers=(1, 1, 1, 1), **conv), 64),
])
def test_swapped_and_kernel_conv_gradients_equal_autodiff(make, size):
  """``conv_grad='swapped'`` and ``'kernel'`` (every dense convolution: stems, strided, 1x1
  projections and fusions, dense gates) give the reference's loss and every gradient, up to
  rounding."""
  x = jax.random.normal(jax.random.PRNGKey(1), (2, size, size, 3))
  labels = jnp.array([1, 2])
  variables = _init(make({}), x)
  results = []
  for grad in ("reference", "swapped", "kernel"):
    model = make(cpu.implementations("reference", grad))

    def loss(params, model=model):
      logits, _ = model.apply({**variables, "params": params}, x, train=True,
                              mutable=["batch_stats"])
      return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1))

    results.append(jax.jit(jax.value_and_grad(loss))(variables["params"]))
  (want_loss, want), *others = results
  for got_loss, got in others:
    np.testing.assert_allclose(got_loss, want_loss, rtol=1e-6)
    # float32 sums over batch x pixels in another order: compare relative to each tensor's
    # scale (the kernel gradients themselves are checked in float64: test_conv.py).
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5 * np.abs(b).max()),
                 got, want)


def test_float32_gradients_equal_float64():
  """The whole network's train-mode gradient as training computes it on a CPU (float32: the
  C++ cell kernels, the swapped kernel gradients, XLA's fused code) against float64 (the pure
  reference): an independent check of every custom gradient and of how XLA:CPU compiles the
  network (jaxlib 0.10.2's YNNPACK fusions miscompile some reductions, jax-ml/jax#39103). At
  depth 20 the worst layer is 1.3e-5 (benchmarks/float64_check.py); 1% wrong in any layer
  fails. Not the ConvGRU: at init its gradient is ill-conditioned (parameters moved by 1e-7 in
  float64 move it ~1%)."""
  model = functools.partial(models.create_model, "regnet20_lstm", 10, depth=14)
  x = np.asarray(jax.random.normal(jax.random.PRNGKey(1), (4, 32, 32, 3)))
  labels = np.array([0, 3, 7, 9])
  v = jax.tree.map(np.asarray, _init(model(), x))  # outside x64, whose init draws differ

  def grads(net, dtype):
    cast = lambda a: jnp.asarray(a, dtype)

    def loss(params):
      logits, _ = net.apply({"params": params, "batch_stats": jax.tree.map(cast, v["batch_stats"])},
                            cast(x), train=True, mutable=["batch_stats"])
      return optax.softmax_cross_entropy_with_integer_labels(cast(logits), labels).mean()

    g = jax.jit(jax.grad(loss))(jax.tree.map(cast, v["params"]))
    return {jax.tree_util.keystr(k): np.asarray(a, np.float64)
            for k, a in jax.tree_util.tree_leaves_with_path(g)}

  g32 = grads(model(**cpu.implementations(conv_grad="kernel")), jnp.float32)
  with jax.enable_x64():
    g64 = grads(model(dtype=jnp.float64), jnp.float64)
  scale = max(np.abs(g).max() for g in g64.values())
  for k, want in g64.items():
    if np.abs(want).max() < 1e-9 * scale:  # a conv bias followed by BN: exactly zero
      np.testing.assert_allclose(g32[k], 0, atol=1e-6 * scale, err_msg=k)
    else:
      assert np.linalg.norm(g32[k] - want) < 1e-4 * np.linalg.norm(want), k
