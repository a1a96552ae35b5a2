import json

from safetensors.torch import load_file
from typer.testing import CliRunner

from leakstore.cli import app

runner = CliRunner()


def test_featurize_inspect_env(class_folders, tiny_vae_dir, tmp_path):
    (class_folders / "real" / "bad.jpg").write_bytes(b"junk")
    store = tmp_path / "s.zarr"
    args = [
        "featurize",
        str(class_folders),
        str(store),
        "--vae",
        str(tiny_vae_dir),
        "--resolution",
        "32",
        "--timesteps",
        "0,100",
        "--device",
        "cpu",
        "--workers",
        "0",
        "--no-progress",
        "--chunk-size",
        "8",
    ]
    r = runner.invoke(app, args + ["--json"])
    assert r.exit_code == 0, r.output
    rep = json.loads(r.output)
    assert rep["done"] == 29 and rep["failed"] == 1 and "not a recognised" in rep["failures"][0]["error"]
    r = runner.invoke(app, args + ["--strict"])
    assert r.exit_code == 1 and "0 images processed" in r.output  # resumed: nothing left, but a failure stands
    r = runner.invoke(app, ["inspect", str(store), "--json"])
    d = json.loads(r.output)
    assert r.exit_code == 0 and d["status"] == {"pending": 0, "done": 29, "failed": 1}
    assert d["per_class"]["real"]["failed"] == 1
    from leakstore.store import FAILED, FeatureStore

    s = FeatureStore.open(store)
    failed = s.status() == FAILED
    assert (s.read("sha256")[failed] == "").all() and all(len(h) == 64 for h in s.read("sha256")[~failed])
    r = runner.invoke(app, ["inspect", str(store)])
    assert "bad.jpg" in r.output and "gen-a" in r.output
    r = runner.invoke(app, ["env", "--json"])
    assert r.exit_code == 0 and "torch" in json.loads(r.output)["packages"]


def test_errors_are_one_line(class_folders, tmp_path):
    r = runner.invoke(
        app, ["featurize", str(class_folders), str(tmp_path / "s.zarr"), "--vae", "demo", "--shard", "two"]
    )
    assert r.exit_code == 2 and "--shard" in r.output and "Traceback" not in r.output
    r = runner.invoke(app, ["featurize", str(tmp_path / "missing"), str(tmp_path / "s.zarr"), "--vae", "demo"])
    assert r.exit_code == 2 and "does not exist" in r.output
    r = runner.invoke(app, ["inspect", str(tmp_path / "nothing.zarr")])
    assert r.exit_code == 2 and "leakstore featurize" in r.output
    r = runner.invoke(
        app, ["featurize", str(class_folders), str(tmp_path / "s.zarr"), "--vae", "sd21", "--device", "cpu"]
    )
    assert r.exit_code == 2 and "cannot load VAE" in r.output


def test_featurize_residual_and_train_without_it(class_folders, tmp_path):
    store = tmp_path / "r.zarr"
    r = runner.invoke(
        app,
        [
            "featurize",
            str(class_folders),
            str(store),
            "--vae",
            "demo",
            "--resolution",
            "64",
            "--timesteps",
            "0,100",
            "--fft-size",
            "4",
            "--device",
            "cpu",
            "--workers",
            "0",
            "--no-progress",
            "--residual",
            "--residual-bins",
            "4",
        ],
    )
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["inspect", str(store)])
    assert "reconstruction residual: 4 radial bins, decoder sha256:" in r.output
    d = json.loads(runner.invoke(app, ["inspect", str(store), "--json"]).output)
    assert d["arrays"]["residual"]["shape"] == [29, 3 * 4 + 3 + 8]
    r = runner.invoke(
        app,
        [
            "train",
            str(store),
            "--out",
            str(tmp_path / "run"),
            "--epochs",
            "1",
            "--width",
            "8",
            "--embed-dim",
            "16",
            "--no-residual",
            "--no-progress",
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    meta = json.loads((tmp_path / "run" / "model.json").read_text())
    assert meta["model_config"]["use_residual"] is False and meta["featurize_config"]["residual_bins"] == 4
    weights = load_file(str(tmp_path / "run" / "model.safetensors"))
    assert meta["model_config"]["members"] == 3 and len(json.loads(r.output)["members"]) == 3  # the default
    assert any(k.startswith("members.2.") for k in weights)
    assert not any(
        p == "res" or p.startswith("res_") for k in weights for p in k.split(".")
    )  # no residual branch in any member


def test_the_training_line_says_what_its_validation_figures_are_over(tmp_path):
    from leakstore.cli import _val_rows_note
    from tests.synthetic import planted_store

    planted_store(tmp_path / "s.zarr", per_class=8, chunk=16)
    assert _val_rows_note(tmp_path / "s.zarr", {"view_prob": None}) == ""  # rows are images as given
    note = _val_rows_note(tmp_path / "s.zarr", {"view_prob": 0.5})
    assert "training views included" in note and "per crop" not in note
