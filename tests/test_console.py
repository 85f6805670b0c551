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
