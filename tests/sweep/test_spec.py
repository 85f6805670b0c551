"""Sweep files and the sweep command's checks, without training: the paper's tables as runs,
each run's main.py command line, shards, devices, and bad input refused in one line."""

import os
import re
import signal
import stat
import subprocess
import sys
import time

import pytest

from configs import imagenet_regnet50
from regnet_jax.analysis import means
from regnet_jax.analysis import rows as rows_lib
from regnet_jax.sweep import runner, spec
from regnet_jax.sweep.__main__ import main as sweep_main
from tests.conftest import REPO

SWEEPS = "configs/sweeps.py"


@pytest.fixture(autouse=True)
def in_repo(monkeypatch):
  monkeypatch.chdir(REPO)  # sweep files name their configs as a user in the checkout does


@pytest.mark.parametrize("table, dataset, rows", [
    ("table1", "cifar10", ["resnet20", "regnet20_gru interleave", "regnet20_gru dense3x3"]),
    ("table3", "cifar100", ["resnet20", "regnet20_rnn interleave", "regnet20_gru interleave",
                            "regnet20_lstm interleave", "se_resnet20",
                            "se_regnet20_rnn interleave", "se_regnet20_gru interleave",
                            "se_regnet20_lstm interleave"]),
    ("table4", "cifar10", [f"{m}{d}{c}" for d in (20, 32, 56) for m, c in
                           (("resnet", ""), ("regnet", "_gru interleave"),
                            ("regnet", "_lstm interleave"))]),
    ("table5", "cifar100", ["resnet20"] + [f"regnet20_{c} stages {s} interleave"
                                           for c in ("gru", "lstm") for s in (1, 2, 3)]),
])
def test_the_paper_tables_are_its_rows_with_three_seeds(table, dataset, rows):
  """Every row of the paper's table, with the paper's recipe and dataset, three seeds, and
  the paper's error to compare with."""
  sweep = spec.load(f"{SWEEPS}:{table},{dataset}")
  assert [rows_lib.label(r.config) for r in sweep.runs] == rows * 3
  assert [r.seed for r in sweep.runs] == [s for s in (0, 1, 2) for _ in rows]
  for run in sweep.runs:
    assert run.config.dataset == dataset and run.config.num_epochs == 150.0
    assert run.config.batch_size == 64 and run.config.lr_boundaries == (80.0,)
    assert rows_lib.paper_error(dataset, rows_lib.label(run.config)) is not None, run.name
  assert sweep.name == f"{table}_{dataset}"


def test_the_reduced_protocols_are_the_docs_configs():
  ten = spec.load(f"{SWEEPS}:reduced10")
  assert [r.name for r in ten.runs] == [f"{m}_seed{s}" for s in (0, 1) for m in
                                        ("resnet20", "regnet20_rnn", "regnet20_gru",
                                         "regnet20_lstm")]
  assert ten.runs[2].args == ("--config=configs/cifar10_reduced10.py:regnet20_gru",
                              "--config.seed=0")
  twenty = spec.load(f"{SWEEPS}:reduced20")
  assert [(r.config.num_epochs, r.config.batch_size, r.config.eval_precise_bn_batches)
          for r in twenty.runs] == [(20.0, 128, 64)] * 4


def test_a_run_trains_with_the_command_line_a_user_types():
  """The variant's fields, then --set's (which win), then the seed; values read back exactly."""
  sweep = spec.load(f"{SWEEPS}:table5", {"data_dir": "/data", "lr_boundaries": "(70.0,90)"})
  run = next(r for r in sweep.runs if r.name == "regnet20_lstm-stage3_seed2")
  assert run.args == ("--config=configs/cifar.py:regnet20_lstm,cifar10",
                      "--config.data_dir=/data", "--config.lr_boundaries=(70.0,90)",
                      "--config.model_args.regulated_stages=(3,)", "--config.seed=2")
  assert run.config.model_args.regulated_stages == (3,) and run.config.lr_boundaries == (70, 90)
  won = spec.load(f"{SWEEPS}:table5", {"model_args.regulated_stages": "(1,2)"}).runs[6]
  assert won.name == "regnet20_lstm-stage3_seed0"
  assert won.config.model_args.regulated_stages == (1, 2)


@pytest.mark.parametrize("value, text", [(True, "True"), (False, "False"), ((1,), "(1,)"),
                                         ([80.0, 120.0], "(80.0, 120.0)"), (1e-4, "0.0001"),
                                         (3, "3"), ("dense3x3", "dense3x3")])
def test_sweep_file_values_cross_the_command_line_as_typed(value, text):
  assert spec.command_value(value) == text


@pytest.mark.parametrize("count", [1, 2, 3, 5, 7, 24, 25])
def test_shards_partition_the_runs(count):
  runs = spec.load(f"{SWEEPS}:table3").runs
  shards = [spec.load(f"{SWEEPS}:table3").shard(i, count) for i in range(count)]
  names = sorted(r.name for shard in shards for r in shard)
  assert names == sorted(r.name for r in runs)  # every run in exactly one shard
  assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_a_slurm_array_task_is_its_shard():
  env = {"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_MIN": "4",
         "SLURM_ARRAY_TASK_COUNT": "3"}
  assert spec.slurm_shard(env) == (1, 3)
  assert spec.slurm_shard({**env, "SLURM_ARRAY_TASK_ID": "8", "SLURM_ARRAY_TASK_MIN": "4",
                           "SLURM_ARRAY_TASK_STEP": "2"}) == (2, 3)
  assert spec.slurm_shard({"SLURM_JOB_ID": "7"}) is None


def test_gpus_are_counted_without_touching_them(tmp_path):
  assert runner.local_gpus({"CUDA_VISIBLE_DEVICES": "2,3"}) == ["2", "3"]
  assert runner.local_gpus({"CUDA_VISIBLE_DEVICES": "0,-1,1"}) == ["0"]
  assert runner.local_gpus({"CUDA_VISIBLE_DEVICES": ""}) == []
  assert runner.local_gpus({"CUDA_VISIBLE_DEVICES": "0", "JAX_PLATFORMS": "cpu"}) == []
  smi = tmp_path / "nvidia-smi"
  smi.write_text("#!/bin/sh\nfor i in 0 1 2; do echo \"GPU $i: NVIDIA H100 (UUID: GPU-$i)\";"
                 " done\n")
  smi.chmod(smi.stat().st_mode | stat.S_IEXEC)
  assert runner.local_gpus({}, str(smi)) == ["0", "1", "2"]
  assert runner.local_gpus({}, str(tmp_path / "absent")) == []


def test_small_runs_go_one_per_gpu_unless_told_otherwise():
  cifar = [r.config for r in spec.load(f"{SWEEPS}:table1").runs]
  assert runner.default_parallel(["0", "1", "2", "3"], cifar) == 4
  assert runner.default_parallel(["0"], cifar) == 1
  assert runner.default_parallel([], cifar) == 1
  assert runner.default_parallel(["0", "1"], [imagenet_regnet50.get_config()]) == 1
  own = {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"}
  assert runner.slots(["0", "1"], 2) == [{**own, "CUDA_VISIBLE_DEVICES": "0"},
                                         {**own, "CUDA_VISIBLE_DEVICES": "1"}]
  assert [s["CUDA_VISIBLE_DEVICES"] for s in runner.slots(list("0123"), 2)] == ["0,1", "2,3"]
  assert [s["CUDA_VISIBLE_DEVICES"] for s in runner.slots(["0", "1"], 3)] == ["0", "1", "0"]
  assert runner.slots([], 2) == [own, own]
  assert runner.slots(["0", "1"], 1) == [{}]


def test_a_failure_is_its_error_line():
  assert runner.error_line(["x", "error: non-finite loss", "I0 finished"], 1) == \
      "non-finite loss"
  assert runner.error_line(["Traceback", "MemoryError"], 1) == "MemoryError"
  assert runner.error_line(["step 3"], -9) == "killed by SIGKILL"
  assert runner.error_line([], 3) == "exit status 3"


def test_each_model_is_compared_with_the_resnet_it_regulates():
  assert [means.baseline_model(m) for m in ("resnet20", "regnet32_gru", "se_regnet20_lstm",
                                            "se_resnet20", "regnet50", "se_regnet50")] == \
      ["resnet20", "resnet32", "se_resnet20", "se_resnet20", "resnet50", "se_resnet50"]


@pytest.fixture
def bad_sweep(tmp_path):
  path = tmp_path / "bad.py"
  path.write_text("import ml_collections\n\ndef get_sweep(arg=''):\n"
                  "  return ml_collections.ConfigDict(dict(config='configs/cifar.py:{model}', "
                  "models=['resnet20', arg or 'resnet21'], seeds=[0], overrides={}))\n")
  return str(path)


@pytest.mark.parametrize("args, line", [
    (["--sweep=configs/sweeps.py:table9"], "error: configs/sweeps.py:table9: unknown sweep "
     "'table9'; choose one of table1, table3, table4, table5, reduced10, reduced20 (then "
     "',cifar100' for CIFAR-100)"),
    (["--sweep={bad}"], "error: {bad}: unknown model 'resnet21'; did you mean resnet32, "
     "resnet20 or resnet101? `python -m regnet_jax.analysis.summary` lists every model"),
    (["--sweep={bad}:resnet20-dense"], "error: {bad}:resnet20-dense: model entry "
     "'resnet20-dense' names the variant 'dense', which is not in its variants (none)"),
    (["--sweep=configs/sweeps.py:table1", "--set.learning_rat=0.1"],
     "error: configs/sweeps.py:table1, run resnet20_seed0: --set.learning_rat=0.1: the config "
     "has no field 'learning_rat' (did you mean 'learning_rate'?); the config file lists every "
     "field"),
    (["--sweep=configs/sweeps.py:table1", "--set.seed=4"], "error: --set.seed=4: the sweep sets "
     "each run's seed (its models and seeds lists); change those instead"),
    (["--sweep=configs/sweeps.py:table1", "--shard=3/2"], "error: --shard=3/2: give I/N, shard "
     "I of N counting from 0 (0 <= I < N, e.g. --shard=0/4)"),
    (["--sweep=nope.py:table1"], "error: sweep file nope.py not found (e.g. "
     "--sweep=configs/sweeps.py:table1)"),
])
def test_bad_input_is_one_line_and_starts_nothing(args, line, bad_sweep, tmp_path):
  root = tmp_path / "root"
  args = [a.replace("{bad}", bad_sweep) for a in args]
  with pytest.raises(SystemExit) as exit_:
    sweep_main(["run", *args, f"--root={root}"])
  assert str(exit_.value) == line.replace("{bad}", bad_sweep)
  assert not root.exists()


def test_a_root_that_is_a_file_is_refused_by_the_command(tmp_path):
  """The command as users run it: exit status 1, one line, no traceback, the file untouched."""
  root = tmp_path / "a_file"
  root.write_text("notes")
  out = subprocess.run([sys.executable, "-m", "regnet_jax.sweep", "run",
                        "--sweep=configs/sweeps.py:table1", f"--root={root}"], cwd=REPO,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 1 and out.stdout == ""
  assert out.stderr.strip().splitlines() == [
      f"error: --root={root} is a file; give a folder for the runs' workdirs (it is made if "
      "missing)"]
  assert root.read_text() == "notes" and os.listdir(tmp_path) == ["a_file"]


def slurm_script() -> str:
  return re.search(r"```bash\n(#!/bin/bash\n.*?)```", (REPO / "docs/sweeps.md").read_text(),
                   re.S).group(1)


def test_the_docs_sweeps_exist():
  docs = "".join((REPO / name).read_text() for name in ("README.md", "docs/sweeps.md",
                                                          "docs/results.md"))
  named = set(re.findall(r"--sweep=configs/sweeps\.py:([a-z0-9]+(?:,cifar10+)?)", docs))
  assert {"table1", "table3", "table3,cifar100", "table4", "table5", "reduced10",
          "reduced20"} <= named
  for arg in named:
    spec.load(f"{SWEEPS}:{arg}")


def test_the_slurm_script_passes_sigterm_on_and_requeues_a_stopped_task(tmp_path):
  """The docs' sbatch script with stand-ins for python (a sweep that exits 75 on SIGTERM) and
  scontrol: SIGTERM to the script (SLURM's --signal=B:TERM) reaches the sweep, and the task
  is requeued with the sweep's exit status."""
  script = slurm_script()
  assert "#SBATCH --signal=B:TERM@" in script and "#SBATCH --requeue" in script
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  for name, body in (("python", 'echo "$@" > args\ntrap "exit 75" TERM\ntouch started\n'
                                "while true; do sleep 0.1; done\n"),
                     ("scontrol", 'echo "$@" > requeued\n')):
    (bin_dir / name).write_text(f"#!/bin/bash\n{body}")
    (bin_dir / name).chmod(0o755)
  env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_ARRAY_JOB_ID": "7",
         "SLURM_ARRAY_TASK_ID": "2"}
  proc = subprocess.Popen(["bash", "-c", script], cwd=tmp_path, env=env)
  for _ in range(300):
    if (tmp_path / "started").exists():
      break
    time.sleep(0.1)
  proc.send_signal(signal.SIGTERM)
  assert proc.wait(timeout=60) == 75
  assert (tmp_path / "requeued").read_text() == "requeue 7_2\n"
  assert (tmp_path / "args").read_text().startswith(
      "-m regnet_jax.sweep run --sweep=configs/sweeps.py:table3,cifar10 ")


@pytest.mark.parametrize("value, line", [
    ("None", "None cannot be given on main.py's command line"),
    ("5", "main.py's command line reads it back as '5'; give the field's type"),
])
def test_sweep_values_that_main_py_cannot_read_back_are_refused(value, line, tmp_path):
  path = tmp_path / "sweep.py"
  path.write_text("import ml_collections\n\ndef get_sweep():\n  return ml_collections.ConfigDict("
                  "dict(config='configs/cifar.py:{model}', models=['resnet20'], seeds=[0], "
                  f"overrides={{'data_dir': {value}}}))\n")
  with pytest.raises(ValueError) as error:
    spec.load(str(path))
  assert str(error.value) == f"{path} overrides data_dir={value}: {line}"


def test_a_run_gets_sigterm_when_its_sweep_dies(tmp_path):
  """The sweep's children ask the kernel for SIGTERM when the sweep dies (even by SIGKILL), so
  that each saves a checkpoint instead of training on alone."""
  got = tmp_path / "got"
  child = ("import signal, sys, time\n"
           f"signal.signal(signal.SIGTERM, lambda *a: (open({str(got)!r}, 'w').write('TERM'), "
           "sys.exit(0)))\nprint('ready', flush=True)\ntime.sleep(120)\n")
  sweep = ("import subprocess, sys\nfrom regnet_jax.sweep import runner\n"
           f"child = subprocess.Popen([sys.executable, '-c', {child!r}], stdout=subprocess.PIPE, "
           "start_new_session=True, preexec_fn=runner._die_with_parent)\n"
           "child.stdout.readline()\nimport os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n")
  assert subprocess.run([sys.executable, "-c", sweep], cwd=REPO, timeout=300).returncode == -9
  for _ in range(300):
    if got.exists() and got.read_text() == "TERM":
      break
    time.sleep(0.1)
  assert got.read_text() == "TERM"
