"""The convolution with the swapped or compiled kernel gradient equals lax's convolution and its
autodiff."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from regnet_jax.cpu import conv

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
    # The compiled kernel's own paths: output channels in chunks of 64, 32, 16 and a remainder,
    # input channels in blocks and a remainder, a negative padding, batch 1 and a batch that
    # does not split evenly over the threads, and a kernel large enough that the threads' partial
    # sums are added in parallel.
    ((3, 6, 7, 19), (3, 3, 19, 117), ((1, 1), (1, 1)), (1, 1)),
    ((1, 5, 4, 33), (3, 3, 33, 48), ((1, 1), (1, 1)), (1, 1)),
    ((2, 6, 6, 4), (3, 3, 4, 16), ((1, -1), (0, 1)), (1, 1)),
    ((2, 3, 3, 256), (3, 3, 256, 256), ((1, 1), (1, 1)), (1, 1)),  # partials summed in parallel
]


@pytest.mark.parametrize("impl,dtype,tol", [("swapped", jnp.float64, 1e-12),
                                            ("kernel", jnp.float32, 1e-5)])
@pytest.mark.parametrize("x_shape,k_shape,padding,strides", CASES)
def test_kernel_gradient_equals_float64_autodiff(x_shape, k_shape, padding, strides, impl, dtype,
                                                 tol):
  """Against float64 autodiff of lax's convolution: ``'swapped'`` computed in float64, exact;
  the compiled kernel in float32, to float32 rounding of sums of up to ~200 terms."""
  with jax.enable_x64():
    x = jax.random.normal(jax.random.PRNGKey(0), x_shape, jnp.float64)
    kernel = jax.random.normal(jax.random.PRNGKey(1), k_shape, jnp.float64)
    y, vjp = jax.vjp(lambda k: _lax_conv(x, k, padding, strides), kernel)
    dy = jax.random.normal(jax.random.PRNGKey(2), y.shape, jnp.float64)
    expected, = vjp(dy)
    got = conv.kernel_gradient(x.astype(dtype), dy.astype(dtype), k_shape[:2], padding, strides,
                               impl)
  assert got.shape == k_shape and got.dtype == dtype
  np.testing.assert_allclose(got, expected, rtol=tol, atol=tol)


def test_compiled_kernel_gradient_wants_float32():
  x = jnp.ones((1, 4, 4, 2), jnp.bfloat16)
  with pytest.raises(ValueError, match=r"conv_grad='kernel' computes in float32.*'swapped'"):
    conv.kernel_gradient(x, x, (3, 3), ((1, 1), (1, 1)), impl="kernel")


@pytest.mark.parametrize("kernel_grad", conv.KERNEL_GRADS)
@pytest.mark.parametrize("x_shape,k_shape,padding,strides", CASES)
def test_conv_and_its_gradients_equal_lax(x_shape, k_shape, padding, strides, kernel_grad):
  x = jax.random.normal(jax.random.PRNGKey(0), x_shape)
  kernel = jax.random.normal(jax.random.PRNGKey(1), k_shape)

  def loss(conv_fn, x, kernel):
    return jnp.sum(jnp.sin(conv_fn(x, kernel, strides, padding, dimension_numbers=NHWC)))

  ours = conv.flax_conv(kernel_grad).keywords["conv_general_dilated"]
  np.testing.assert_array_equal(ours(x, kernel, strides, padding, dimension_numbers=NHWC),
                                _lax_conv(x, kernel, padding, strides))
  got = jax.grad(loss, (1, 2))(ours, x, kernel)
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
