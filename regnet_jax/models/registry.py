"""The model registry: names (``'resnet20'``, ``'regnet20_gru'``, ``'regnet50'``, ...) mapped to
``functools.partial`` presets of the networks, and :func:`create_model`."""

from __future__ import annotations

import dataclasses
import difflib
import functools
from collections.abc import Callable
from typing import Any

from regnet_jax.models.cells import CELL_TYPES
from regnet_jax.models.networks import CifarResNet, ImageNetResNet, Network


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """A registry entry: the preset and the input resolution it is built for."""

  factory: Callable[..., Network]
  image_size: int


def _registry() -> dict[str, ModelSpec]:
  """CIFAR presets at depths 20/32/56 (SE blocks: r = 8 without FC biases, the paper's CIFAR
  setting) and the ImageNet ones (SENet's r = 16 with biases). The paper does not name
  RegNet-50's cell; its bottleneck equation writes a ConvLSTM, so that is RegNet-50's."""
  models = {}
  for depth in (20, 32, 56):
    base = functools.partial(CifarResNet, depth=depth)
    models[f"resnet{depth}"] = ModelSpec(base, 32)
    models[f"se_resnet{depth}"] = ModelSpec(functools.partial(base, se_ratio=8), 32)
    for cell in CELL_TYPES:
      models[f"regnet{depth}_{cell}"] = ModelSpec(functools.partial(base, cell=cell), 32)
      models[f"se_regnet{depth}_{cell}"] = ModelSpec(
          functools.partial(base, cell=cell, se_ratio=8), 32)
  for layers, depth in (((3, 4, 6, 3), 50), ((3, 4, 23, 3), 101)):
    models[f"resnet{depth}"] = ModelSpec(functools.partial(ImageNetResNet, layers=layers), 224)
  se = dict(se_ratio=16, se_bias=True)
  for name, args in (("se_resnet50", se), ("regnet50", dict(cell="lstm")),
                     ("se_regnet50", dict(cell="lstm", **se))):
    models[name] = ModelSpec(functools.partial(models["resnet50"].factory, **args), 224)
  return models


MODELS: dict[str, ModelSpec] = _registry()


def list_models() -> list[str]:
  """Names accepted by :func:`create_model`."""
  return list(MODELS)


def get_spec(name: str) -> ModelSpec:
  """The registry entry of ``name``; a ValueError suggesting the nearest names if unknown."""
  if name not in MODELS:
    near = difflib.get_close_matches(str(name), MODELS, n=3, cutoff=0.5)
    listed = ", ".join(near[:-1]) + " or " + near[-1] if len(near) > 1 else "".join(near)
    hint = f"did you mean {listed}? " if near else ""
    raise ValueError(f"unknown model {name!r}; {hint}`python -m regnet_jax.analysis.summary` "
                     "lists every model")
  return MODELS[name]


def create_model(name: str, num_classes: int, **overrides: Any) -> Network:
  """Builds a registered model.

  Args:
    name: a name from :func:`list_models`, e.g. ``'resnet20'``, ``'regnet20_gru'``,
      ``'se_regnet20_lstm'``, ``'resnet50'``, ``'regnet50'``.
    num_classes: classifier size.
    **overrides: any model attribute, e.g. ``cell_sharing='block'``, ``dtype=jnp.bfloat16``,
      or another implementation's ``conv`` / ``cell_cls`` module.
  Raises:
    ValueError: unknown name, unknown attribute, or an invalid value (naming the valid ones).
  """
  factory = get_spec(name).factory
  cls = factory.func
  fields = {f.name for f in dataclasses.fields(cls)} - {"parent", "name", "block_cls", "widths"}
  unknown = sorted(set(overrides) - fields)
  if unknown:
    raise ValueError(f"unknown attribute(s) {', '.join(unknown)} for model {name!r}; "
                     f"valid attributes: {', '.join(sorted(fields))}")
  return factory(num_classes=num_classes, **overrides)
