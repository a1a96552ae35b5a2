import json

import pandas as pd
from typer.testing import CliRunner

from leakstore.cli import app
from tests.synthetic import CFG_RESIDUAL, planted_store


def test_the_leave_one_out_study_runs_end_to_end_and_resumes(tmp_path):
    planted_store(tmp_path / "s.zarr", classes=("real", "gen-a", "gen-b", "gen-c"), per_class=40, cfg=CFG_RESIDUAL,
                  residual_strength=0.5)
    args = ["openset-study", str(tmp_path / "s.zarr"), "--out", str(tmp_path / "logo"), "--epochs", "2"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    s = json.loads((tmp_path / "logo" / "study.json").read_text())
    assert s["generators"] == ["gen-a", "gen-b", "gen-c"] and s["chosen_on"] == "mean validation AUROC"
    df = pd.read_parquet(tmp_path / "logo" / "study.parquet")
    scorers = {r["scorer"] for r in s["scorers"]}
    assert {"kde", "confidence", "residual", "fused"} <= scorers and s["chosen"] in scorers
    assert len(df) == 3 * len(scorers) and df.test_auroc.between(0, 1).all()
    best = max(s["scorers"], key=lambda r: (r["mean_val_auroc"], r["min_val_auroc"]))
    assert best["scorer"] == s["chosen"]                         # chosen on validation, not on test
    page = (tmp_path / "logo" / "report.html").read_text()
    assert "data:image/png;base64" in page
    assert "Leave-one-generator-out" in page and "chosen" in r.output
    stamp = (tmp_path / "logo" / "folds" / "gen-a" / "model.safetensors").stat().st_mtime_ns
    r = CliRunner().invoke(app, args + ["--json"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "logo" / "folds" / "gen-a" / "model.safetensors").stat().st_mtime_ns == stamp   # reused
