"""Our Flax models against an independent PyTorch implementation with the same weights:
eval logits within 1e-4 in float32; train-mode loss and BatchNorm statistics in float64, where
the frameworks' rounding is out of the way and only semantics can differ. (In float32 the two
train-mode losses differ by ~1e-4 relative, PyTorch's being the farther from float64.)"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from benchmarks import torch_peer  # noqa: E402
from regnet_jax import models  # noqa: E402
from regnet_jax.train import steps as train_steps  # noqa: E402


def _trained_variables(name, x, **overrides):
  """Variables with non-trivial BatchNorm statistics and gate parameters: random init, then
  running averages moved by a few train-mode forward passes."""
  model = models.create_model(name, 10, **overrides)
  variables = jax.jit(lambda: model.init(jax.random.key(3, impl="rbg"), x, train=False))()
  # Perturb every parameter so BN scales/biases and gate biases are not at their init values.
  leaves, tree = jax.tree.flatten(variables["params"])
  keys = jax.random.split(jax.random.key(4), len(leaves))
  params = tree.unflatten([p + 0.1 * jax.random.normal(k, p.shape) for p, k in zip(
      leaves, keys, strict=True)])
  stats = variables["batch_stats"]
  apply = jax.jit(lambda p, s, x: model.apply({"params": p, "batch_stats": s}, x, train=True,
                                              mutable=["batch_stats"]))
  for i in range(3):
    _, updates = apply(params, stats, x + i)
    stats = updates["batch_stats"]
  return model, {"params": params, "batch_stats": stats}


@pytest.mark.parametrize("name,overrides", [
    ("resnet20", {}), ("regnet20_rnn", {"pairing": "concat"}),
    ("regnet20_gru", {"pairing": "concat"}), ("regnet20_gru", {"pairing": "interleave"}),
    ("regnet20_lstm", {"pairing": "interleave"})])
def test_logits_and_train_loss_match_pytorch(name, overrides):
  rng = np.random.RandomState(0)
  x = rng.randn(8, 32, 32, 3).astype(np.float32)
  labels = rng.randint(0, 10, 8)
  model, variables = _trained_variables(name, x, **overrides)
  net = torch_peer.peer(name, variables, **overrides)
  xt = torch.from_numpy(x).permute(0, 3, 1, 2)

  net.eval()
  with torch.no_grad():
    ours = np.asarray(jax.jit(lambda v: model.apply(v, x, train=False))(variables))
    theirs = net(xt).numpy()
  np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)

  net = net.double().train()
  with jax.enable_x64(True), torch.no_grad():
    model64 = models.create_model(name, 10, dtype=jnp.float64, **overrides)
    v64 = jax.tree.map(lambda a: np.asarray(a, np.float64), variables)
    logits, updates = jax.jit(lambda v: model64.apply(v, x.astype(np.float64), train=True,
                                                      mutable=["batch_stats"]))(v64)
    ours_loss = float(train_steps.cross_entropy(logits, labels, 10, 0.0).mean())
    theirs_loss = float(torch.nn.functional.cross_entropy(net(xt.double()),
                                                          torch.from_numpy(labels)))
  assert ours_loss == pytest.approx(theirs_loss, rel=1e-7)
  # BatchNorm running means after one train step agree too (variances differ by design:
  # PyTorch's running variance is unbiased, Flax's biased).
  np.testing.assert_allclose(
      np.asarray(updates["batch_stats"]["stage3"]["block0"]["bn2"]["mean"]),
      net.stages[2][0].bn2.running_mean.numpy(), rtol=1e-7, atol=1e-10)


def test_no_twin_for_other_variants():
  model = models.create_model("se_regnet20_gru", 10)
  x = np.zeros((1, 32, 32, 3), np.float32)
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))
  with pytest.raises(ValueError, match="no twin of se_regnet20_gru"):
    torch_peer.peer("se_regnet20_gru", variables)


def test_comparison_detects_a_wrong_channel_pairing():
  """Negative control: the same weights read with the other pairing no longer match."""
  x = np.random.RandomState(0).randn(4, 32, 32, 3).astype(np.float32)
  model, variables = _trained_variables("regnet20_gru", x, pairing="concat")
  net = torch_peer.peer("regnet20_gru", variables, pairing="concat").eval()
  with torch.no_grad():
    theirs = net(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
  wrong = model.clone(pairing="interleave")
  ours = np.asarray(jax.jit(lambda v: wrong.apply(v, x, train=False))(variables))
  assert np.abs(ours - theirs).max() > 1e-2
