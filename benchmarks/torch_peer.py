"""An independent PyTorch ResNet-20 / RegNet-20, loaded with our Flax weights: checks the model
against another framework, and times both train steps side by side.

    pip install -e ".[torch]"
    OMP_WAIT_POLICY=PASSIVE python -m benchmarks.torch_peer --models resnet20 regnet20_gru

(``OMP_WAIT_POLICY=PASSIVE``: otherwise PyTorch's idle OpenMP threads spin and slow the JAX
steps alternating with them.)

The PyTorch side is written from the paper, not from our code: each gate is a grouped 1x1
convolution (``groups=N``) over the 2N input channels, followed by a depthwise 3x3, one pair of
``Conv2d`` per gate, and PyTorch's own padding and BatchNorm. The grouped 1x1 reads
``cat([x, h])`` (``pairing='concat'``: channels 2k and 2k+1 are paired) or the channels of
``x`` and ``h`` interleaved (``'interleave'``: ``x_k`` with ``h_k``). ``port`` copies a Flax
variable tree into it. The timing alternates a JAX step and a PyTorch step (NCHW and
channels-last) on the same batch, in one process, and prints medians and ratios.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import jax
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from benchmarks.throughput import build_train_step
from regnet_jax import data, models
from regnet_jax.cpu import process as host

GATES = {"rnn": ("h",), "gru": ("z", "r", "h"), "lstm": ("i", "f", "o", "g")}


class Gate(nn.Module):
  """One light-weight gate: grouped 1x1 (groups=N) on the 2N channels of ``a`` and ``b``
  (concatenated, or interleaved: a_0, b_0, a_1, ...), then depthwise 3x3."""

  def __init__(self, n: int, pairing: str = "concat"):
    super().__init__()
    self.pairing = pairing
    self.pointwise = nn.Conv2d(2 * n, n, 1, groups=n, bias=False)
    self.depthwise = nn.Conv2d(n, n, 3, padding=1, groups=n, bias=True)

  def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if self.pairing == "interleave":
      ab = torch.stack([a, b], 2).flatten(1, 2)
    else:
      ab = torch.cat([a, b], 1)
    return self.depthwise(self.pointwise(ab))


class Cell(nn.Module):
  """ConvRNN / ConvGRU / ConvLSTM of the paper (no peepholes), NCHW."""

  def __init__(self, n: int, kind: str, pairing: str = "concat"):
    super().__init__()
    self.kind = kind
    self.gates = nn.ModuleDict({g: Gate(n, pairing) for g in GATES[kind]})

  def forward(self, x: torch.Tensor, state: tuple) -> tuple[torch.Tensor, tuple]:
    g = self.gates
    h = state[0]
    if self.kind == "rnn":
      h = torch.tanh(g["h"](x, h))
      return h, (h,)
    if self.kind == "gru":
      z, r = torch.sigmoid(g["z"](x, h)), torch.sigmoid(g["r"](x, h))
      h = (1 - z) * h + z * torch.tanh(g["h"](x, r * h))
      return h, (h,)
    i, f, o = (torch.sigmoid(g[k](x, h)) for k in "ifo")
    c = f * state[1] + i * torch.tanh(g["g"](x, h))
    h = o * torch.tanh(c)
    return h, (h, c)


def bn(n: int) -> nn.BatchNorm2d:
  return nn.BatchNorm2d(n, eps=1e-5, momentum=0.1)


class Block(nn.Module):
  """Basic block; regulated (Eq. 2) when given the stage's cell."""

  def __init__(self, cin: int, n: int, stride: int, regulated: bool):
    super().__init__()
    self.conv1, self.bn1 = nn.Conv2d(cin, n, 3, stride, 1, bias=False), bn(n)
    self.regulated = regulated
    if regulated:
      self.bn_h = bn(n)
      self.conv_fuse, self.bn_fuse = nn.Conv2d(2 * n, n, 1, bias=False), bn(n)
    self.conv2, self.bn2 = nn.Conv2d(n, n, 3, 1, 1, bias=False), bn(n)
    self.proj = None
    if stride != 1 or cin != n:
      self.proj = nn.Sequential(nn.Conv2d(cin, n, 1, stride, bias=True), bn(n))

  def forward(self, x: torch.Tensor, state: tuple | None, cell: Cell | None):
    y = F.relu(self.bn1(self.conv1(x)))
    if self.regulated:
      if state is None:
        state = (torch.zeros_like(y),) * (2 if cell.kind == "lstm" else 1)
      h, state = cell(y, state)
      h = F.relu(self.bn_h(h))
      state = (h, *state[1:])
      y = F.relu(self.bn_fuse(self.conv_fuse(torch.cat([y, h], 1))))
    y = self.bn2(self.conv2(y))
    return F.relu((x if self.proj is None else self.proj(x)) + y), state


class CifarNet(nn.Module):
  """ResNet-20 / RegNet-20 (Table II): stem 3x3x16, stages of n blocks at 16/32/64, GAP, FC."""

  def __init__(self, depth: int = 20, cell: str | None = None, num_classes: int = 10,
               pairing: str = "concat"):
    super().__init__()
    n = (depth - 2) // 6
    self.stem, self.stem_bn = nn.Conv2d(3, 16, 3, 1, 1, bias=False), bn(16)
    self.cells = nn.ModuleList([Cell(w, cell, pairing) for w in (16, 32, 64)] if cell else [])
    self.stages = nn.ModuleList()
    cin = 16
    for i, w in enumerate((16, 32, 64)):
      self.stages.append(nn.ModuleList(
          [Block(cin if b == 0 else w, w, 2 if i and b == 0 else 1, cell is not None)
           for b in range(n)]))
      cin = w
    self.fc = nn.Linear(64, num_classes)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = F.relu(self.stem_bn(self.stem(x)))
    for i, stage in enumerate(self.stages):
      state = None
      for block in stage:
        x, state = block(x, state, self.cells[i] if self.cells else None)
    return self.fc(x.mean((2, 3)))


def port(net: CifarNet, variables: dict[str, Any]) -> CifarNet:
  """Copies a Flax CIFAR ResNet/RegNet's ``params`` and ``batch_stats`` into ``net``."""
  params, stats = jax.device_get(variables["params"]), jax.device_get(variables["batch_stats"])
  t = lambda a: torch.from_numpy(np.array(a, np.float32))  # a writable copy
  conv = lambda m, p: m.weight.data.copy_(t(np.transpose(p["kernel"], (3, 2, 0, 1))))

  def norm(m: nn.BatchNorm2d, p: dict, s: dict) -> None:
    m.weight.data.copy_(t(p["scale"]))
    m.bias.data.copy_(t(p["bias"]))
    m.running_mean.copy_(t(s["mean"]))
    m.running_var.copy_(t(s["var"]))

  conv(net.stem, params["stem_conv"])
  norm(net.stem_bn, params["stem_bn"], stats["stem_bn"])
  for i, stage in enumerate(net.stages):
    p_stage, s_stage = params[f"stage{i + 1}"], stats[f"stage{i + 1}"]
    for b, block in enumerate(stage):
      pick = lambda tree, b=b: tree["block0"] if b == 0 else jax.tree.map(
          lambda a, b=b: a[b - 1], tree["blocks"])
      p, s = pick(p_stage), pick(s_stage)
      conv(block.conv1, p["conv1"])
      norm(block.bn1, p["bn1"], s["bn1"])
      conv(block.conv2, p["conv2"])
      norm(block.bn2, p["bn2"], s["bn2"])
      if block.regulated:
        norm(block.bn_h, p["regulator"]["bn_h"], s["regulator"]["bn_h"])
        conv(block.conv_fuse, p["conv_fuse"])
        norm(block.bn_fuse, p["bn_fuse"], s["bn_fuse"])
      if block.proj is not None:
        conv(block.proj[0], p["proj_conv"])
        block.proj[0].bias.data.copy_(t(p["proj_conv"]["bias"]))
        norm(block.proj[1], p["proj_bn"], s["proj_bn"])
    if net.cells:
      cell, n = net.cells[i], p_stage["block0"]["conv1"]["kernel"].shape[-1]
      # Flax stacks a cell's gates gate-major in GateConvs named by their gate letters.
      flat = {}
      for group, gp in p_stage["cell"].items():
        for g, letter in enumerate(group):
          flat[letter] = {k: v[..., g * n:(g + 1) * n] for k, v in gp.items()}
      for letter, gate in cell.gates.items():
        gp = flat[letter]
        gate.pointwise.weight.data.copy_(t(gp["pointwise"].T[:, :, None, None]))
        gate.depthwise.weight.data.copy_(t(np.transpose(gp["depthwise"], (2, 0, 1))[:, None]))
        gate.depthwise.bias.data.copy_(t(gp["bias"]))
  net.fc.weight.data.copy_(t(params["fc"]["kernel"].T))
  net.fc.bias.data.copy_(t(params["fc"]["bias"]))
  return net


def peer(name: str, variables: dict[str, Any], **overrides: Any) -> CifarNet:
  """The PyTorch twin of registered CIFAR model ``name`` (with model attribute ``overrides``,
  e.g. ``pairing``) holding its Flax variables."""
  model = models.create_model(name, 10, **overrides)
  if model.se_ratio or model.cell_conv != "light" or model.cell_sharing != "stage":
    raise ValueError(f"the PyTorch peer has no twin of {name}")
  return port(CifarNet(model.depth, model.cell, model.num_classes, model.pairing), variables)


def _median_ms(times: list[float]) -> float:
  return 1e3 * statistics.median(times)


def side_by_side(name: str, batch_size: int, steps: int, rounds: int,
                 jax_args: dict[str, Any] | None = None) -> dict[str, Any]:
  """Alternates JAX, PyTorch NCHW and PyTorch channels-last train steps on the same batch;
  ``jax_args`` are overrides of the JAX model (e.g. ``cell_impl='reference'``)."""
  _, p_train, _, state, batch = build_train_step(name, jax_args or {}, batch_size, "float32", 1)
  images, labels = np.asarray(batch["image"]), np.asarray(batch["label"])
  holder = [state]

  def jax_step():
    holder[0], metrics = p_train(holder[0], batch)
    jax.block_until_ready(metrics)

  variables = {"params": state.params, "batch_stats": state.batch_stats}
  # JAX's step normalises its uint8 batch on the device; PyTorch gets the normalised batch.
  x = torch.from_numpy(np.asarray(data.normalize(images, "cifar10"))).permute(0, 3, 1, 2)
  y = torch.from_numpy(labels).long()
  torch_steps = {}
  for layout in ("nchw", "channels_last"):
    net = peer(name, variables).train()
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    net = net.to(memory_format=fmt)
    xl = x.contiguous(memory_format=fmt)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)

    def step(net=net, xl=xl, opt=opt):
      opt.zero_grad(set_to_none=True)
      F.cross_entropy(net(xl), y).backward()
      opt.step()

    torch_steps[layout] = step
  runners = {"jax": jax_step, **{f"torch_{k}": v for k, v in torch_steps.items()}}
  times = {k: [] for k in runners}
  for fn in runners.values():  # warm-up: compile, allocate
    fn()
    fn()
  for _ in range(rounds):
    for key, fn in runners.items():
      for _ in range(steps):
        start = time.perf_counter()
        fn()
        times[key].append(time.perf_counter() - start)
  ms = {k: _median_ms(v) for k, v in times.items()}
  return {"model": name, "jax_args": ",".join(f"{k}={v}" for k, v in (jax_args or {}).items())
          or "default", "batch": batch_size, "threads": torch.get_num_threads(),
          **{f"{k}_img_s": 1e3 * batch_size / v for k, v in ms.items()},
          "jax_vs_nchw": f"{ms['torch_nchw'] / ms['jax']:.2f}x",
          "jax_vs_channels_last": f"{ms['torch_channels_last'] / ms['jax']:.2f}x"}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--models", nargs="*", default=["resnet20", "regnet20_gru", "regnet20_lstm"])
  parser.add_argument("--batch_size", type=int, default=128)
  parser.add_argument("--steps", type=int, default=3, help="timed steps per round and framework")
  parser.add_argument("--rounds", type=int, default=3, help="alternations of the frameworks")
  parser.add_argument("--jax_args", nargs="*", default=[],
                      help="JAX model overrides, e.g. cell_impl=reference")
  args = parser.parse_args()
  host.reexec_with_cpu_settings()
  from benchmarks.throughput import parse_value, print_table

  jax_args = {k: parse_value(v) for k, v in (a.split("=", 1) for a in args.jax_args)}
  rows = [side_by_side(m, args.batch_size, args.steps, args.rounds, jax_args)
          for m in args.models]
  print(f"# train step, float32, batch {args.batch_size}; jax {jax.__version__}, "
        f"torch {torch.__version__}; ratios > 1: JAX is faster")
  print_table(rows)


if __name__ == "__main__":
  main()
