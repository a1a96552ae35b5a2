import json

import pytest
from typer.testing import CliRunner

from leakstore.cli import app


@pytest.mark.slow
def test_demo_runs_offline_end_to_end(tmp_path):
    r = CliRunner().invoke(app, ["demo", "--out", str(tmp_path / "demo")])
    assert r.exit_code == 0, r.output
    assert "BUILT-IN DEMO ENCODER" in r.output and "report:" in r.output
    d = json.loads((tmp_path / "demo" / "demo.json").read_text())
    assert (tmp_path / "demo" / "model" / "eval" / "report.html").is_file()
    assert d["scored"]["rows"] == 300 and d["featurize_failed"] == 0
    assert d["closed_macro_auc"] > 0.7  # chance is 0.5: the pipeline learns even on the demo encoder
