import json

import pytest

from benchmarks.gpu_check import main


@pytest.mark.slow
def test_the_gpu_check_runs_every_part_at_toy_size_on_the_cpu(tmp_path):
    """The prepared GPU command never rots: CI runs every part of it in --smoke mode."""
    assert main(["--smoke", "--out", str(tmp_path)]) == 0
    r = json.loads((tmp_path / "gpu_check.json").read_text())
    assert list(r["parts"])[0] == "featurize_default"  # the default config's figure comes first
    assert set(r["parts"]) == {
        "featurize",
        "featurize_default",
        "train",
        "score_store",
        "score_images",
        "featurize_cluster",
    }
    assert all(p["status"] == "ok" for p in r["parts"].values()), r["parts"]
    d = r["parts"]["featurize_default"]["result"]
    assert d["residual_bins"] == 12 and d["compiled_compute"] > 0
    assert d["pipeline_over_compiled"] == round(d["pipeline"] / d["compiled_compute"], 3)
    assert set(r["parts"]["featurize_cluster"]["result"]["rates"]) == {"1", "2"}
    assert "| featurize | ok |" in (tmp_path / "gpu_check.md").read_text()


def test_a_budget_skips_the_parts_it_leaves_no_time_for_and_records_them(tmp_path):
    assert main(["--smoke", "--out", str(tmp_path), "--budget-s", "0.001", "--size", "score_rows=100"]) == 0
    r = json.loads((tmp_path / "gpu_check.json").read_text())
    assert r["sizes"]["score_rows"] == 100
    assert {p["status"] for p in r["parts"].values()} == {"skipped"}
    assert set(r["parts"]) == {
        "featurize_default",
        "train",
        "score_store",
        "featurize",
        "featurize_cluster",
        "score_images",
    }


def test_an_unknown_size_is_refused_by_name(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--smoke", "--out", str(tmp_path), "--size", "pixels=3"])
    assert "--size pixels=3" in capsys.readouterr().err
