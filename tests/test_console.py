"""The quiet console: the libraries' routine messages are kept off it, and nothing else."""

import subprocess
import sys

from tests.conftest import REPO

_CODE = """
from regnet_jax import console
console.quiet()
import logging
from absl import logging as absl_logging
logging.basicConfig()  # a handler added afterwards, as libraries do
import tensorflow_datasets as tfds
print("prepared:", tfds.builder("cifar10", data_dir=sys.argv[1]).is_prepared())
absl_logging.warning("a real problem")
logging.getLogger("tensorflow").warning("another one")
"""


def test_routine_library_messages_are_hidden_and_others_shown(tmp_path):
  out = subprocess.run([sys.executable, "-c", "import sys\n" + _CODE, str(tmp_path)],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout == "prepared: False\n"
  # tfds's "Variant folder ... has no dataset_info.json" (the caller explains a missing
  # dataset itself) is gone; warnings that are not on the routine list still show.
  assert out.stderr.splitlines() == ["WARNING:absl:a real problem",
                                     "WARNING:tensorflow:another one"], out.stderr


_NATIVE = """
import os
from regnet_jax import console
with console._filtered_stderr(console._ROUTINE_NATIVE):
  os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written "
              b"to STDERR\\n")
  os.write(2, b"I0000 00:00:1796300758.806620   20813 port.cc:153] oneDNN custom operations "
              b"are on. You may see slightly different numerical results.\\n")
  os.write(2, b"E0000 00:00:1796300758.806620   20813 port.cc:153] a native error\\n")
os.write(2, b"after\\n")
from regnet_jax.data import pipeline  # imports TensorFlow
print(pipeline.tf.constant(1).numpy())
"""


def test_native_start_up_lines_are_dropped_and_others_passed_on():
  """What native code writes to stderr while TensorFlow is imported is filtered line by line:
  absl's and oneDNN's routine start-up lines (printed whatever TF_CPP_MIN_LOG_LEVEL says, on
  CPUs with AVX-512) are dropped, other lines pass, and stderr is restored afterwards."""
  out = subprocess.run([sys.executable, "-c", _NATIVE], cwd=REPO, capture_output=True,
                       text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout == "1\n"
  assert out.stderr == "E0000 00:00:1796300758.806620   20813 port.cc:153] a native error\nafter\n"
