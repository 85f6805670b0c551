"""The repository reads as user pages and code: no development history (numbered working
sessions, issue numbers, device loans, CI anecdotes) and no paths outside the repository, in
the docs, code, configs or scripts. History belongs in git."""

import pathlib
import re
import subprocess

import pytest

from tests.conftest import REPO

FORBIDDEN = {
    "a numbered working session": r"\bsessions?[- ]\d+",
    "working sessions": r"\b(this|a|each|every|later|next|earlier) session\b|\bsessions\b",
    "development periods": r"\b(working|development) periods?\b",
    "device loans": r"\blease[sd]?\b|\bloans?\b|\blent\b",
    "issue numbers": r"\bissues? ?#?\d+\b|(?<![\w/.-])#\d+\b|\bthe issue'?s?\b",
    "paths outside the repository": r"\.\./shared|shared/(paper|data)|regnet-notes",
    "CI anecdotes": r"\bCI (ran|run of|failed|passed|took)\b",
}
# .ci/run points CI at the full offline datasets beside the checkout, where CI runs; LICENSE
# is the licence's own text; this file names what it looks for.
EXEMPT = {".ci/run", "LICENSE", "tests/test_docs.py"}


def _tracked_text_files() -> list[pathlib.Path]:
  names = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout.split()
  return [REPO / n for n in names if n not in EXEMPT
          and n.endswith((".md", ".py", ".sh", ".toml", ".cc", ".h", ".txt", ".cfg"))]


@pytest.mark.parametrize("what", FORBIDDEN)
def test_no_development_history_or_outside_paths(what):
  pattern = re.compile(FORBIDDEN[what], re.IGNORECASE)
  found = [f"{path.relative_to(REPO)}:{i}: {line.strip()[:120]}"
           for path in _tracked_text_files()
           for i, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
           if pattern.search(line)]
  assert not found, f"{what}:\n" + "\n".join(found[:20])
