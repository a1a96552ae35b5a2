"""`leakstore calibrate`: the unknown threshold set on the user's own known images."""

import json
import shutil

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from leakstore.api.predictor import Predictor
from leakstore.cli import app
from leakstore.errors import InputError
from leakstore.model.config import ModelConfig
from leakstore.model.predict import image_threshold
from leakstore.model.train import train
from leakstore.pipelines.calibrate import calibrate
from leakstore.store import FeatureStore
from tests.synthetic import planted_store


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp("cal")
    planted_store(d / "s.zarr", per_class=40, chunk=16)  # 4 classes x (24 train, 8 val, 8 test)
    g = zarr.open_group(str(d / "s.zarr"), mode="r+")
    g["sha256"][:] = np.array([f"{i + 1:016x}" + "0" * 48 for i in range(160)])  # each row its own image
    train(d / "s.zarr", d / "run", ModelConfig(width=8, embed_dim=16, epochs=2, members=1), progress=False)
    return d


def flagged(run_dir, store, split_codes=(1, 2)) -> float:
    pr = Predictor.load(run_dir, "cpu")
    s = FeatureStore.open(store)
    df = pr.score_store(store, 0, s.n)
    keep = np.isin(s.read("split"), split_codes)
    return float(df.is_unknown.to_numpy(bool)[keep].mean())


def test_calibrate_sets_the_threshold_to_flag_the_asked_share_of_the_images_given(run, tmp_path):
    """The copy's threshold flags the asked share of the known images it was set on (the training images
    left out: the networks learned them); the run it was copied from is unchanged; model.json records it."""
    before = image_threshold(Predictor.load(run / "run", "cpu").bundle)
    info = calibrate(run / "run", [run / "s.zarr"], rate=0.25, out=tmp_path / "cal", device="cpu")
    assert info["images"] == 64 and info["left_out_trained"] == 96 and info["previous"] == before
    assert info["ci_over"] == "images" and info["flag_rate_per_group"] is None  # no prompts to spread over
    assert abs(flagged(tmp_path / "cal", run / "s.zarr") - 0.25) <= 1 / 64 + 1e-9
    assert image_threshold(Predictor.load(run / "run", "cpu").bundle) == before  # the original untouched
    meta = json.loads((tmp_path / "cal" / "model.json").read_text())
    assert meta["calibration"]["threshold"] == info["threshold"] != before
    # calibrated again (in place, on the validation split at 50 %): the training threshold is remembered
    again = calibrate(tmp_path / "cal", [run / "s.zarr"], rate=0.5, split="val", device="cpu")
    assert again["images"] == 32 and again["previous"] == info["threshold"] and again["training_threshold"] == before
    assert abs(flagged(tmp_path / "cal", run / "s.zarr", (1,)) - 0.5) <= 1 / 32 + 1e-9
    # both held-out splits: the validation and the test images, as the default's every-split minus training
    both = calibrate(tmp_path / "cal", [run / "s.zarr"], rate=0.25, split="val+test", device="cpu")
    assert both["images"] == 64 and both["threshold"] == pytest.approx(info["threshold"], abs=1e-12)


def test_over_prompts_calibrate_says_how_far_one_prompts_rate_strays(run, tmp_path):
    shutil.copytree(run / "s.zarr", tmp_path / "g.zarr")
    g = zarr.open_group(str(tmp_path / "g.zarr"), mode="r+")
    g["group"][:] = np.array([f"p{i % 8}" for i in range(160)], dtype=object).astype(g["group"].dtype)
    info = calibrate(run / "run", [tmp_path / "g.zarr"], rate=0.25, out=tmp_path / "cal", device="cpu")
    lo, hi = info["flag_rate_per_group"]
    assert info["ci_over"] == "8 groups" and lo <= 0.25 <= hi and info["flag_rate_ci"][0] <= 0.25
    # score's summary of the calibrated model gives the same spread beside the interval
    out = tmp_path / "p.parquet"
    r = CliRunner().invoke(
        app,
        ["score", str(tmp_path / "cal"), str(tmp_path / "g.zarr"), "--out", str(out), "--cluster", "1"]
        + ["--no-progress"],
    )
    assert r.exit_code == 0, r.output
    assert f"over 8 groups, {lo:.1%}-{hi:.1%} one group at a time (10th-90th percentile))" in r.output


def test_calibrate_refuses_too_few_images_and_a_folder_in_use(run, tmp_path):
    with pytest.raises(InputError, match=r"32 known images .* too few .*at least 200"):
        calibrate(run / "run", [run / "s.zarr"], rate=0.01, split="val", out=tmp_path / "c", device="cpu")
    assert not (tmp_path / "c").exists()  # nothing written
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "x").write_text("")
    with pytest.raises(InputError, match="not empty"):
        calibrate(run / "run", [run / "s.zarr"], out=tmp_path / "busy", device="cpu")


def test_score_and_evaluate_say_the_threshold_was_calibrated(run, tmp_path):
    r = CliRunner().invoke(
        app,
        ["calibrate", str(run / "run"), str(run / "s.zarr"), "--rate", "0.2", "--out", str(tmp_path / "cal")]
        + ["--device", "cpu"],
    )
    assert r.exit_code == 0, r.output
    assert "flagging 20.0% of 64 known images" in r.output and "96 images the networks trained on left out" in r.output
    r = CliRunner().invoke(app, ["evaluate", str(tmp_path / "cal"), str(run / "s.zarr"), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert "set by `leakstore calibrate` to flag 20.0% of 64 known images" in r.output
    assert f"NOTE: {run / 's.zarr'} set the unknown threshold" in r.output
    m = json.loads((tmp_path / "cal" / "eval" / "metrics.json").read_text())
    asked = m["views"][0]["open"]["false_unknown_rate"]
    assert asked["asked"] == 0.2 and asked["validation"] is None  # the training threshold's figure is gone
    page = (tmp_path / "cal" / "eval" / "report.html").read_text()
    assert "Unknown threshold set by <code>leakstore calibrate</code> to flag 20.0% of 64" in page
    assert "<b>Calibrated here:</b>" in page
    out = tmp_path / "p.parquet"
    r = CliRunner().invoke(
        app, ["score", str(tmp_path / "cal"), str(run / "s.zarr"), "--out", str(out), "--cluster", "1", "--no-progress"]
    )
    assert r.exit_code == 0, r.output
    assert "below the threshold `leakstore calibrate` set to flag 20.0% of 64 known images of yours" in r.output
