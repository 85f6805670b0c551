"""MAC counting against hand-derived counts and against XLA's cost analysis."""

import jax
import jax.numpy as jnp
import pytest

from regnet_jax import models
from regnet_jax.models import counts


def _macs(name, **overrides):
  return counts.count_macs(models.create_model(name, 10, **overrides), 32)


def test_resnet_macs_match_the_derived_counts():
  assert _macs("resnet20") == pytest.approx(40.81e6, abs=0.01e6)
  assert _macs("resnet32") == pytest.approx(69.12e6, abs=0.01e6)


@pytest.mark.parametrize("cell,increment", [("rnn", 5.66e6), ("gru", 7.56e6), ("lstm", 8.50e6)])
def test_regulator_mac_increments_match_the_derived_counts(cell, increment):
  base = _macs("resnet20")
  assert _macs(f"regnet20_{cell}") - base == pytest.approx(increment, rel=0.02)
  # Sharing changes parameters, not arithmetic.
  assert _macs(f"regnet20_{cell}", cell_sharing="block") == _macs(f"regnet20_{cell}")


def test_counter_agrees_with_xla_where_conventions_coincide():
  """Unpadded convolutions and matmuls: XLA's flops are exactly 2x our MACs."""
  x = jnp.zeros((2, 9, 9, 6))
  k = jnp.zeros((3, 3, 3, 8))  # grouped: 6 input channels in 2 groups
  w = jnp.zeros((8, 5))

  def f(x, k, w):
    y = jax.lax.conv_general_dilated(x, k, (1, 1), "VALID", feature_group_count=2,
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y.reshape(2, -1)[:, :8] @ w  # no elementwise arithmetic

  ours = counts._jaxpr_macs(jax.make_jaxpr(f)(x, k, w).jaxpr)
  assert ours == 2 * 7 * 7 * 8 * (3 * 3 * 3) + 2 * 8 * 5
  assert jax.jit(f).lower(x, k, w).compile().cost_analysis()["flops"] == 2 * ours


@pytest.mark.parametrize("name", ["resnet20", "regnet20_gru"])
def test_xla_count_is_close_to_the_conventional_count(name):
  """XLA skips the taps that fall on zero padding; for a RegNet it also counts the gates'
  elementwise work, which the conventional count leaves out."""
  model = models.create_model(name, 10)
  xla, ours = counts.xla_macs(model, 32), counts.count_macs(model, 32)
  assert 0.85 * ours < xla < 1.05 * ours
