"""The convolution with the swapped kernel gradient equals lax's convolution and its autodiff."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from regnet_jax import conv

NHWC = ("NHWC", "HWIO", "NHWC")


def _lax_conv(x, kernel, padding, strides):
  return lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=NHWC)


# (input [B, H, W, Ci], kernel [kh, kw, Ci, Co], padding, strides): the models' 3x3 and 1x1
# convolutions at stride 1 and 2, the ImageNet stem's 7x7/2, odd sizes, uneven padding, a
# stride larger than the kernel, unequal strides and a phase that needs cropping.
CASES = [
    ((2, 8, 8, 3), (3, 3, 3, 5), ((1, 1), (1, 1)), (1, 1)),
    ((2, 9, 7, 4), (3, 3, 4, 6), ((1, 1), (1, 1)), (1, 1)),
    ((1, 11, 13, 3), (7, 7, 3, 4), ((3, 3), (3, 3)), (1, 1)),
    ((2, 6, 6, 2), (3, 3, 2, 3), ((0, 2), (1, 0)), (1, 1)),
    ((2, 5, 5, 3), (1, 1, 3, 2), ((0, 0), (0, 0)), (1, 1)),
    ((2, 8, 8, 3), (3, 3, 3, 5), ((1, 1), (1, 1)), (2, 2)),
    ((2, 9, 7, 4), (3, 3, 4, 6), ((1, 1), (1, 1)), (2, 2)),
    ((2, 8, 8, 3), (1, 1, 3, 5), ((0, 0), (0, 0)), (2, 2)),
    ((1, 15, 16, 3), (7, 7, 3, 4), ((3, 3), (3, 3)), (2, 2)),
    ((2, 10, 9, 2), (3, 2, 2, 3), ((2, 0), (0, 1)), (3, 2)),
    ((2, 9, 9, 2), (3, 3, 2, 3), ((0, 0), (0, 0)), (2, 2)),
    ((2, 9, 8, 2), (2, 1, 2, 3), ((0, 1), (0, 0)), (4, 3)),
]


@pytest.mark.parametrize("x_shape,k_shape,padding,strides", CASES)
def test_kernel_gradient_equals_autodiff_in_float64(x_shape, k_shape, padding, strides):
  with jax.enable_x64():
    x = jax.random.normal(jax.random.PRNGKey(0), x_shape, jnp.float64)
    kernel = jax.random.normal(jax.random.PRNGKey(1), k_shape, jnp.float64)
    y, vjp = jax.vjp(lambda k: _lax_conv(x, k, padding, strides), kernel)
    dy = jax.random.normal(jax.random.PRNGKey(2), y.shape, jnp.float64)
    expected, = vjp(dy)
    got = conv.kernel_gradient(x, dy, k_shape[:2], padding, strides)
    assert got.shape == k_shape
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("x_shape,k_shape,padding,strides", CASES)
def test_conv_and_its_gradients_equal_lax(x_shape, k_shape, padding, strides):
  x = jax.random.normal(jax.random.PRNGKey(0), x_shape)
  kernel = jax.random.normal(jax.random.PRNGKey(1), k_shape)

  def loss(conv_fn, x, kernel):
    return jnp.sum(jnp.sin(conv_fn(x, kernel, strides, padding, dimension_numbers=NHWC)))

  np.testing.assert_array_equal(
      conv.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=NHWC),
      _lax_conv(x, kernel, padding, strides))
  got = jax.grad(loss, (1, 2))(conv.conv_general_dilated, x, kernel)
  expected = jax.grad(loss, (1, 2))(lax.conv_general_dilated, x, kernel)
  np.testing.assert_array_equal(got[0], expected[0])  # the input gradient is lax's own
  np.testing.assert_allclose(got[1], expected[1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kwargs", [
    dict(feature_group_count=2), dict(rhs_dilation=(2, 2)), dict(padding="SAME"),
    dict(lhs_dilation=(2, 1)), dict(window_strides=(2, 2), rhs_dilation=(2, 1))])
def test_other_convolutions_are_lax_own(kwargs):
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 4))
  kernel = jax.random.normal(jax.random.PRNGKey(1), (3, 3, 4 // kwargs.get(
      "feature_group_count", 1), 6))
  args = dict(window_strides=(1, 1), padding=((1, 1), (1, 1)), dimension_numbers=NHWC)
  args.update(kwargs)
  f = lambda fn: jax.jit(jax.grad(lambda k: jnp.sum(jnp.sin(fn(x, k, **args)))))
  assert "custom_vjp" not in str(jax.make_jaxpr(f(conv.conv_general_dilated))(kernel))
  np.testing.assert_array_equal(f(conv.conv_general_dilated)(kernel),
                                f(lax.conv_general_dilated)(kernel))
