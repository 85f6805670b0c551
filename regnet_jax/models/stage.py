"""A stage: its first block, then ``nn.scan`` over the rest, the regulator's state as the carry.

A stage is its first (strided, possibly projecting) block followed by ``nn.scan`` over its
remaining, homogeneous blocks. The regulator's recurrent state is the scan carry, so the
cell runs one time step per block and starts from zeros at each stage. With
``cell_sharing='stage'`` (default) the stage owns one cell whose parameters are broadcast to
every step (an RNN); with ``'block'`` the stage owns one cell per block, stacked along a
leading axis and scanned over.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from regnet_jax.models.cells import initial_state

Array = jax.Array


class Stage(nn.Module):
  """``num_blocks`` blocks of one resolution and width; the first carries the stride.

  Attributes:
    block_cls: :class:`~regnet_jax.models.blocks.BasicBlock` or
      :class:`~regnet_jax.models.blocks.BottleneckBlock`.
    block_args: keyword arguments of every block (features, conv, norm, cell, ...).
    num_blocks: n, the number of blocks and of regulator time steps.
    strides: stride of the first block.
    cell_sharing: ``'stage'`` (one cell for all steps) or ``'block'`` (a cell per block).
    scan_unroll: scan steps per loop iteration; -1 unrolls all of them. Rolled loops of
      convolutions are much slower on XLA:CPU (but compile faster); parameters and results do
      not depend on this.
  """

  block_cls: type[nn.Module]
  block_args: dict
  num_blocks: int
  strides: int = 1
  cell_sharing: str = "stage"
  scan_unroll: int = -1

  def _cell_params(self) -> Any:
    """Creates the stage's cell parameters: one set, or ``num_blocks`` stacked ones."""
    cell = self.block_args["cell"](parent=None)
    x = jnp.zeros((1, 3, 3, cell.features), cell.dtype)
    init_one = lambda rng: cell.init(rng, x, initial_state(cell.cell, x))["params"]
    if self.cell_sharing == "block":
      return self.param("cell", lambda rng: jax.vmap(init_one)(
          jax.random.split(rng, self.num_blocks)))
    return self.param("cell", init_one)

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """``[B, H, W, C] -> [B, H/strides, W/strides, C']``. Sows its input (``'input'``) into
    the ``'intermediates'`` collection, for the feature-map analysis."""
    self.sow("intermediates", "input", x)
    regulated = self.block_args.get("cell") is not None
    params = self._cell_params() if regulated else None
    per_block = regulated and self.cell_sharing == "block"
    step = lambda i: jax.tree.map(lambda p: p[i], params) if per_block else params
    first = self.block_cls(strides=self.strides, name="block0", **self.block_args)
    carry, _ = first((x, None if regulated else ()), step(0))
    rest = self.num_blocks - 1
    if rest > 0:
      blocks = nn.scan(
          self.block_cls,
          variable_axes={"params": 0, "batch_stats": 0, "intermediates": 0},
          split_rngs={"params": True},
          in_axes=0 if per_block else nn.broadcast,
          length=rest,
          unroll=rest if self.scan_unroll < 1 else self.scan_unroll,
      )(strides=1, name="blocks", **self.block_args)
      carry, _ = blocks(carry, step(slice(1, None)))
    return carry[0]
