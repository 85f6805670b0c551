"""The test harness's report of a pytest-xdist worker that dies (tests/conftest.py)."""

import os
import shutil
import subprocess
import sys

from tests.conftest import REPO, STDERR_DIR, crash_report

DYING_TESTS = r'''
import os
import signal

def test_passes():
  pass

def test_aborts():
  os.write(2, b"F0000 some_kernel.cc:12] Check failed: what the C++ side said\n")
  os.abort()

def test_is_killed():
  os.write(2, b"a last line\n")
  os.kill(os.getpid(), signal.SIGKILL)
'''


def test_crash_report_keeps_the_message_and_the_crashing_threads_innermost_frames():
  text = "\n".join(["noise"] * 3 + [
      "E c++ message", "Fatal Python error: Aborted", "",
      "Thread 0x1 (most recent call first):", '  File "a.py"', "",
      "Current thread 0x2 (most recent call first):",
      '  File "b.py", line 3 in inner', '  File "c.py", line 9 in outer', "",
      "Extension modules: x"])
  assert crash_report(text, context=2, frames=1) == [
      "noise", "E c++ message", "Fatal Python error: Aborted",
      "Current thread 0x2 (most recent call first):", '  File "b.py", line 3 in inner']
  assert crash_report("a clean worker's warnings\n") == []
  # A C++ fatal message far above the error, below it the check failure's stack frames.
  text = "\n".join(["noise", "F1202 08:30:00.1 thunk.cc:42] Check failed: x == y",
                    "*** Check failure stack trace: ***", *["    @ 0x1 frame"] * 40,
                    "Fatal Python error: Aborted"])
  assert crash_report(text, context=2) == [
      "F1202 08:30:00.1 thunk.cc:42] Check failed: x == y", "*** Check failure stack trace: ***",
      "...", "    @ 0x1 frame", "    @ 0x1 frame", "Fatal Python error: Aborted"]


def test_dead_workers_last_words_reach_the_end_of_the_log(tmp_path):
  """Two workers, two die: the run's last lines give the C++ message, the error and the test's
  frame of the one that aborted (pytest's fd capture would have swallowed the message), and
  the last line of the one killed from outside."""
  shutil.copy(REPO / "tests" / "conftest.py", tmp_path)
  (tmp_path / "test_dying.py").write_text(DYING_TESTS)
  env = {k: v for k, v in os.environ.items()  # a fresh run, not this worker's
         if k not in (STDERR_DIR, "PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT")}
  run = subprocess.run(
      [sys.executable, "-m", "pytest", "-n", "2", "-q", "-p", "no:cacheprovider",
       "-o", "addopts=-ra --capture=sys", "test_dying.py"],
      cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
  assert run.returncode == 1
  lines = run.stdout.splitlines()
  assert "2 failed, 1 passed" in lines[-1]
  sections = [i for i, line in enumerate(lines) if "died; what its stderr says" in line]
  assert len(sections) == 2
  aborted, killed = sorted((lines[i + 1:i + 5] for i in sections),
                           key=lambda report: not report[0].startswith("F0000"))
  assert aborted[:2] == ["F0000 some_kernel.cc:12] Check failed: what the C++ side said",
                         "Fatal Python error: Aborted"]
  assert aborted[2].startswith("Current thread")
  assert aborted[3].endswith('test_dying.py", line 10 in test_aborts')
  assert killed[:2] == [
      "(no fatal error on its stderr: killed from outside, e.g. by the OOM killer?)",
      "a last line"]
