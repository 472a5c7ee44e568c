"""launch/colab_tpu.ipynb: valid for nbformat, and its code cells run top to bottom on CPU.

Running the cells takes ~75 s (measured on 2 cores), which CI cannot spare next to the rest, so it is
opt-in: `R3JAX_RUN_NOTEBOOK=1 python -m pytest tests/test_notebook.py` (see the README).
"""

import ast
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "launch", "colab_tpu.ipynb")


def test_notebook_is_valid_and_its_code_parses():
  nbformat = pytest.importorskip("nbformat")
  nb = nbformat.read(NOTEBOOK, as_version=4)
  nbformat.validate(nb)
  code = [c.source for c in nb.cells if c.cell_type == "code"]
  assert len(code) >= 4
  for src in code:
    ast.parse(src)  # Plain Python: no shell magics, so the cells also run outside Jupyter.


@pytest.mark.skipif(os.environ.get("R3JAX_RUN_NOTEBOOK") != "1", reason="opt-in: R3JAX_RUN_NOTEBOOK=1")
def test_notebook_cells_run_top_to_bottom_on_cpu(tmp_path):
  nbformat = pytest.importorskip("nbformat")
  for name in ("r3jax", "configs", "requirements.txt"):  # A checkout the notebook can chdir into.
    os.symlink(os.path.join(ROOT, name), tmp_path / name)
  cells = [c.source for c in nbformat.read(NOTEBOOK, as_version=4).cells if c.cell_type == "code"]
  runner = "ns = {}\n" + "".join(f"exec(compile({src!r}, 'cell {i}', 'exec'), ns)\n" for i, src in enumerate(cells))
  env = {**os.environ, "R3JAX_ROOT": str(tmp_path), "R3JAX_QUICK": "1", "R3JAX_SKIP_INSTALL": "1",
         "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(tmp_path)}
  out = subprocess.run([sys.executable, "-c", runner], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=600)
  assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
  assert (tmp_path / "runs" / "ppo_tiny" / "plots").is_dir() and (tmp_path / "runs" / "rso_tiny" / "pairs.jsonl").exists()
  assert ".png" in out.stdout
