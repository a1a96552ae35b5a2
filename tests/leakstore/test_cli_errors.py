"""Every failure a user can cause ends in one line and a non-zero exit, never a traceback."""

import json

import pytest
from typer.testing import CliRunner

from leakstore import LeakstoreError
from leakstore.cli import app
from leakstore.model.config import ModelConfig
from leakstore.model.train import train
from tests.synthetic import CFG, planted_store

FAST = ModelConfig(width=8, embed_dim=16, epochs=2, batch_size=32)
runner = CliRunner()


def one_line_error(r, code=2):
    assert r.exit_code == code, r.output
    assert "Traceback" not in r.output and r.output.strip().count("\n") == 0, r.output
    return r.output


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    d = tmp_path_factory.mktemp("m")
    planted_store(d / "s.zarr", per_class=24)
    train(d / "s.zarr", d / "run", FAST, progress=False)
    return d


@pytest.mark.parametrize("damage", ["empty", "truncated", "missing", "garbage"])
@pytest.mark.parametrize("name", ["model.safetensors", "scorers.safetensors", "model.json"])
def test_a_damaged_model_file_is_one_line_everywhere(model, tmp_path, name, damage):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(model / "run", run)
    f = run / name
    if damage == "missing":
        f.unlink()
    else:
        f.write_bytes(
            b""
            if damage == "empty"
            else f.read_bytes()[: len(f.read_bytes()) // 2]
            if damage == "truncated"
            else b"\x00garbage{" * 10
        )
    store = str(model / "s.zarr")
    for args in (
        ["evaluate", str(run), store, "--out", str(tmp_path / "ev")],
        ["score", str(run), store, "--out", str(tmp_path / "p.parquet"), "--cluster", "1"],
    ):
        out = one_line_error(runner.invoke(app, args))
        assert name in out or "no trained model" in out
    from leakstore import Attributor

    with pytest.raises(LeakstoreError):
        Attributor.load(run)


@pytest.mark.parametrize(
    "args",
    [
        ["train", "S", "--out", "R", "--batch-size", "0"],
        ["train", "S", "--out", "R", "--protos-per-class", "0"],
        ["train", "S", "--out", "R", "--false-unknown-rate", "2"],
        ["train", "S", "--out", "R", "--epochs", "0"],
        ["featurize", "D", "S", "--batch-size", "-3"],
        ["featurize", "D", "S", "--train-views", "-1"],
        ["train", "S", "--out", "R", "--view-prob", "1.5"],
        ["openset-study", "S", "--out", "R", "--epochs", "0"],
    ],
)
def test_invalid_numbers_are_refused_at_parse_time(args):
    r = runner.invoke(app, args)
    assert r.exit_code == 2 and "Invalid value" in r.output and "Traceback" not in r.output


def test_resume_onto_another_store_is_refused_in_one_line(model, tmp_path):
    import shutil

    planted_store(tmp_path / "other.zarr", per_class=24, cfg=CFG.replace(timesteps=(0, 200, 500)))
    run = tmp_path / "run"
    shutil.copytree(model / "run", run)
    (run / "model.json").unlink()  # as after Ctrl-C: only the training state exists
    out = one_line_error(
        runner.invoke(
            app,
            ["train", str(tmp_path / "other.zarr"), "--out", str(run), "--resume", "--epochs", "3", "--no-progress"],
        )
    )
    assert "cannot resume" in out and "features" in out
    state = json.loads((run / "train_state.json").read_text())
    assert state["origin"]["featurize_hash"] == CFG.hash  # the interrupted run's state is untouched


def test_a_resume_with_more_epochs_on_the_same_store_continues(model, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(model / "run", run)
    r = runner.invoke(
        app,
        [
            "train",
            str(model / "s.zarr"),
            "--out",
            str(run),
            "--resume",
            "--epochs",
            "3",
            "--width",
            "8",
            "--embed-dim",
            "16",
            "--batch-size",
            "32",
            "--no-progress",
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    s = json.loads(r.output)
    assert s["epochs_run"] == 3 and 0 < s["samples_per_s"] < 1e6


def test_score_checks_out_and_the_model_before_any_work(model, tmp_path, monkeypatch):
    def no_cluster(*a, **k):
        raise AssertionError("a cluster was started before the checks")

    monkeypatch.setattr("leakstore.pipelines.score.connect", no_cluster)
    out = one_line_error(
        runner.invoke(app, ["score", str(model / "run"), str(model / "s.zarr"), "--out", str(tmp_path)])
    )
    assert "is a directory" in out
    out = one_line_error(
        runner.invoke(
            app, ["score", str(tmp_path / "nomodel"), str(model / "s.zarr"), "--out", str(tmp_path / "p.parquet")]
        )
    )
    assert "no trained model" in out


@pytest.mark.slow
def test_an_unreachable_scheduler_is_one_line(model, tmp_path, monkeypatch):
    from leakstore.pipelines import cluster

    monkeypatch.setattr(cluster, "CONNECT_TIMEOUT_S", 2)  # the message and the wait, not dask's retry loop
    out = one_line_error(
        runner.invoke(
            app,
            [
                "score",
                str(model / "run"),
                str(model / "s.zarr"),
                "--out",
                str(tmp_path / "p.parquet"),
                "--scheduler",
                "tcp://127.0.0.1:9",
            ],
        )
    )
    assert "cannot reach the dask scheduler at tcp://127.0.0.1:9 within 2 s" in out
