"""examples/notebooks/quickstart.ipynb executes top to bottom (nbclient, kernel "python3") without errors and
produces its plots and figures, so the notebook cannot rot.

It runs the shipped tiny model (12 steps, dense and TimeRipple) and takes about a minute on 2 CPU cores.
"""

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat", reason="executing the notebook needs nbformat (pip install -e '.[dev]')")
nbclient = pytest.importorskip("nbclient", reason="executing the notebook needs nbclient (pip install -e '.[dev]')")
pytest.importorskip("ipykernel", reason="executing the notebook needs ipykernel (pip install -e '.[dev]')")
pytest.importorskip("matplotlib", reason="the notebook plots with matplotlib (pip install -e '.[dev]')")

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "notebooks" / "quickstart.ipynb"


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    workdir = tmp_path_factory.mktemp("notebook")  # anything the notebook writes stays out of the repo
    client = nbclient.NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(workdir)}},
    )
    client.execute()  # raises CellExecutionError (with the traceback) if a cell fails
    return nb


def _outputs(nb):
    return [out for cell in nb.cells if cell.cell_type == "code" for out in cell.outputs]


def _text(nb) -> str:
    return "".join(out.get("text", "") for out in _outputs(nb) if out.output_type == "stream")


def test_notebook_is_stored_without_outputs():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    code = [cell for cell in nb.cells if cell.cell_type == "code"]
    assert code and all(not cell.outputs and cell.execution_count is None for cell in code)


def test_every_cell_ran_without_errors(executed):
    code = [cell for cell in executed.cells if cell.cell_type == "code"]
    assert all(cell.execution_count is not None for cell in code)
    assert not [out for out in _outputs(executed) if out.output_type == "error"]


def test_it_shows_frames_savings_and_the_reuse_mask(executed):
    images = [out for out in _outputs(executed) if "image/png" in out.get("data", {})]
    assert len(images) == 3  # frames, per-step savings, reuse mask of one layer
    assert all(len(out.data["image/png"]) > 5000 for out in images)  # real pictures, not empty axes


def test_printed_figures_are_sensible(executed):
    text = _text(executed)
    assert "identical to the first dense run: True" in text  # remove_timeripple restores stock exactly
    assert "counted q·kᵀ savings over the generation:" in text
    assert "TimeRipple statistics" in text  # the per-step table of get_stats
    saving = float(text.split("counted q·kᵀ savings over the generation: ")[1].split("%")[0])
    assert 0 < saving < 100
    psnr = float(text.split("PSNR vs dense: ")[1].split(" dB")[0])
    assert psnr > 20  # close to dense, and not identical (reuse happened: PSNR would be inf)
