"""Parameter and multiply-accumulate counts of every registered model, beside the paper's.

    python -m regnet_jax.analysis.summary [--models resnet20 regnet20_gru] [--xla]

prints one table: our parameters and conventional MACs (:func:`regnet_jax.models.counts.
count_macs`, the paper's convention) beside the paper's reported parameters and FLOPs, where
the paper gives them; ``--xla`` adds XLA's count of each compiled forward pass (minutes).
"""

from __future__ import annotations

import argparse

# The paper's own numbers (Tables I, IV, V, VI, VII; CIFAR-10 models). "params" in millions.
# "+" entries are increments over the same-depth ResNet. FLOPs as printed in the paper.
PAPER = {
    "resnet20": {"params": "0.273M"},
    "regnet20_gru": {"params": "+0.04M", "flops": "+15M"},
    "regnet20_lstm": {"params": "+0.04M"},
    "regnet32_gru": {"params": "+0.06M"},
    "regnet32_lstm": {"params": "+0.07M"},
    "regnet56_gru": {"params": "+0.11M"},
    "regnet56_lstm": {"params": "+0.12M"},
    "resnet50": {"params": "26.6M", "flops": "4.14G"},
    "resnet101": {"params": "44.5M", "flops": "7.51G"},
    "se_resnet50": {"params": "26.7M", "flops": "4.14G"},
    "regnet50": {"params": "31.3M", "flops": "5.12G"},
}


def _fmt(n: float) -> str:
  return f"{n / 1e9:.3f}G" if n >= 1e9 else f"{n / 1e6:.3f}M"


def table(names: list[str], num_classes: int | None = None, xla: bool = False) -> str:
  """The summary table as text; CIFAR models get 10 classes, ImageNet ones 1000. ``xla``: also
  XLA's count (compiles every model)."""
  from regnet_jax import models
  from regnet_jax.models import counts

  header = ["model", "input", "params", "MACs", *(["XLA MACs"] if xla else []),
            "paper params", "paper \"FLOPs\" (ImageNet: MACs; CIFAR: 2 x MACs)"]
  rows = []
  for name in names:
    size = models.get_spec(name).image_size
    classes = num_classes or (10 if size == 32 else 1000)
    model = models.create_model(name, classes)
    paper = PAPER.get(name, {})
    rows.append([name, f"{size}x{size}", f"{counts.count_params(model, size):,}",
                 _fmt(counts.count_macs(model, size)),
                 *([_fmt(counts.xla_macs(model, size))] if xla else []),
                 paper.get("params", ""), paper.get("flops", "")])
  widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
  line = lambda r: "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) + " |"
  sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
  return "\n".join([line(header), sep, *map(line, rows)])


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--models", nargs="*", default=None, help="default: every model")
  parser.add_argument("--num_classes", type=int, default=None,
                      help="default: 10 for CIFAR models, 1000 for ImageNet models")
  parser.add_argument("--xla", action="store_true",
                      help="also XLA's count of each compiled forward pass (minutes)")
  args = parser.parse_args(argv)
  from regnet_jax import models  # after the flags: --help needs no JAX

  try:
    names = args.models or models.list_models()
    for name in names:
      models.get_spec(name)
  except ValueError as e:
    parser.error(str(e))
  print(table(names, args.num_classes, xla=args.xla))


if __name__ == "__main__":
  main()
