"""notebooks/quickstart.ipynb runs from top to bottom (tiny models) and shows its plots."""

from pathlib import Path

import nbformat
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"


def test_quickstart_notebook_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("QUICKSTART_TINY", "1")
    monkeypatch.setenv("QUICKSTART_OUT", str(tmp_path / "run"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": NOTEBOOK.parent}}
    ).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(images) >= 2  # ROC and timelines at least
    run = tmp_path / "run"
    assert (run / "report" / "metrics.json").is_file() and (
        run / "predictions.csv"
    ).exists() is False
    assert (run / "predictions" / "predictions.csv").is_file()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "anomaly.ckpt",
        "cnn.ckpt",
        "whisper_head.ckpt",
    ]
