"""Every notebook runs top to bottom (code cells executed in order, in one namespace, as a kernel would)."""

import json
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path):
  cells = json.loads(path.read_text())["cells"]
  namespace = {"__name__": "__main__"}
  code = [c for c in cells if c["cell_type"] == "code"]
  assert code, f"{path.name} has no code"
  for index, cell in enumerate(code):
    exec(compile("".join(cell["source"]), f"{path.name}[cell {index}]", "exec"), namespace)


def test_there_is_a_quickstart():
  assert any(p.name == "quickstart.ipynb" for p in NOTEBOOKS)
