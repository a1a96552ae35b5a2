"""The geometry probe: between-generator distances against the train-to-test content shift."""
import json

from pipelines.probe_geometry import main, probe
from tests.synthetic import CFG_RESIDUAL, planted_store


def test_generators_farther_apart_than_content_moves_them_are_found_by_sets(tmp_path, capsys):
    planted_store(tmp_path / "s.zarr", per_class=60, cfg=CFG_RESIDUAL, residual_strength=0.5, strength=0.8)
    r = probe(tmp_path / "s.zarr", set_sizes=(1, 4), draws=100)
    assert r["features"] == ["latent mean", "latent log std", "residual"]
    assert sorted(r["between"]) == ["gen-a", "gen-b", "gen-c", "real"]
    # planted test rows are new draws of the same generators: they move less than the generators differ
    assert r["shift_range"][1] < r["between_range"][0]
    for g, v in r["set_auroc"].items():
        assert v[4] >= 0.9 and v[4] >= v[1] - 0.05, (g, v)
    main([str(tmp_path / "s.zarr"), "--set-sizes", "1,4", "--json"])
    assert json.loads(capsys.readouterr().out)["dims"] == r["dims"]
