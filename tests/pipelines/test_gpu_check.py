import json

import pytest

from pipelines.gpu_check import main


@pytest.mark.slow
def test_the_gpu_check_runs_every_part_at_toy_size_on_the_cpu(tmp_path):
    """The prepared GPU command never rots: CI runs every part of it in --smoke mode."""
    assert main(["--smoke", "--out", str(tmp_path)]) == 0
    r = json.loads((tmp_path / "gpu_check.json").read_text())
    assert set(r["parts"]) == {"featurize", "featurize_residual", "train", "score_store", "score_images",
                               "featurize_cluster"}
    assert all(p["status"] == "ok" for p in r["parts"].values()), r["parts"]
    assert r["parts"]["featurize_residual"]["result"]["residual_bins"] == 12
    assert set(r["parts"]["featurize_cluster"]["result"]["rates"]) == {"1", "2"}
    assert "| featurize | ok |" in (tmp_path / "gpu_check.md").read_text()
