"""The benchmark harness runs and reports sane fields (numbers are never asserted)."""

import re

import numpy as np
import pytest

from benchmarks import throughput


def test_model_benchmark_fields():
  from regnet_jax import models
  from regnet_jax.models import counts

  row = throughput.benchmark_model("regnet20_gru", {"depth": 8}, batch_size=8,
                                   dtype="float32", num_devices=2, steps=1, warmup=1,
                                   peak_tflops=2.0)
  assert row["variant"] == "depth=8" and row["devices"] == 2
  assert row["train_img_s"] > 0 and row["eval_img_s"] > 0 and row["compile_s"] > 0
  macs = counts.count_macs(models.create_model("regnet20_gru", 10, depth=8), 32)
  assert row["train_tflop_s"] == pytest.approx(6 * macs * row["train_img_s"] / 1e12)
  assert row["mfu_pct"] == pytest.approx(50 * row["train_tflop_s"])
  assert row["page_faults_per_step"] >= 0 and row["sys_ms_per_step"] >= 0


def test_resident_benchmark_fields():
  row = throughput.benchmark_resident("resnet20", batch_size=8, steps=1, warmup=1,
                                      num_devices=1)
  assert row["input"] == "resident" and row["train_img_s"] > 0
  assert row["ms_per_step"] == pytest.approx(8000 / row["train_img_s"])


def test_pipeline_benchmark(tfds_dir):
  row = throughput.benchmark_pipeline("cifar10", tfds_dir, batch_size=64, batches=3)
  assert row["img_s"] > 0


def test_preprocess_benchmark_table(capsys):
  """Every variant's row, the float32 baseline as the ratios' base, and the crops' scales."""
  from benchmarks import preprocess

  preprocess.main(["--rounds", "1", "--cores", "2"])
  lines = capsys.readouterr().out.splitlines()
  assert lines[0].startswith("# 34 photos from ")
  n = len(preprocess.VARIANTS)
  rows = {line.split(" | ")[0][2:]: line.split(" | ") for line in lines[3:3 + n]}
  assert list(rows) == list(preprocess.VARIANTS)
  assert rows[preprocess.BASELINE][3] == "1.00x"
  for cells in rows.values():  # per core, x 2 cores
    assert float(cells[4].rstrip(" |").replace(",", "")) == pytest.approx(
        2 * float(cells[1]), abs=2)
  scales = [line.split(" | ") for line in lines[3 + n + 4:]]  # not shrunk, 1-2x, above 2x
  assert [cells[0] for cells in scales] == ["| at most 1 (not shrunk)", "| 1 to 2",
                                            "| above 2"]
  shares = [int(cells[1].rstrip("%")) for cells in scales]
  assert abs(sum(shares) - 100) <= 1 and shares[0] > 50  # these small photos: mostly enlarged
  assert float(scales[0][2].rstrip(" |")) < 0.01  # not shrunk: the same to rounding


def test_cli_startup_table(capsys):
  from benchmarks import cli_startup

  cli_startup.main(["--modules", "regnet_jax.analysis.summary", "--repeats", "1"])
  lines = capsys.readouterr().out.splitlines()
  assert lines[1:3] == ["| command | median s | max s | heavy imports |", "|---|---|---|---|"]
  rows = [line.split(" | ") for line in lines[3:]]
  assert [r[0] for r in rows] == ["| python -c pass", "| regnet_jax.analysis.summary --help"]
  assert all(float(r[1]) == float(r[2]) > 0 for r in rows)  # one round: median = max
  assert [r[3] for r in rows] == ["- |", "- |"]
  with pytest.raises(RuntimeError, match=r"regnet_jax\.analysis\.nothing --help failed"):
    cli_startup.run_help("regnet_jax.analysis.nothing")


def test_value_parsing():
  assert throughput.parse_value("1") == 1
  assert throughput.parse_value("0.5") == 0.5
  assert throughput.parse_value("kernel") == "kernel"
  assert throughput.parse_variants(["scan_unroll=1", "cell_impl=kernel,pairing=interleave"]) == [
      {}, {"scan_unroll": 1}, {"cell_impl": "kernel", "pairing": "interleave"}]


def test_cell_benchmark_rows():
  from benchmarks import cells

  assert cells.stage_shape(2, 8) == (8, 16, 16, 32)
  rows = cells.benchmark_cells(
      ["gru"], [3], [{}, {"cell_impl": "reference", "pairing": "interleave"}], batch_size=2,
      steps=1, warmup=1, conv_grads=("swapped", "kernel"))
  assert [(r["op"], r["variant"]) for r in rows] == [
      ("dense3x3 conv", "conv_grad=swapped"), ("dense3x3 conv", "conv_grad=kernel"),
      ("gru cell", "default"), ("gru cell", "cell_impl=reference,pairing=interleave")]
  assert rows[0]["ratio"] == 1.0 and all(r["fwd_bwd_ms"] > 0 for r in rows)
  assert rows[2]["ratio"] == pytest.approx(rows[2]["fwd_bwd_ms"] / rows[0]["fwd_bwd_ms"])
  # The conv's gradient reads x and the cotangent and writes dx, each 2x8x8x64 float32.
  assert rows[0]["mb_accessed"] >= 3 * 2 * 8 * 8 * 64 * 4 / 1e6
  # XLA cannot see the compiled kernels' traffic: the kernel gradient, the default (kernel) cell.
  assert rows[1]["mb_accessed"] is None and rows[2]["mb_accessed"] is None
  for r in (rows[0], rows[3]):
    assert r["gb_s"] == pytest.approx(r["mb_accessed"] / r["fwd_bwd_ms"])


@pytest.mark.parametrize("by", ["kind", "kernel"])
def test_profile_rows_sum_the_traced_kernels(by):
  from benchmarks import profile

  rows = profile.profile_model("resnet20", {"depth": 8}, batch_size=4, steps=2, warmup=1, by=by,
                               top=3)
  *top, total = rows
  assert len(top) == 3 and total[by] == "(all kernels)" and total["share_pct"] == 100.0
  assert [r["ms_per_step"] for r in top] == sorted((r["ms_per_step"] for r in top), reverse=True)
  assert 0 < sum(r["ms_per_step"] for r in top) <= total["ms_per_step"]
  for r in top:
    assert r["share_pct"] == pytest.approx(100 * r["ms_per_step"] / total["ms_per_step"])
    assert r["calls_per_step"] >= 1
  if by == "kernel":  # every traced kernel is an instruction of the compiled module
    assert all(r["shape_and_source"].startswith(("f32[", "(")) for r in top)
  else:
    assert not any(r[by][-1].isdigit() for r in top)


def test_profile_parts_of_a_regulated_network():
  from benchmarks import profile

  cell, bn, fusion = (name for name, _ in profile.PARTS)
  scope = "f32[4,8,8,16]{3,2,1,0}  jit(train_step)/transpose(jvp(CifarResNet))/CifarResNet.stages/"
  regulator = "stage2/closed_call/blocks/blocks.regulate/regulator/"
  assert profile.part_of(scope + regulator + "ConvCell/zr/ffi_call") == cell
  assert profile.part_of(scope + regulator + "bn_h/sub") == bn
  assert profile.part_of("blocks/bn_fuse/reduce_sum") == fusion  # XLA truncates some sources
  assert profile.part_of(scope + "stage1/block0/conv_fuse/ffi_call") == fusion
  assert profile.part_of(scope + "stage3/closed_call/blocks/concatenate") == fusion
  assert profile.part_of(scope + "stage3/concatenate") == profile.REST  # the scan's stacking
  assert profile.part_of(scope + "stage1/block0/conv1/ffi_call") == profile.REST
  assert profile.part_of("") == profile.REST
  for name, parts in (("regnet20_gru", {cell, bn, fusion, profile.REST}),
                      ("resnet20", {profile.REST})):
    *rows, total = profile.profile_model(name, {"depth": 8}, batch_size=4, steps=1, warmup=1,
                                          by="part", top=10)
    assert {r["part"] for r in rows} == parts
    assert sum(r["ms_per_step"] for r in rows) == pytest.approx(total["ms_per_step"])


def test_float64_check_measures():
  from benchmarks import float64_check

  want = {"['a']": np.array([3.0, 4.0]), "['proj_conv']['bias']": np.array([1e-12])}
  got = {"['a']": np.array([3.0, 4.5]), "['proj_conv']['bias']": np.array([1.0])}
  assert float64_check.relative_errors(got, want) == [0.1]  # 0.5 / 5; the bias is left out
  params = {"k": np.full((1000,), 2.0, np.float32)}
  moved = float64_check.perturbed(params, 1e-3)["k"]
  assert moved.dtype == np.float64
  assert np.std(moved / 2 - 1) == pytest.approx(1e-3, rel=0.1)


def test_gpu_benchmarks_script_end_to_end_in_cpu_mode(tmp_path):
  """benchmarks/gpu_benchmarks.sh, shrunk to the CPU: every part runs, every measurement is a
  row of results.jsonl, and the tarball holds the rows, the log and the CIFAR runs' events and
  results table."""
  import json
  import os
  import subprocess
  import tarfile

  from tests.conftest import REPO, TESTDATA

  out = tmp_path / "out"
  done = subprocess.run(["bash", "benchmarks/gpu_benchmarks.sh", "1200", str(out),
                         str(TESTDATA / "cifar10")], cwd=REPO, capture_output=True, text=True,
                        env={**os.environ, "GPU_BENCHMARKS_CPU": "1"}, timeout=1500)
  log = (out / "log.txt").read_text()
  assert done.returncode == 0, log[-3000:]
  assert sorted(p.name for p in out.iterdir()) == ["log.txt", "results.jsonl",
                                                   "results.tar.gz"]
  rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
  assert rows[0]["check"] == "ok" and rows[0]["backend"] == "cpu"
  assert [(r["model"], r["dtype"]) for r in rows[1:2]] == [("resnet20", "bfloat16")]
  assert [r["model"] for r in rows[2:4]] == ["resnet20", "regnet20_gru"]  # synthetic batches
  assert [(r["model"], r["input"]) for r in rows[4:]] == [("resnet20", "resident"),
                                                          ("regnet20_gru", "resident")]
  statuses = re.findall(r"exit status (\d+)", log)
  assert statuses and set(statuses) == {"0"}, log[-3000:]
  assert "skipped" not in log and log.rstrip().endswith("done")
  with tarfile.open(out / "results.tar.gz") as tar:
    names = tar.getnames()
  for m in ("resnet20", "regnet20_gru"):
    assert f"cifar/{m}/config.json" in names
    assert any(n.startswith(f"cifar/{m}/events.out.tfevents") for n in names)
    assert not any(n.startswith(f"cifar/{m}/checkpoints") for n in names)
  assert "cifar/results_gpu.json" in names and "results.jsonl" in names


def test_gpu_benchmarks_script_stops_at_a_failed_check(tmp_path):
  """Not a GPU (and no CPU mode): the first check fails, nothing long runs, and the log and
  the tarball still come back."""
  import os
  import subprocess

  from tests.conftest import REPO

  out = tmp_path / "out"
  done = subprocess.run(["bash", "benchmarks/gpu_benchmarks.sh", "300", str(out), "unused"],
                        cwd=REPO, capture_output=True, text=True, timeout=600,
                        env={k: v for k, v in os.environ.items() if k != "GPU_BENCHMARKS_CPU"})
  log = (out / "log.txt").read_text()
  assert done.returncode == 1
  assert "the JAX backend is 'cpu', not a GPU" in log and "the checks failed: stopping" in log
  assert "throughput" not in log and (out / "results.tar.gz").exists()
