"""The scale and contention benchmarks run end to end at toy size (their figures are measured, not asserted)."""

import json

import pytest


@pytest.mark.slow
def test_bench_scale_writes_one_entry_per_size(tmp_path):
    from benchmarks.bench_scale import main

    main(
        [
            "--rows",
            "256,512",
            "--epoch-samples",
            "128",
            "--workers",
            "1",
            "--width",
            "8",
            "--embed-dim",
            "16",
            "--dir",
            str(tmp_path / "w"),
            "--json",
            str(tmp_path / "scale.json"),
        ]
    )
    r = json.loads((tmp_path / "scale.json").read_text())
    for key in (
        "train_peak_rss_mb",
        "score_client_peak_rss_mb",
        "train_samples_per_s",
        "in_memory_samples_per_s",
        "score_rows_per_s",
    ):
        assert len(r[key]) == 2 and all(v > 0 for v in r[key]), key
    assert r["rows"] == [256, 512] and set(r["growth"]) == {"train_peak_rss_mb", "score_client_peak_rss_mb"}
    from leakstore.store import FeatureStore

    st = FeatureStore.open(tmp_path / "w" / "store-512.zarr")
    assert st.config.resolution == 256 and st.config.latent_shape == (4, 32, 32) and st.config.residual_bins > 0


@pytest.mark.slow
def test_bench_contention_measures_every_arm_idle_and_busy(tmp_path):
    from benchmarks.bench_contention import ARMS, main
    from tests.synthetic import planted_store

    planted_store(tmp_path / "s.zarr", per_class=12)
    main(
        [
            "--store",
            str(tmp_path / "s.zarr"),
            "--busy",
            "1",
            "--epochs",
            "1",
            "--dir",
            str(tmp_path / "w"),
            "--json",
            str(tmp_path / "c.json"),
        ]
    )
    r = json.loads((tmp_path / "c.json").read_text())
    assert set(r["idle"]) == set(r["busy"]) == set(r["ratio"]) == set(ARMS)
    assert all(v > 0 for v in r["idle"].values())
