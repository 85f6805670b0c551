"""The summary command: every model's parameters and MACs beside the paper's."""

import pytest

from regnet_jax.analysis import summary


def test_summary_command(capsys):
  summary.main(["--models", "resnet20", "regnet20_gru"])
  out = capsys.readouterr().out
  assert "| resnet20 " in out and "272,570" in out and "40.813M" in out
  assert "310,202" in out and "+15M" in out and "XLA MACs" not in out
  summary.main(["--models", "regnet20_lstm", "--xla"])
  header, _, row = capsys.readouterr().out.splitlines()
  cells = dict(zip(*([c.strip() for c in line.split("|")] for line in (header, row)),
                   strict=True))
  assert cells["MACs"] == "49.316M"
  assert 0.95 < float(cells["XLA MACs"][:-1]) / 49.316 < 1.05


def test_summary_rejects_unknown_model(capsys):
  with pytest.raises(SystemExit):
    summary.main(["--models", "resnet21"])
  assert "unknown model 'resnet21'" in capsys.readouterr().err
