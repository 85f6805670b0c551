"""The paper's CIFAR tables and the reduced protocols of docs/results.md, as sweeps:

    python -m regnet_jax.sweep run --sweep=configs/sweeps.py:table3,cifar100 --root=DIR

The argument is `TABLE[,DATASET]` (dataset default cifar10):

- `table1`: Table I, RegNet-20 ConvGRU with light-weight and with dense 3x3 gates, and
  ResNet-20, the model both add their regulator to.
- `table3`: Table III, ResNet-20 and SE-ResNet-20 with each regulator cell.
- `table4`: Table IV, ResNet-20/32/56 with ConvGRU and ConvLSTM regulators.
- `table5`: Table V, one regulator in stage 1, 2 or 3 only (ConvGRU and ConvLSTM).
- `reduced10`, `reduced20`: the 10- and 20-epoch CIFAR-10 protocols (CIFAR-10 only).

Runs with the same workdir name are the same run in every sweep: tables that share models
(Tables III and IV share ResNet-20 and RegNet-20) can share a root, and a run done for one is
skipped by the other.
"""

import ml_collections

# Each table's model entries: a model name, or MODEL-VARIANT for a row that differs in other
# fields (VARIANTS).
TABLES = {
    "table1": ["resnet20", "regnet20_gru", "regnet20_gru-dense3x3"],
    "table3": ["resnet20", "regnet20_rnn", "regnet20_gru", "regnet20_lstm",
               "se_resnet20", "se_regnet20_rnn", "se_regnet20_gru", "se_regnet20_lstm"],
    "table4": [f"{net}{depth}{cell}" for depth in (20, 32, 56)
               for net, cell in (("resnet", ""), ("regnet", "_gru"), ("regnet", "_lstm"))],
    "table5": ["resnet20"] + [f"regnet20_{cell}-stage{stage}" for cell in ("gru", "lstm")
                              for stage in (1, 2, 3)],
}
# The reduced protocols' models: those docs/results.md compares under each.
REDUCED = {
    "reduced10": ["resnet20", "regnet20_rnn", "regnet20_gru", "regnet20_lstm"],
    "reduced20": ["resnet20", "regnet20_gru"],
}
# The variants' fields, nested like the config: Table I's dense gates, Table V's single stage.
VARIANTS = {
    "dense3x3": {"model_args": {"cell_conv": "dense3x3"}},
    **{f"stage{stage}": {"model_args": {"regulated_stages": (stage,)}} for stage in (1, 2, 3)},
}
PAPER_SEEDS = [0, 1, 2]  # The paper does not say; three give a mean and its standard error.
REDUCED_SEEDS = [0, 1]  # Two, as docs/results.md has them.


def get_sweep(arg: str = "table3") -> ml_collections.ConfigDict:
  table, _, dataset = arg.partition(",")
  dataset = dataset or "cifar10"
  if table not in TABLES and table not in REDUCED:
    raise ValueError(f"unknown sweep {table!r}; choose one of "
                     f"{', '.join([*TABLES, *REDUCED])} (then ',cifar100' for CIFAR-100)")
  if dataset not in ("cifar10", "cifar100") or (table in REDUCED and dataset != "cifar10"):
    raise ValueError(f"{table} runs on {'cifar10' if table in REDUCED else 'cifar10 or cifar100'}"
                     f", not {dataset!r}")
  sweep = ml_collections.ConfigDict()
  # The main.py config of every run; {model} is each run's model.
  sweep.config = (f"configs/cifar10_{table}.py:{{model}}" if table in REDUCED
                  else f"configs/cifar.py:{{model}},{dataset}")
  sweep.models = TABLES.get(table) or REDUCED[table]  # Model entries, each a row of the table.
  sweep.variants = VARIANTS  # The fields of each MODEL-VARIANT entry.
  sweep.seeds = REDUCED_SEEDS if table in REDUCED else PAPER_SEEDS  # Every entry with each seed.
  sweep.overrides = {}  # Fields set for every run (the command line's --set.FIELD=VALUE adds).
  return sweep
