import json

from typer.testing import CliRunner

from leakstore.cli import app
from leakstore.config import RunOptions
from leakstore.featurize.api import featurize
from leakstore.model.config import ModelConfig
from leakstore.model.train import train
from leakstore.store import FeatureStore
from tests.conftest import write_class_images


def test_sweep_featurizes_the_test_split_under_each_view_and_reports_them(tmp_path):
    data = write_class_images(tmp_path / "data", {"real": 14, "gen-a": 14, "gen-b": 14}, size=(64, 64))
    featurize(
        data,
        tmp_path / "s.zarr",
        vae="demo",
        resolution=64,
        timesteps=(0, 100),
        fft_size=4,
        residual_bins=0,
        period=0,
        spectrum_bins=0,
        noise_bins=0,
        opts=RunOptions(device="cpu", workers=0, progress=False),
    )
    train(tmp_path / "s.zarr", tmp_path / "run", ModelConfig(width=8, embed_dim=16, epochs=2), progress=False)
    args = [
        "sweep",
        str(tmp_path / "run"),
        "--views",
        "jpeg:75,resize:0.5+jpeg:90",
        "--out",
        str(tmp_path / "sw"),
        "--device",
        "cpu",
        "--workers",
        "0",
        "--no-progress",
    ]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "sw" / "metrics.json").read_text())
    assert [x["view"] for x in m["robustness"]] == ["none", "jpeg:75", "resize:0.5+jpeg:90"]
    test_rows = int((FeatureStore.open(tmp_path / "s.zarr").read("split") == 2).sum())
    v = FeatureStore.open(tmp_path / "sw" / "views" / "jpeg-75.zarr")
    assert v.n == test_rows and v.config.view == "jpeg:75" and (v.read("split") == 2).all()
    page = (tmp_path / "sw" / "report.html").read_text()
    assert "<h2>Robustness</h2>" in page and page.count("<tr><td>") >= 3 and "data:image/png;base64" in page
    stamp = (tmp_path / "sw" / "views" / "jpeg-75.zarr" / "status" / "c" / "0").stat().st_mtime_ns
    r = CliRunner().invoke(app, args + ["--json"])  # a rerun featurizes nothing again
    assert r.exit_code == 0, r.output
    assert (tmp_path / "sw" / "views" / "jpeg-75.zarr" / "status" / "c" / "0").stat().st_mtime_ns == stamp
    r = CliRunner().invoke(app, args[:3] + ["jpeg:500"])
    assert r.exit_code == 2 and "jpeg takes a value" in r.output
