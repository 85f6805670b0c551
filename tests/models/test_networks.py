"""Networks and the registry: exact parameter counts, scan == Python loop, BN modes,
gradients, errors."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from regnet_jax import models
from regnet_jax.models.cells import initial_state
from regnet_jax.models.counts import count_params
from regnet_jax.models.stage import Stage

# Every registered model's parameter count (CIFAR models with 10 classes, ImageNet with 1000).
# The counts marked "derived" are derived by hand from the layer shapes (docs/model.md); the
# others are pinned from `python -m regnet_jax.analysis.summary`.
PARAMS = {
    "resnet20": 272_570,  # derived
    "se_resnet20": 276_602,  # derived
    "regnet20_rnn": 272_570 + 34_944,  # derived
    "se_regnet20_rnn": 311_546,  # derived
    "regnet20_gru": 272_570 + 37_632,  # derived
    "se_regnet20_gru": 314_234,  # derived
    "regnet20_lstm": 272_570 + 38_976,  # derived
    "se_regnet20_lstm": 315_578,  # derived
    "resnet32": 467_002,  # derived
    "se_resnet32": 473_722,
    "regnet32_rnn": 467_002 + 57_344,  # derived
    "se_regnet32_rnn": 531_066,
    "regnet32_gru": 467_002 + 60_032,  # derived
    "se_regnet32_gru": 533_754,
    "regnet32_lstm": 467_002 + 61_376,  # derived
    "se_regnet32_lstm": 535_098,
    "resnet56": 855_866,  # derived
    "se_resnet56": 867_962,
    "regnet56_rnn": 855_866 + 102_144,  # derived
    "se_regnet56_rnn": 970_106,
    "regnet56_gru": 855_866 + 104_832,  # derived
    "se_regnet56_gru": 972_794,
    "regnet56_lstm": 855_866 + 106_176,  # derived
    "se_regnet56_lstm": 974_138,
    "resnet50": 25_557_032,  # derived (torchvision)
    "resnet101": 44_549_160,  # torchvision
    "se_resnet50": 28_088_024,  # SENet r=16 with FC biases (timm seresnet50)
    "regnet50": 28_133_160,  # derived: 28.1-28.3M
    "se_regnet50": 30_664_152,
}


def _size(name):
  return models.get_spec(name).image_size


def _init(model, x):
  """Jitted ``model.init`` (eager initialisation dispatches op by op and is slow). The 'rbg'
  PRNG compiles about twice as fast as the default threefry on CPU."""
  rng = jax.random.key(0, impl="rbg")
  return jax.jit(lambda rng, x: model.init(rng, x, train=False))(rng, x)


def _apply(model, variables, x, train, mutable=False):
  """Jitted ``model.apply`` (eager flax is slow to dispatch); returns logits only."""
  fn = jax.jit(lambda v, x: model.apply(v, x, train=train, mutable=mutable))
  out = fn(variables, x)
  return out[0] if mutable else out


def test_every_registered_model_has_a_pinned_count():
  assert set(models.list_models()) == set(PARAMS)


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_param_count(name):
  classes = 10 if _size(name) == 32 else 1000
  assert count_params(models.create_model(name, classes), _size(name)) == PARAMS[name]


def test_cifar100_counts():
  assert count_params(models.create_model("resnet20", 100), 32) == 278_420
  assert count_params(models.create_model("resnet32", 100), 32) == 472_852
  assert count_params(models.create_model("resnet56", 100), 32) == 861_716
  inc = count_params(models.create_model("regnet20_gru", 100), 32) - 278_420
  assert inc == 37_632  # the regulator does not depend on the class count


@pytest.mark.parametrize("cell,increment", [("rnn", 37_632), ("gru", 45_696), ("lstm", 49_728)])
def test_per_block_cell_increments(cell, increment):
  model = models.create_model(f"regnet20_{cell}", 10, cell_sharing="block")
  assert count_params(model, 32) - 272_570 == increment


def test_table_one_variants():
  """Dense 3x3 gates: 18N^2 per gate (+N bias); notes' +323.9K is without gate biases."""
  dense = models.create_model("regnet20_gru", 10, cell_conv="dense3x3", cell_bias=False)
  assert count_params(dense, 32) - 272_570 == 323_904
  dense_b = models.create_model("regnet20_gru", 10, cell_conv="dense3x3")
  assert count_params(dense_b, 32) - 272_570 == 323_904 + 3 * (16 + 32 + 64)


def test_table_five_single_stage_regulators():
  """Table V: the three single-stage increments add up to the full regulator's."""
  full = count_params(models.create_model("regnet20_gru", 10), 32) - 272_570
  parts = [count_params(models.create_model("regnet20_gru", 10, regulated_stages=(s,)), 32)
           - 272_570 for s in (1, 2, 3)]
  assert sum(parts) == full
  assert parts == sorted(parts)  # wider stages cost more
  assert round((272_570 + parts[0]) / 1e6, 3) == 0.275  # notes' prediction for stage 1


def test_option_a_shortcut_is_parameter_free():
  model = models.create_model("resnet20", 10, shortcut="A")
  assert count_params(model, 32) == 272_570 - (16 * 32 + 32 + 64) - (32 * 64 + 64 + 128)


def test_shared_cell_params_live_once_per_stage():
  model = models.create_model("regnet20_gru", 10)
  v = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)),
                                        train=False))
  cell = v["params"]["stage2"]["cell"]
  assert cell["zr"]["pointwise"].shape == (2, 2 * 32)
  block = models.create_model("regnet20_gru", 10, cell_sharing="block")
  v = jax.eval_shape(lambda: block.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)),
                                        train=False))
  assert v["params"]["stage2"]["cell"]["zr"]["pointwise"].shape == (3, 2, 2 * 32)
  # The scanned blocks stack their own (non-cell) parameters along a leading axis of n-1.
  assert v["params"]["stage2"]["blocks"]["conv1"]["kernel"].shape == (2, 3, 3, 32, 32)


def _loop_stage(next_fun, args, kwargs, context):
  """Interceptor: runs a Stage as a plain Python loop over its blocks (no nn.scan)."""
  stage = context.module
  if not isinstance(stage, Stage) or context.method_name != "__call__":
    return next_fun(*args, **kwargs)
  (x,) = args
  variables = stage.variables
  params = variables["params"]
  cell_params = params.get("cell")
  regulated = cell_params is not None
  per_block = regulated and stage.cell_sharing == "block"
  state = None if regulated else ()
  for i in range(stage.num_blocks):
    if i == 0:
      block_vars = {c: v["block0"] for c, v in variables.items()}
    else:
      block_vars = {c: jax.tree.map(lambda a, i=i: a[i - 1], v["blocks"])
                    for c, v in variables.items() if "blocks" in v}
    cp = jax.tree.map(lambda a, i=i: a[i], cell_params) if per_block else cell_params
    block = stage.block_cls(strides=stage.strides if i == 0 else 1, parent=None,
                            **stage.block_args)
    (x, state), _ = block.apply(block_vars, (x, state), cp, mutable=["batch_stats"])[0]
    if regulated and i == 0:
      assert state is not None and state[0].shape[-1] == stage.block_args["features"]
  return x


@pytest.mark.parametrize("name,overrides,train", [
    ("regnet20_lstm", {}, False),
    ("se_regnet20_gru", {"cell_sharing": "block"}, True),
    ("regnet20_rnn", {"carry_normed_h": False, "pairing": "interleave"}, True),
    ("resnet20", {}, False),
    ("regnet50", {"layers": (1, 3, 1, 2)}, False),
    ("se_regnet50", {"layers": (2, 1, 1, 1), "stride_on": "1x1"}, True),
])
def test_scan_equals_python_loop(name, overrides, train):
  model = models.create_model(name, 10, **overrides)
  size = 64 if models.get_spec(name).image_size == 224 else 32  # >= 2x2 px in the last stage
  x = jax.random.normal(jax.random.PRNGKey(1), (4, size, size, 3))
  variables = _init(model, x)
  # Random batch statistics so that eval mode is not the identity normalisation.
  variables = dict(variables, batch_stats=jax.tree.map(
      lambda s: s + jax.random.uniform(jax.random.PRNGKey(2), s.shape), variables["batch_stats"]))
  scanned = _apply(model, variables, x, train, mutable=["batch_stats"])
  with nn.intercept_methods(_loop_stage):
    looped = _apply(model, variables, x, train, mutable=["batch_stats"])
  np.testing.assert_allclose(scanned, looped, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("overrides", [{"scan_unroll": 1}, {"scan_unroll": 2}])
def test_execution_switches_do_not_change_results(overrides):
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 16, 16, 3))
  base = models.create_model("regnet20_gru", 10)
  variables = _init(base, x)
  other = models.create_model("regnet20_gru", 10, **overrides)
  want = _apply(base, variables, x, True, mutable=["batch_stats"])
  got = _apply(other, variables, x, True, mutable=["batch_stats"])
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_train_mode_updates_batch_stats_and_eval_does_not():
  model = models.create_model("regnet20_lstm", 10)
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 16, 16, 3)) + 3.0
  variables = _init(model, x)
  _, updates = jax.jit(lambda v: model.apply(v, x, train=True, mutable=["batch_stats"]))(
      variables)
  old, new = variables["batch_stats"], updates["batch_stats"]
  changed = jax.tree.map(lambda a, b: bool(np.any(a != b)), old, new)
  assert all(jax.tree.leaves(changed))  # every BN, the per-block BN of H included
  # momentum 0.9: new mean = 0.9 * 0 + 0.1 * batch mean of the stem BN input
  assert np.all(np.abs(new["stem_bn"]["mean"]) > 0)
  _, eval_updates = jax.jit(lambda v: model.apply(v, x, train=False, mutable=["batch_stats"]))(
      variables)
  jax.tree.map(np.testing.assert_array_equal, eval_updates["batch_stats"], old)


def test_regulator_changes_the_output():
  """The regulator is wired in: zeroing the cell's output gate changes the logits."""
  model = models.create_model("regnet20_lstm", 10)
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 16, 16, 3))
  v = _init(model, x)
  base = _apply(model, v, x, False)
  params = jax.tree_util.tree_map_with_path(
      lambda path, p: p * 0 if "cell" in jax.tree_util.keystr(path) else p, v["params"])
  assert not np.allclose(_apply(model, dict(v, params=params), x, False), base)


def _finite_grads(model, size):
  x = jax.random.normal(jax.random.PRNGKey(1), (2, size, size, 3))
  v = _init(model, x)

  def loss(p):
    logits, _ = model.apply(dict(v, params=p), x, train=True, mutable=["batch_stats"])
    return -jnp.mean(jax.nn.log_softmax(logits)[:, 0])

  grads = jax.jit(jax.grad(loss))(v["params"])
  leaves = jax.tree_util.tree_leaves_with_path(grads)
  assert all(np.all(np.isfinite(g)) for _, g in leaves)
  return {jax.tree_util.keystr(k): g for k, g in leaves}


# Every architecture of the registry: depth 32/56 variants share the depth-20 code exactly.
ARCHITECTURES = sorted(n for n in PARAMS if not any(d in n for d in ("32", "56")))


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_gradients_finite(name):
  # Shallow variants, small inputs and rolled scans keep compile time low; same code paths.
  small = dict(layers=(1, 2, 1, 1)) if _size(name) == 224 else dict(depth=14)
  model = models.create_model(name, 10, scan_unroll=1, **small)
  grads = _finite_grads(model, 32 if _size(name) == 224 else 16)
  cell_grads = [g for k, g in grads.items() if "'cell'" in k]
  assert bool(cell_grads) == ("regnet" in name)
  assert all(np.any(g != 0) for g in cell_grads)  # gradients reach the shared cell


def test_bfloat16_compute_keeps_float32_params_and_stats():
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 16, 16, 3))
  f32 = models.create_model("regnet20_gru", 10)
  bf16 = models.create_model("regnet20_gru", 10, dtype=jnp.bfloat16)
  v = _init(bf16, x)
  assert {p.dtype for p in jax.tree.leaves(v)} == {jnp.dtype("float32")}
  logits, upd = jax.jit(lambda v: bf16.apply(v, x, train=True, mutable=["batch_stats"]))(v)
  assert logits.dtype == jnp.float32
  assert {p.dtype for p in jax.tree.leaves(upd)} == {jnp.dtype("float32")}
  want = _apply(f32, v, x, True, mutable=["batch_stats"])
  np.testing.assert_allclose(logits, want, atol=0.15 * float(jnp.abs(want).max()))


@pytest.mark.parametrize("stride_on", ["3x3", "1x1"])
def test_bottleneck_shapes_and_pooled_state(stride_on):
  model = models.create_model("regnet50", 5, layers=(1, 2, 1, 1), stride_on=stride_on)
  x = jnp.ones((2, 64, 64, 3))
  v = _init(model, x)
  logits, inter = jax.jit(lambda v: model.apply(v, x, train=False, mutable=["intermediates"]))(v)
  assert logits.shape == (2, 5)
  hidden = inter["intermediates"]["stage2"]["blocks"]["hidden"][0]
  assert hidden.shape == (1, 2, 8, 8, 128)  # scanned steps, batch, 64/4/2 px, N
  out = inter["intermediates"]["stage4"]["block0"]["features"][0]
  assert out.shape == (2, 2, 2, 2048)


@pytest.mark.parametrize("name,overrides,match", [
    ("regnet21_gru", {}, "unknown model 'regnet21_gru'; did you mean regnet32_gru, regnet20_gru or "
     "regnet56_gru\\? `python -m regnet_jax.analysis.summary` lists every model"),
    ("resnet20", {"depth": 21}, "depth=21 is not valid .* 6n\\+2"),
    ("resnet20", {"cell": "transformer"}, "cell='transformer' is not valid; choose one of rnn"),
    ("regnet20_gru", {"regulated_stages": (4,)}, "regulated_stages entry=4 .* one of 1, 2, 3"),
    ("regnet20_gru", {"cell_sharing": "layer"}, "choose one of stage, block"),
    ("regnet50", {"stride_on": "7x7"}, "stride_on='7x7' is not valid"),
    ("resnet20", {"widht": 3}, "unknown attribute\\(s\\) widht .* valid attributes: "),
    ("resnet20", {"num_classes": 0}, "num_classes must be a positive integer"),
    ("resnet20", {"pairing": "zip"}, "pairing='zip' is not valid; choose one of concat"),
])
def test_bad_arguments_raise_value_error_naming_choices(name, overrides, match):
  kwargs = {"num_classes": 10, **overrides}
  with pytest.raises(ValueError, match=match):
    models.create_model(name, **kwargs)


def test_zero_initial_state_per_stage():
  """The first block of every stage starts from a zero state: equivalently, a GRU with all
  gate parameters zero gives z = 1/2, h~ = tanh(0) = 0, so H = 0.5 * 0 + 0.5 * 0 = 0."""
  model = models.create_model("regnet20_gru", 10)
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 16, 16, 3))
  v = _init(model, x)
  params = jax.tree_util.tree_map_with_path(
      lambda path, p: p * 0 if "cell" in jax.tree_util.keystr(path) else p, v["params"])
  _, inter = jax.jit(lambda v: model.apply(v, x, train=False, mutable=["intermediates"]))(
      dict(v, params=params))
  for stage in ("stage1", "stage2", "stage3"):
    h = inter["intermediates"][stage]["block0"]["hidden"][0]
    bn = v["batch_stats"][stage]["block0"]["regulator"]["bn_h"]
    # H = ReLU(BN(0)) = ReLU(-mean / sqrt(var + eps) * scale + bias) = 0 at init.
    np.testing.assert_allclose(h, 0.0 * h)
    assert bn["mean"].shape == (h.shape[-1],)
  assert initial_state("gru", h)[0].shape == h.shape
