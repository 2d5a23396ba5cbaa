"""examples/quickstart.ipynb runs top to bottom in a real Jupyter kernel, offline.

The kernel is ipykernel's ``python3`` (this interpreter), started in a temporary folder with
``FEATUREMAPS_OFFLINE=1`` and this checkout's ``src`` first on its path; a cell that raises fails
the test with the cell's traceback. The committed notebook carries no outputs, so a diff of it is
a diff of its code.
"""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest

import featuremaps as fm

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "examples" / "quickstart.ipynb"


def test_committed_notebook_has_no_outputs() -> None:
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(notebook)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code
    for cell in code:
        assert cell.outputs == [], f"cell {cell.id} holds outputs: clear them before committing"
        assert cell.execution_count is None, f"cell {cell.id} holds an execution count"


def test_notebook_runs_offline_in_a_kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from nbclient import NotebookClient

    # The kernel inherits this environment: offline, the featuremaps under test first, and
    # Jupyter's and IPython's own files in the temporary folder (JUPYTER_PLATFORM_DIRS: the
    # platformdirs locations jupyter_core is moving to, instead of the deprecated ones).
    package_parent = Path(fm.__file__).resolve().parents[1]
    path = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(package_parent), *filter(None, [path])]))
    monkeypatch.setenv("FEATUREMAPS_OFFLINE", "1")
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "jupyter-runtime"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    work = tmp_path / "work"
    work.mkdir()

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=120,
        kernel_name="python3",
        resources={"metadata": {"path": str(work)}},
    )
    client.execute()

    outputs = [output for cell in notebook.cells for output in cell.get("outputs", [])]
    errors = [o.get("text", "") for o in outputs if o.get("name") == "stderr"]
    assert not errors, f"the notebook wrote to stderr: {errors}"
    shown = {kind for o in outputs for kind in o.get("data", {})}
    assert {"image/png", "text/html"} <= shown  # the grid inline, the model and report frames
    assert (work / "maps" / "index.html").is_file()
    assert (work / "stats" / "stats.csv").is_file()
