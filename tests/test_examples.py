"""The examples cannot rot: every notebook under notebooks/ and every ```python block of the
README is executed as a user would run it, in a temporary copy of the repository's layout."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
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
