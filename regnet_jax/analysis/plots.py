"""The results figures: Fig. 4 (test error against parameters) and the training curves, from
rows of the results table (:mod:`~regnet_jax.analysis.rows`)."""

from __future__ import annotations

from typing import Any

import numpy as np

from regnet_jax.analysis import rows as rows_lib

# The datasets' names in titles (config.dataset -> name); others are shown as they are.
DATASET_NAMES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "imagenet2012": "ImageNet",
                 "imagenette": "Imagenette"}


def default_title(rows: list[dict[str, Any]]) -> str:
  """What the rows were trained on and for how long, e.g. "CIFAR-10, 20 epochs" (each
  dataset and training length once, in order of appearance)."""
  heads = dict.fromkeys(f"{DATASET_NAMES.get(r['dataset'], r['dataset'])}, "
                        f"{rows_lib.protocol_label(r)}" for r in rows)
  return "; ".join(heads)


def _pyplot():
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  return plt


def plot_error_vs_params(rows: list[dict[str, Any]], path: str, title: str) -> None:
  """Fig. 4: test error against parameters, ours (filled) and the paper's (hollow)."""
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(6, 4))
  labels = list(dict.fromkeys(r["label"] for r in rows))  # one colour per model, all seeds
  for r in rows:
    color = f"C{labels.index(r['label']) % 10}"
    ax.scatter(r["params"] / 1e6, r["test_error"], color=color,
               label=f"{r['label']} seed {r['seed']} (ours)")
    if r["paper_error"] is not None:
      ax.scatter(r["params"] / 1e6, r["paper_error"], facecolors="none", edgecolors=color)
  ax.set_xlabel("parameters (M)")
  ax.set_ylabel("test error (%)")
  ax.set_title(title + "\nfilled: ours; hollow: the paper's 150-epoch result", fontsize=9)
  ax.legend(fontsize=7)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def _error_curve(row: dict[str, Any]) -> tuple[np.ndarray, str]:
  """The row's test error curve with precise BN where the run evaluated that way during
  training (not only at the end), else with the running averages, and which it is."""
  precise = rows_lib.history(row, "precise_bn_test_error")
  if len(precise) > 1:
    return precise, "precise BN"
  return rows_lib.history(row, "test_error"), "running"


def plot_curves(rows: list[dict[str, Any]], path: str, title: str) -> None:
  """Training loss and test error against epochs, one colour per row; a run that also
  evaluated with precise BN during training gets that test error as a dashed line."""
  plt = _pyplot()
  from matplotlib.ticker import MaxNLocator

  entries = sum(1 + (_error_curve(r)[1] == "precise BN") for r in rows)
  legend_rows = -(-entries // 3)  # the legend below the plots, three entries a line
  height = 4 + 0.18 * legend_rows
  fig, (loss_ax, err_ax) = plt.subplots(1, 2, figsize=(10, height))
  for i, r in enumerate(rows):
    name, color = f"{r['label']} (seed {r['seed']})", f"C{i % 10}"
    loss, error = rows_lib.history(r, "train_loss"), rows_lib.history(r, "test_error")
    if len(loss):  # rows kept from before curves were recorded may lack some
      loss_ax.plot(loss[:, 0], loss[:, 1], color=color, label=name)
    if len(error):
      err_ax.plot(error[:, 0], error[:, 1], marker=".", color=color, label=name)
    precise, kind = _error_curve(r)
    if kind == "precise BN":
      err_ax.plot(precise[:, 0], precise[:, 1], marker="x", linestyle="--", color=color,
                  label=name + ", precise BN")
  loss_ax.set_ylabel("training loss")
  err_ax.set_ylabel("test error (%)")
  for ax in (loss_ax, err_ax):
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(nbins=8, steps=[1, 2, 5, 10]))
    ax.grid(alpha=0.3)
  fig.legend(*err_ax.get_legend_handles_labels(), loc="lower center", ncol=3, fontsize=7,
             frameon=False)
  fig.suptitle(title, fontsize=9)
  fig.tight_layout(rect=(0, 0.18 * legend_rows / height + 0.02, 1, 1))
  fig.savefig(path, dpi=100)
  plt.close(fig)
