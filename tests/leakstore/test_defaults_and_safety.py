"""One home for every default, and outputs that never take the user's files with them."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from leakstore.cli import app
from leakstore.config import FeaturizeConfig, RunOptions, defaults
from leakstore.model.config import ModelConfig

runner = CliRunner()


class Captured(Exception):
    pass


def _capture(monkeypatch, target: str):
    seen = {}

    def fake(*args, **kw):
        seen["args"], seen["kw"] = args, kw
        raise Captured

    monkeypatch.setattr(target, fake)
    return seen


def test_cli_and_python_featurize_build_the_same_config(class_folders, tmp_path, monkeypatch):
    seen = _capture(monkeypatch, "leakstore.featurize.api.featurize_store")
    r = runner.invoke(
        app, ["featurize", str(class_folders), str(tmp_path / "cli.zarr"), "--vae", "demo", "--device", "cpu"]
    )
    assert isinstance(r.exception, Captured), r.output
    catalog, _, cli_cfg, _, cli_opts = seen["args"]
    from leakstore.featurize.api import featurize

    with pytest.raises(Captured):
        featurize(class_folders, tmp_path / "py.zarr", vae="demo", device="cpu")
    _, _, py_cfg, _, py_opts = seen["args"]
    assert cli_cfg == py_cfg and cli_cfg.hash == py_cfg.hash
    # the defaults are the dataclass's: the residual, the periodicity and the pixel spectrum are on
    d = defaults(FeaturizeConfig)
    assert (py_cfg.residual_bins, py_cfg.period, py_cfg.spectrum_bins) == (
        d["residual_bins"],
        d["period"],
        d["spectrum_bins"],
    )
    assert py_cfg.residual_bins > 0 and py_cfg.period > 0 and py_cfg.spectrum_bins > 0 and py_cfg.noise_bins > 0
    assert py_cfg.timesteps == d["timesteps"] and py_cfg.resolution == d["resolution"]
    keep = lambda o: {k: v for k, v in vars(o).items() if k not in ("device", "progress")}  # noqa: E731
    assert keep(cli_opts) == keep(py_opts) == keep(RunOptions())


def test_cli_train_builds_the_default_model_config(tmp_path, monkeypatch):
    seen = _capture(monkeypatch, "leakstore.model.train.train")
    r = runner.invoke(app, ["train", str(tmp_path / "s.zarr"), "--out", str(tmp_path / "run")])
    assert isinstance(r.exception, Captured), r.output
    assert seen["args"][2] == ModelConfig()
    assert seen["kw"]["device"] == RunOptions().device


@pytest.mark.parametrize("command", ["train", "openset-study"])
def test_every_model_option_sets_its_config_field_with_the_fields_default(command):
    """train and openset-study options are checked against ModelConfig: an option named like a field
    (or renamed in MODEL_OPTIONS) defaults to the field's default; a field's option is never dropped."""
    import dataclasses

    import typer.main

    from leakstore.cli import MODEL_OPTIONS

    fields = {f.name: f for f in dataclasses.fields(ModelConfig)}
    d = defaults(ModelConfig)
    params = typer.main.get_command(app).commands[command].params
    seen = set()
    for p in params:
        field = MODEL_OPTIONS.get(p.name, p.name)
        if field in fields and not (command == "openset-study" and field == "epochs"):  # per fold, its own
            default = p.default.value if hasattr(p.default, "value") else p.default
            if field != "open_scorer":  # None: chosen by --outliers (default_open_scorer)
                assert default == d[field], (command, p.name)
            seen.add(field)
    assert seen >= {"members", "seed", "false_unknown_rate", "open_temperature", "view_prob", "use_residual"}


def test_a_config_error_names_the_flag_on_the_command_line_and_the_field_in_python(class_folders, tmp_path):
    from leakstore.errors import ConfigFieldError

    args = [
        "featurize",
        str(class_folders),
        str(tmp_path / "s.zarr"),
        "--vae",
        "demo",
        "--crops",
        "3",
        "--device",
        "cpu",
    ]
    r = runner.invoke(app, args)
    assert r.exit_code == 2 and "--crops 3: give a square number" in r.output, r.output
    with pytest.raises(ConfigFieldError, match="crops = 3: give a square number"):
        FeaturizeConfig(vae=_demo_vae(), crops=3, residual_bins=0)


def _demo_vae():
    from leakstore.config import VAEIdentity

    return VAEIdentity(name="x", source="builtin", kind="kl", latent_channels=4, downsample=8)


def test_a_bad_choice_is_one_line_not_a_traceback(tmp_path):
    r = runner.invoke(app, ["evaluate", str(tmp_path), str(tmp_path), "--split", "validation"])
    assert r.exit_code == 2
    assert "validation" in r.output and "Traceback" not in r.output


def test_featurize_overwrite_never_deletes_a_folder_that_is_not_a_store(class_folders):
    before = sorted(p.relative_to(class_folders) for p in class_folders.rglob("*"))
    r = runner.invoke(
        app,
        [
            "featurize",
            str(class_folders),
            str(class_folders),
            "--vae",
            "demo",
            "--overwrite",
            "--device",
            "cpu",
            "--no-progress",
        ],
    )
    assert r.exit_code == 2, r.output
    line = r.output.strip()
    assert "\n" not in line and "not a leakstore feature store" in line and "deleted nothing" in line
    assert sorted(p.relative_to(class_folders) for p in class_folders.rglob("*")) == before


def test_overwrite_replaces_a_store_and_an_empty_folder(class_folders, tmp_path):
    args = [
        str(class_folders),
        "--vae",
        "demo",
        "--resolution",
        "32",
        "--timesteps",
        "0,100",
        "--fft-size",
        "2",
        "--no-residual",
        "--period",
        "0",
        "--pixel-spectrum",
        "0",
        "--noise-spectrum",
        "0",
        "--device",
        "cpu",
        "--no-progress",
        "--workers",
        "0",
        "--overwrite",
    ]
    (tmp_path / "empty").mkdir()
    for target in ("empty", "empty"):  # an empty folder, then the store made there
        r = runner.invoke(app, ["featurize", args[0], str(tmp_path / target), *args[1:]])
        assert r.exit_code == 0, r.output


def test_score_never_replaces_a_file_it_did_not_write(tmp_path):
    from leakstore.errors import InputError
    from leakstore.pipelines.score import check_out

    notes = tmp_path / "notes.csv"
    notes.write_text("a,b\n1,2\n")
    with pytest.raises(InputError, match="not a Parquet file"):
        check_out(notes)
    assert notes.read_text() == "a,b\n1,2\n"
    parts = tmp_path / "p.parquet.parts"
    parts.mkdir()
    (parts / "thesis.tex").write_text("x")
    with pytest.raises(InputError, match="not made by leakstore score"):
        check_out(tmp_path / "p.parquet")
    assert (parts / "thesis.tex").exists()
