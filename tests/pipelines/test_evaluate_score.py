"""Evaluation report, dask scoring (equal to in-process, lazy, robust to a killed worker), the API."""

import os

import numpy as np
import pandas as pd
import pytest
from distributed import Client
from typer.testing import CliRunner

from leakstore import Attributor
from leakstore.cli import app
from leakstore.config import RunOptions
from leakstore.featurize.api import featurize
from leakstore.model.checkpoint import load_bundle
from leakstore.model.config import ModelConfig
from leakstore.model.predict import predict
from leakstore.model.train import train
from leakstore.pipelines.cluster import local_cluster
from leakstore.pipelines.evaluate import evaluate
from leakstore.pipelines.score import score, scoring_frame
from leakstore.store import FeatureStore
from tests.conftest import write_class_images
from tests.synthetic import planted_store

FAST = ModelConfig(width=8, embed_dim=16, epochs=3, batch_size=32)


@pytest.fixture(scope="module")
def cluster():
    with local_cluster(2) as c, Client(c) as cl:
        yield cl


def test_a_local_cluster_leaves_the_callers_environment_as_it_was():
    """dask's nannies write OMP_NUM_THREADS=1 (and more) into the process that starts them, at every
    worker spawn: without the restore every process started afterwards ran one thread."""
    before = dict(os.environ)
    with local_cluster(1) as c, Client(c) as cl:
        assert dict(os.environ) == before
        cl.restart()  # a respawn writes them again
    assert dict(os.environ) == before


def test_local_cluster_workers_keep_glibc_dynamic_mmap_threshold_and_one_thread(cluster):
    env = cluster.run(lambda: (os.environ.get("MALLOC_TRIM_THRESHOLD_"), os.environ.get("OMP_NUM_THREADS")))
    assert len(env) == 2 and set(env.values()) == {(None, "1")}


def test_local_cluster_workers_know_how_many_they_are_and_their_number(cluster):
    """What worker_device spreads GPU workers by: the cluster's size and each worker's number."""
    seen = cluster.run(lambda dask_worker: (os.environ.get("LEAKSTORE_LOCAL_WORKERS"), dask_worker.name))
    assert sorted(seen.values()) == [("2", 0), ("2", 1)]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    d = tmp_path_factory.mktemp("m")
    planted_store(d / "s.zarr", per_class=40, chunk=16)
    train(d / "s.zarr", d / "run", FAST, unknown_labels=["gen-c"], progress=False)
    return d


@pytest.fixture(scope="module")
def image_model(tmp_path_factory):
    """A model trained on real image files through the built-in demo encoder."""
    d = tmp_path_factory.mktemp("img")
    data = write_class_images(d / "data", {"real": 12, "gen-a": 12, "gen-b": 12}, size=(64, 64))
    featurize(
        data,
        d / "s.zarr",
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
    train(d / "s.zarr", d / "run", FAST, progress=False)
    return d


def test_evaluate_writes_metrics_plots_report(model, tmp_path):
    s = evaluate(model / "run", [model / "s.zarr"], tmp_path / "eval")
    for f in (
        "metrics.json",
        "predictions.parquet",
        "report.html",
        "confusion.png",
        "roc.png",
        "embedding.png",
        "attention.png",
    ):
        assert (tmp_path / "eval" / f).stat().st_size > 0, f
    # one view: no robustness chart of a single point, but the command that measures robustness
    assert not (tmp_path / "eval" / "robustness.png").exists()
    assert f"leakstore sweep {model / 'run'}" in (tmp_path / "eval" / "report.html").read_text()
    v = s["views"][0]
    assert v["closed"]["n"] == 24 and v["open"]["n_unknown"] == 8 and 0 <= v["open"]["auroc"] <= 1
    df = pd.read_parquet(tmp_path / "eval" / "predictions.parquet")
    assert len(df) == 32 and df.true_is_unknown.sum() == 8
    html = (tmp_path / "eval" / "report.html").read_text()
    assert "data:image/png;base64" in html and "BUILT-IN DEMO ENCODER" in html
    # a store of latents and spectra only: what the networks and the attribution's discriminant read (its
    # channel statistics come from the latents), nothing the store lacks, as before the discriminant
    assert s["inputs"] == ["latents", "spectra"] and "inputs: latents, spectra;" in html
    assert s["discriminant"] == 0.2
    assert s["networks"] == 3 and "3 networks joined (train --members)" in html  # the default model
    assert "Prototypes (stars) lie" in html and s["open_temperature"] == 1.0
    assert ("soft minimum, temperature 1" in html) == (len(s["open_components"]) > 1)
    # each view says how many known images it flags: a re-encoded known image should stay known
    assert s["robustness"][0]["known_flagged"] == v["open"]["known_flagged"]
    assert "known flagged unknown" in html and f"{v['open']['known_flagged']:.1%}" in html
    # every figure with its 95 % interval, and what was resampled
    r = s["robustness"][0]
    lo, hi = r["macro_auc_ci"]
    assert lo <= r["macro_auc"] <= hi and f"{lo:.3f}-{hi:.3f}" in html
    lo, hi = r["known_flagged_ci"]
    assert lo <= r["known_flagged"] <= hi
    assert s["ci"].startswith("95 % bootstrap intervals over") and "Small figures: 95 %" in html


def test_the_prototype_note_measures_distances_in_the_full_embedding():
    from leakstore.pipelines.report import _prototype_note

    emb = np.array([[0.0, 0], [2, 0], [10, 0], [10, 2]])  # class 0 around (1, 0), class 1 around (10, 1)
    y = np.array([0, 0, 1, 1])
    protos, cls = np.array([[1.0, 3], [10, -2]]), np.array([0, 1])
    note = _prototype_note(emb, y, protos, cls)
    assert "lie 3.0 on average" in note and "images lie 1.0 from theirs" in note


def test_scoring_is_lazy(model):

    ddf = scoring_frame(model / "run", model / "s.zarr")
    assert ddf.npartitions == 10 and list(ddf.columns[:3]) == ["path", "status", "error"]
    assert "p_gen-a" in ddf.columns
    # building the graph ran no task: the worker-side loader cache is still empty
    from leakstore.pipelines import score as sc

    assert not any(k.startswith(str((model / "run").resolve())) for k in sc._PREDICTORS)


def test_dask_scoring_equals_in_process(model, cluster):
    df = score(model / "run", model / "s.zarr", client=cluster, progress=False)
    b = load_bundle(model / "run")
    p = predict(b, FeatureStore.open(model / "s.zarr").load())
    assert list(df.row) == list(range(160)) and (df.status == "ok").all()
    np.testing.assert_allclose(df[[f"p_{c}" for c in b.class_names]].to_numpy(), p["proba"], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(df.open_score.to_numpy(), p["open_score"], rtol=1e-4, atol=1e-5)


def test_a_killed_worker_loses_and_duplicates_nothing(model, cluster):
    import signal
    import time

    pids = cluster.run(os.getpid)
    fut = cluster.compute(scoring_frame(model / "run", model / "s.zarr"))
    deadline = time.time() + 30
    while not cluster.processing() or not any(cluster.processing().values()):
        assert time.time() < deadline, "no task started"
        time.sleep(0.01)
    os.kill(next(iter(pids.values())), signal.SIGKILL)  # a worker dies mid-job; its nanny restarts it
    df = fut.result(timeout=120)
    assert sorted(df.row) == list(range(160)) and df.row.is_unique
    cluster.wait_for_workers(2, timeout=60)


def test_failed_rows_are_reported_not_guessed(model, tmp_path, cluster):
    import shutil

    import zarr

    shutil.copytree(model / "s.zarr", tmp_path / "s.zarr")
    g = zarr.open_group(str(tmp_path / "s.zarr"), mode="r+")
    g["status"][3] = 2
    g["error"][3] = "corrupt image data"
    df = score(model / "run", tmp_path / "s.zarr", client=cluster, progress=False)
    assert len(df) == 160 and df.status[3] == "failed" and df.error[3] == "corrupt image data"
    assert np.isnan(df["p_real"][3]) and (df.status[df.index != 3] == "ok").all()


def test_api_and_raw_image_scoring(image_model, cluster):
    a = Attributor.load(image_model / "run")
    img = next((image_model / "data" / "gen-a").glob("*.png"))
    r = a.score(img)
    assert r["status"] == "ok" and r["nearest_generator"] in a.classes and r["builtin_encoder"]
    assert abs(sum(r["probabilities"].values()) - 1) < 1e-6 and len(r["nearest_prototypes"]) == 3
    (image_model / "data" / "gen-a" / "broken.png").write_bytes(b"not an image")
    df = a.score_many(image_model / "data")
    assert len(df) == 37 and (df.status == "failed").sum() == 1
    assert "not a recognised" in df.error[df.status == "failed"].iloc[0]
    dd = score(image_model / "run", image_model / "data", client=cluster, progress=False)
    assert list(dd.path) == list(df.path)
    ok = df.status == "ok"
    np.testing.assert_allclose(dd.confidence[ok].to_numpy(), df.confidence[ok].to_numpy(), rtol=1e-4, atol=1e-6)
    # tolerances: the workers run one torch thread, this process two; reductions differ in the last bits
    (image_model / "data" / "gen-a" / "broken.png").unlink()


def test_cli_train_evaluate_score(tmp_path):
    planted_store(tmp_path / "s.zarr", per_class=20)
    runner = CliRunner()
    r = runner.invoke(
        app,
        [
            "train",
            str(tmp_path / "s.zarr"),
            "--out",
            str(tmp_path / "run"),
            "--epochs",
            "2",
            "--width",
            "8",
            "--embed-dim",
            "16",
            "--unknown-labels",
            "gen-c",
            "--no-progress",
        ],
    )
    assert r.exit_code == 0, r.output
    assert "model saved" in r.output
    r = runner.invoke(app, ["evaluate", str(tmp_path / "run"), str(tmp_path / "s.zarr"), "--json"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(
        app,
        [
            "score",
            str(tmp_path / "run"),
            str(tmp_path / "s.zarr"),
            "--out",
            str(tmp_path / "p.parquet"),
            "--cluster",
            "1",
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    assert len(pd.read_parquet(tmp_path / "p.parquet")) == 80
    r = runner.invoke(app, ["score", str(tmp_path / "nomodel"), str(tmp_path / "s.zarr")])
    assert r.exit_code == 2 and "no trained model" in r.output


def test_a_residual_model_scores_raw_images_as_it_scores_its_store(tmp_path, cluster):
    """Raw images are featurized with the model's recorded config, decoder included: the API and
    dask give the probabilities that the store's own features give."""
    data = write_class_images(tmp_path / "data", {"real": 10, "gen-a": 10, "gen-b": 10}, size=(64, 64))
    featurize(
        data,
        tmp_path / "s.zarr",
        vae="demo",
        resolution=64,
        timesteps=(0, 100),
        fft_size=4,
        residual_bins=6,
        period=0,
        spectrum_bins=0,
        noise_bins=0,
        opts=RunOptions(device="cpu", workers=0, progress=False),
    )
    train(tmp_path / "s.zarr", tmp_path / "run", FAST, progress=False)
    b = load_bundle(tmp_path / "run")
    assert b.featurize.residual_bins == 6 and "residual" in b.net.inputs
    store = FeatureStore.open(tmp_path / "s.zarr")
    want = predict(b, store.load())["proba"]
    paths = [str(p) for p in store.read("path")]
    api = Attributor.load(tmp_path / "run").score_many(paths)
    cols = [f"p_{c}" for c in b.class_names]
    np.testing.assert_allclose(api[cols].to_numpy(float), want, rtol=1e-4, atol=1e-5)
    dd = score(tmp_path / "run", paths, client=cluster, progress=False)
    np.testing.assert_allclose(dd[cols].to_numpy(float), want, rtol=1e-4, atol=1e-5)


def test_a_model_that_ignores_the_residual_loads_no_decoder_to_score_images(tmp_path):
    """A --no-residual model trained on a residual store reads latents and spectra only: scoring raw
    images must not pay for the decoder pass (~3x the featurize cost), and must still give the
    probabilities the store's own features give."""
    data = write_class_images(tmp_path / "data", {"real": 10, "gen-a": 10, "gen-b": 10}, size=(64, 64))
    featurize(
        data,
        tmp_path / "s.zarr",
        vae="demo",
        resolution=64,
        timesteps=(0, 100),
        fft_size=4,
        residual_bins=6,
        period=0,
        spectrum_bins=0,
        noise_bins=0,
        opts=RunOptions(device="cpu", workers=0, progress=False),
    )
    train(tmp_path / "s.zarr", tmp_path / "run", FAST.replace(use_residual=False), progress=False)
    a = Attributor.load(tmp_path / "run")
    assert "residual" not in a.bundle.net.inputs
    assert a.encoder.decoder is None
    store = FeatureStore.open(tmp_path / "s.zarr")
    want = predict(a.bundle, store.load())["proba"]
    got = a.score_many([str(p) for p in store.read("path")])
    np.testing.assert_allclose(got[[f"p_{c}" for c in a.classes]].to_numpy(float), want, rtol=1e-4, atol=1e-5)


def test_evaluate_scores_images_from_outside_the_training_store_per_label(model, tmp_path):
    # another draw of the same planted generators, plus one the model never saw (gen-x)
    planted_store(
        tmp_path / "x.zarr", classes=("real", "gen-a", "gen-b", "gen-c", "gen-x"), per_class=20, seed=5, strength=1.5
    )
    r = CliRunner().invoke(
        app,
        [
            "evaluate",
            str(model / "run"),
            str(model / "s.zarr"),
            "--unseen",
            str(tmp_path / "x.zarr"),
            "--out",
            str(tmp_path / "ev"),
        ],
    )
    assert r.exit_code == 0, r.output
    import json

    u = json.loads((tmp_path / "ev" / "metrics.json").read_text())["unseen"]
    per = u["per_generator"]
    assert set(per) == {"real", "gen-a", "gen-b", "gen-c", "gen-x"}
    # every row of an outside store counts (20), not only the rows its own split calls test (4)
    assert per["gen-x"]["n"] == 20 and 0 <= per["gen-x"]["auroc"] <= 1 and not per["gen-x"]["known_class"]
    assert per["real"]["known_class"] and "auroc" not in per["real"] and 0 <= per["real"]["called_correctly"] <= 1
    assert u["min_auroc"] <= u["mean_auroc"]
    assert (
        "gen-x" in r.output
        and "Images from outside the training store" in (tmp_path / "ev" / "report.html").read_text()
    )
    # the training store itself as --unseen (gen-c held out): its test rows only, the others trained the model
    r = CliRunner().invoke(
        app,
        [
            "evaluate",
            str(model / "run"),
            str(model / "s.zarr"),
            "--unseen",
            str(model / "s.zarr"),
            "--out",
            str(tmp_path / "ev2"),
        ],
    )
    assert r.exit_code == 0, r.output
    per = json.loads((tmp_path / "ev2" / "metrics.json").read_text())["unseen"]["per_generator"]
    assert per["gen-c"]["n"] == 8


def test_evaluate_sets_outside_images_against_every_views_known_images(model, tmp_path):
    """With a second store (the known test images re-saved, say), each outside label is also judged
    against that store's known rows: the same store twice gives the same AUROC; another draw of
    the known generators, whose known rows lie nearer the outside ones, another one."""
    import json

    planted_store(
        tmp_path / "x.zarr", classes=("real", "gen-a", "gen-b", "gen-c", "gen-x"), per_class=20, seed=5, strength=1.5
    )
    # the known generators drawn weakly: their rows lie nearer every other generator's
    planted_store(tmp_path / "weak.zarr", per_class=40, seed=11, strength=0.3)
    stores = [str(model / "s.zarr"), str(model / "s.zarr"), str(tmp_path / "weak.zarr")]
    r = CliRunner().invoke(
        app,
        ["evaluate", str(model / "run"), *stores, "--unseen", str(tmp_path / "x.zarr"), "--out", str(tmp_path / "ev")],
    )
    assert r.exit_code == 0, r.output
    u = json.loads((tmp_path / "ev" / "metrics.json").read_text())["unseen"]
    x = u["per_generator"]["gen-x"]
    same, weak = "none (s.zarr)", "none (weak.zarr)"
    assert set(x["auroc_by_view"]) == {same, weak}
    assert x["auroc_by_view"][same] == pytest.approx(x["auroc"], abs=1e-12)
    assert x["auroc_by_view"][weak] < x["auroc"]  # weakly drawn known images are harder to tell from gen-x
    assert "auroc_by_view" not in u["per_generator"]["real"]  # a known label is not an outside generator
    lo, hi = x["auroc_ci"]
    assert lo <= x["auroc"] <= hi and f"AUROC {x['auroc']:.3f} ({lo:.3f}-{hi:.3f})" in r.output
    assert u["mean_auroc_by_view"][same] == pytest.approx(u["mean_auroc"], abs=1e-12)
    assert f"against {same}" in r.output and f"AUROC against {weak}" in (tmp_path / "ev" / "report.html").read_text()
    # the robustness table names each judged store where their views alone would read "none" three times
    rows = json.loads((tmp_path / "ev" / "metrics.json").read_text())["robustness"]
    assert [x["view"] for x in rows] == [same, same, weak]
    assert [x["store"] for x in rows] == stores
    df = pd.read_parquet(tmp_path / "ev" / "predictions.parquet")
    assert (df.view == "none").all() and set(df.store) == {stores[0], stores[2]}
    first = df[df.store == stores[0]]  # judged twice: each of its images twice
    assert (
        len(first) == 2 * first.path.nunique()
        and (df.store == stores[2]).sum() == df[df.store == stores[2]].path.nunique()
    )
    table = r.output.split("macro AUC (95 % CI)")[1]
    assert [ln.split()[:3] for ln in table.splitlines()[1:4]] == [
        ["none", "(s.zarr)", f"{rows[0]['macro_auc']:.4f}"]
    ] * 2 + [["none", "(weak.zarr)", f"{rows[2]['macro_auc']:.4f}"]]


def test_evaluate_refuses_an_outside_store_featurized_with_another_config(model, tmp_path):
    from tests.synthetic import CFG

    planted_store(tmp_path / "other.zarr", per_class=10, cfg=CFG.replace(seed=1))  # other forward-diffusion noise
    r = CliRunner().invoke(
        app,
        [
            "evaluate",
            str(model / "run"),
            str(model / "s.zarr"),
            "--unseen",
            str(tmp_path / "other.zarr"),
            "--out",
            str(tmp_path / "ev"),
        ],
    )
    assert r.exit_code != 0 and "other.zarr" in r.output and "Traceback" not in r.output


def test_stability_says_when_a_re_encoding_changes_the_verdict(image_model, monkeypatch, cluster, tmp_path):
    """`score --stability K`: the share of K re-encodings that keep an image's verdict, and `unsure`."""
    from leakstore.api.predictor import STABILITY_VIEWS, Predictor

    a = Attributor.load(image_model / "run")
    paths = sorted(str(p) for p in (image_model / "data" / "gen-a").glob("*.png"))[:3]
    base = a.score_many(paths)
    real = Predictor._score_view
    flips = {"jpeg:75": 0}  # under JPEG 75 the first image is called unknown

    def fake(self, ps, first_row, batch_size, view=None, provenance=True):
        df = real(self, ps, first_row, batch_size, view, provenance)
        if view in flips:
            df.loc[flips[view], "pred"] = "unknown"
        return df

    monkeypatch.setattr(Predictor, "_score_view", fake)
    df = a.score_many(paths, stability=2)  # jpeg:90, jpeg:75
    assert STABILITY_VIEWS[:2] == ("jpeg:90", "jpeg:75")
    assert list(df.pred) == list(base.pred)  # the verdict itself is the clean image's
    assert df.stability[0] <= 0.5 and bool(df.unsure[0])
    monkeypatch.setattr(Predictor, "_score_view", real)
    # unpatched, on dask: the columns are there for every image, in [0, 1]; a store cannot be re-encoded
    dd = score(image_model / "run", paths, client=cluster, progress=False, stability=1)
    assert dd.stability.between(0, 1).all() and dd.unsure.notna().all()
    assert (dd.unsure == (dd.stability < 1)).all()
    c = score(image_model / "run", paths, tmp_path / "p.parquet", client=cluster, progress=False, stability=1)
    assert c["unsure"] == int(pd.read_parquet(tmp_path / "p.parquet").unsure.sum())  # counted from the parts too
    with pytest.raises(Exception, match="re-encodes images"):
        score(image_model / "run", image_model / "s.zarr", client=cluster, progress=False, stability=1)
