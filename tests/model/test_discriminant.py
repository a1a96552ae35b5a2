"""Attribution with the stored statistics' discriminant beside the networks (ModelConfig.discriminant)."""

import json

import numpy as np
import pytest
from scipy.special import softmax

from leakstore.errors import ConfigFieldError, ConfigMismatchError
from leakstore.model.checkpoint import load_bundle
from leakstore.model.config import ModelConfig
from leakstore.model.predict import predict
from leakstore.model.train import train
from leakstore.pipelines.evaluate import evaluate
from leakstore.store import FeatureStore
from tests.conftest import featurize_tiny, write_class_images

CFG = ModelConfig(width=8, embed_dim=16, epochs=1, batch_size=8, protos_per_class=1, members=1)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    d = tmp_path_factory.mktemp("disc")
    data = write_class_images(d / "data", {"real": 12, "gen-a": 12, "gen-b": 12}, size=(32, 32))
    featurize_tiny(data, d / "s.zarr", resolution=32, fractions=(0.5, 0.25, 0.25))
    return FeatureStore.open(d / "s.zarr")


@pytest.fixture(scope="module")
def runs(store, tmp_path_factory):
    d = tmp_path_factory.mktemp("disc-runs")
    for w in (0.0, 0.2, 1.0):
        train(store.path, d / f"w{w}", CFG.replace(discriminant=w), progress=False)
    return d


def _predict(run, store):
    b = load_bundle(run)
    return b, predict(b, store.load(b.feature_names))


def test_attribution_fuses_the_networks_and_the_discriminant_by_their_weights(runs, store):
    b, p = _predict(runs / "w0.2", store)
    assert b.fuses and b.discriminant.n_features_in_ == p["blocks"]["features"].shape[1]
    disc = b.discriminant.log_posterior(p["blocks"]["features"])
    expected = softmax(0.8 * np.log(np.clip(p["network_proba"], 1e-12, 1)) + 0.2 * disc, axis=1)
    np.testing.assert_allclose(p["proba"], expected, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(p["proba"].sum(1), 1.0)
    assert not np.allclose(p["proba"], p["network_proba"])  # the discriminant moved them
    # the open-set scorers read the networks' probabilities, not the fused ones
    np.testing.assert_array_equal(p["blocks"]["proba"], p["network_proba"])
    meta = json.loads((runs / "w0.2" / "model.json").read_text())
    assert "discriminant" in meta["scorers"] and meta["training"]["discriminant"]["weight"] == 0.2


def test_weight_one_attributes_by_the_discriminant_and_zero_by_the_networks(runs, store):
    b1, p1 = _predict(runs / "w1.0", store)
    np.testing.assert_allclose(p1["proba"], np.exp(b1.discriminant.log_posterior(p1["blocks"]["features"])), atol=1e-9)
    b0, p0 = _predict(runs / "w0.0", store)
    assert b0.discriminant is None and not b0.fuses
    np.testing.assert_array_equal(p0["proba"], p0["network_proba"])
    assert json.loads((runs / "w0.0" / "model.json").read_text())["training"]["discriminant"] is None
    # the same networks (same seed, same data): only attribution differs
    np.testing.assert_allclose(p1["network_proba"], p0["network_proba"], atol=1e-6)


def test_a_model_saved_before_the_discriminant_reads_as_the_networks_alone():
    d = ModelConfig().to_dict()
    del d["discriminant"]
    assert ModelConfig.from_dict(d).discriminant == 0.0
    with pytest.raises(ConfigFieldError, match="discriminant"):
        ModelConfig(discriminant=1.5)


def test_resuming_a_finished_run_with_another_weight_refits_it(store, runs, tmp_path):
    import shutil

    shutil.copytree(runs / "w0.0", tmp_path / "run")
    s = train(store.path, tmp_path / "run", CFG.replace(discriminant=0.3), resume=True, progress=False)
    assert s["discriminant"]["weight"] == 0.3
    b, p = _predict(tmp_path / "run", store)
    assert b.fuses and b.cfg.discriminant == 0.3
    _, p0 = _predict(runs / "w0.0", store)
    np.testing.assert_allclose(p["network_proba"], p0["network_proba"], atol=1e-9)  # networks untouched
    # another open-set scorer: the same, its scorers refitted (a network setting is still refused)
    s = train(
        store.path, tmp_path / "run", CFG.replace(discriminant=0.3, open_scorer="lda"), resume=True, progress=False
    )
    b, p2 = _predict(tmp_path / "run", store)
    assert b.cfg.open_scorer == "lda" and b.open.components_ == ("lda",)
    np.testing.assert_allclose(p2["network_proba"], p0["network_proba"], atol=1e-9)
    # classes per kind of outlier are the open scorer's too
    cfg1 = CFG.replace(discriminant=0.3, open_scorer="lda", outlier_components=1)
    train(store.path, tmp_path / "run", cfg1, resume=True, progress=False)
    b = load_bundle(tmp_path / "run")
    assert b.cfg.outlier_components == 1 and b.open.get_params()["outlier_components"] == 1
    with pytest.raises(ConfigMismatchError, match="model settings"):
        train(store.path, tmp_path / "run", CFG.replace(width=CFG.width * 2), resume=True, progress=False)


def test_evaluate_reports_the_networks_alone_beside_the_attribution(runs, store, tmp_path):
    m = evaluate(runs / "w0.2", [str(store.path)], tmp_path / "ev")
    v = m["views"][0]
    assert m["discriminant"] == 0.2
    assert set(v["closed_networks"]) == {"macro_auc", "top1", "balanced_accuracy"}
    assert m["robustness"][0]["networks_macro_auc"] == v["closed_networks"]["macro_auc"]
    m0 = evaluate(runs / "w0.0", [str(store.path)], tmp_path / "ev0")
    assert m0["discriminant"] is None and "closed_networks" not in m0["views"][0]
    assert "The networks alone: macro AUC" in (tmp_path / "ev" / "report.html").read_text()
    assert "The networks alone" not in (tmp_path / "ev0" / "report.html").read_text()


def test_an_image_gets_the_networks_probabilities_of_its_crops_beside_the_attribution():
    from leakstore.model.predict import aggregate_images

    rng = np.random.default_rng(0)
    net = softmax(rng.normal(size=(6, 3)), axis=1)
    fused = softmax(rng.normal(size=(6, 3)), axis=1)
    p = {
        "proba": fused,
        "network_proba": net,
        "open_score": rng.normal(size=6),
        "nearest_prototypes": [["a"]] * 6,
        "attention": rng.random((6, 2)),
        "embedding": rng.random((6, 4)),
        "g": rng.random((6, 4)),
    }
    _, out = aggregate_images(p, np.array([0, 0, 3, 3, 3, 5]), ["a", "b", "c"], 0.0)
    np.testing.assert_allclose(out["network_proba"][1], softmax(np.log(net[2:5]).mean(0)))
    np.testing.assert_allclose(out["proba"][1], softmax(np.log(fused[2:5]).mean(0)))


def test_a_model_reads_only_the_statistics_its_store_holds(tmp_path):
    """The discriminant's `features` block puts every stored statistic side by side; on a store made
    without the optional ones (residual, periodicity, spectra) the model neither reads nor names them."""
    from tests.synthetic import planted_store

    st = planted_store(tmp_path / "s.zarr", per_class=12)  # latents and their spectra only
    train(st.path, tmp_path / "run", CFG.replace(discriminant=0.2), progress=False)
    b = load_bundle(tmp_path / "run")
    assert b.fuses and set(b.feature_names) <= {"latents", "latent0", "spectra"}, b.feature_names
    m = evaluate(tmp_path / "run", [str(st.path)], tmp_path / "ev")
    assert not [n for n in m["inputs"] if n.split(" ")[0] in ("residual", "periodicity", "noise_spectrum")]
