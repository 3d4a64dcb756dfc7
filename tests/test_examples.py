"""The examples cannot rot: every notebook under notebooks/, every ```python block of the
README and every script examples/*.py is executed as a user would run it, in a temporary copy of
the repository's layout (the scripts: from an empty temporary working directory)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
EXAMPLES = sorted((REPO / "examples").glob("*.py"))
README = REPO / "README.md"
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)

# README python blocks that cannot run as-is: a distinctive line of the block -> why. Each one is
# reported as skipped with its reason, never silently left out.
NOT_RUNNABLE: dict[str, str] = {}


def readme_blocks() -> list[tuple[int, str]]:
    """(line number, code) of each ```python block of the README."""
    text = README.read_text(encoding="utf-8")
    return [(text.count("\n", 0, m.start()) + 1, m.group(1)) for m in FENCE.finditer(text)]


def repo_layout(root: Path) -> Path:
    """A copy of what the examples read (configs/) under ``root``; returns ``root``."""
    shutil.copytree(REPO / "configs", root / "configs")
    return root


def test_examples_are_found():
    assert NOTEBOOKS, "no notebook under notebooks/"
    assert readme_blocks(), "no ```python block in README.md"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda path: path.name)
def test_notebook_runs(notebook, tmp_path, monkeypatch):
    """Executes every cell in a fresh kernel (a cell that raises fails the test) from a
    notebooks/ folder beside a copy of configs/; the output must be free of stderr (progress-bar
    spam, warnings) and the notebook must write nothing beside itself."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")

    cwd = repo_layout(tmp_path / "repo") / "notebooks"
    cwd.mkdir()
    (tmp_path / "tmp").mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))  # the kernel's tempfile.mkdtemp()
    nb = nbformat.read(notebook, as_version=4)
    nbformat.validate(nb)
    assert all(not cell.get("outputs") for cell in nb.cells), \
        f"{notebook.name} is committed with outputs; clear them"

    nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(cwd)}}).execute()

    stderr = [out.get("text", "") for cell in nb.cells for out in cell.get("outputs", [])
              if out.get("output_type") == "stream" and out.get("name") == "stderr"]
    assert not stderr, f"{notebook.name} writes to stderr:\n" + "".join(stderr)[:2000]
    assert not any(cwd.iterdir()), \
        f"{notebook.name} wrote beside itself: {sorted(p.name for p in cwd.iterdir())}"


@pytest.mark.parametrize("line, code", [pytest.param(line, code, id=f"README.md:{line}")
                                         for line, code in readme_blocks()])
def test_readme_python_block_runs(line, code, tmp_path, monkeypatch):
    """Runs the block as-is from the root of a copy of the repository's configs."""
    for marker, reason in NOT_RUNNABLE.items():
        if marker in code:
            pytest.skip(f"README.md line {line}: {reason}")
    monkeypatch.chdir(repo_layout(tmp_path))
    exec(compile(code, f"README.md (block at line {line})", "exec"), {"__name__": "__main__"})


def test_example_scripts_are_found():
    assert EXAMPLES, "no script under examples/"


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda path: path.name)
def test_example_script_runs(script, tmp_path):
    """Runs ``python examples/<file>.py`` in a subprocess from a temporary working directory
    holding a copy of examples/ (TMPDIR under the test's own folder): it must exit with 0, print
    no traceback to stderr and write nothing into the working directory."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (tmp_path / "tmp").mkdir()
    shutil.copytree(REPO / "examples", cwd / "examples",
                    ignore=shutil.ignore_patterns("__pycache__"))
    before = set(cwd.rglob("*"))
    env = {**os.environ, "TMPDIR": str(tmp_path / "tmp"), "WANDB_MODE": "offline",
           "WANDB_SILENT": "true", "PYTHONPATH": os.pathsep.join(
               [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    proc = subprocess.run([sys.executable, f"examples/{script.name}"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    report = f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    assert proc.returncode == 0, f"{script.name} exited with {proc.returncode}\n{report}"
    assert "Traceback" not in proc.stderr, f"{script.name} printed a traceback\n{report}"
    left = sorted(str(p.relative_to(cwd)) for p in set(cwd.rglob("*")) - before)
    assert not left, f"{script.name} wrote into its working directory: {left}"
