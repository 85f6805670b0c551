"""The test harness's report of a pytest-xdist worker that dies (tests/conftest.py)."""

import os
import shutil
import subprocess
import sys

from conftest import REPO, STDERR_DIR, crash_report

DYING_TEST = '''
import os

def test_passes():
  pass

def test_dies():
  os.write(2, b"F0000 some_kernel.cc:12] Check failed: what the C++ side said\\n")
  os.abort()
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


def test_a_dead_workers_cpp_message_reaches_the_end_of_the_log(tmp_path):
  """Two workers, one aborts: the run's last lines name the C++ message, the error and the
  test's frame (pytest's own capture would have swallowed the message)."""
  shutil.copy(REPO / "tests" / "conftest.py", tmp_path)
  (tmp_path / "test_dying.py").write_text(DYING_TEST)
  env = {k: v for k, v in os.environ.items()  # a fresh run, not this worker's
         if k not in (STDERR_DIR, "PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT")}
  run = subprocess.run(
      [sys.executable, "-m", "pytest", "-n", "2", "-q", "-p", "no:cacheprovider",
       "-o", "addopts=-ra --capture=sys", "test_dying.py"],
      cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
  assert run.returncode == 1
  tail = run.stdout.splitlines()[-16:]
  section = next(i for i, line in enumerate(tail) if "died; the end of its stderr" in line)
  assert tail[section + 1:section + 3] == [
      "F0000 some_kernel.cc:12] Check failed: what the C++ side said",
      "Fatal Python error: Aborted"]
  assert tail[section + 3].startswith("Current thread")
  assert tail[section + 4].endswith("test_dying.py\", line 9 in test_dies")
  assert "1 failed, 1 passed" in tail[-1]
