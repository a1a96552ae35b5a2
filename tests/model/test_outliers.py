"""Outlier exposure: the lda scorer's 'other' class, which outlier rows may fit, and a model
trained with --outliers end to end (make-outliers -> featurize -> train -> evaluate)."""

import json

import numpy as np
import pytest
from scipy.special import logsumexp
from typer.testing import CliRunner

from leakstore.cli import app
from leakstore.errors import InputError
from leakstore.model.checkpoint import pack_scorer, unpack_scorer
from leakstore.model.config import ModelConfig
from leakstore.model.metrics import open_set
from leakstore.model.openset import (
    MIN_ROWS_PER_COMPONENT,
    OUTLIER,
    ClassPosterior,
    OpenSetScorer,
    split_outlier_kinds,
)
from leakstore.model.outliers import outlier_rows
from leakstore.store import DONE, Catalog, FeatureStore
from tests.synthetic import CFG, planted_store

runner = CliRunner()


def blobs(seed, n=80, centres=(-3, 3), d=4):
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.normal(c, 1, (n, d)) for c in centres]), np.repeat(np.arange(len(centres)), n)


def test_class_posterior_is_the_discriminants_largest_known_log_posterior():
    X, y = blobs(0)
    m = ClassPosterior().fit(X, y)
    Z = (X[:7] - m.mean_) / m.scale_
    d = np.array([[(z - mu) @ m.precision_ @ (z - mu) for mu in m.means_] for z in Z])
    logit = -0.5 * d + np.log([0.5, 0.5])
    np.testing.assert_allclose(m.score_samples(X[:7]), (logit - logsumexp(logit, 1, keepdims=True)).max(1), rtol=1e-9)
    assert (m.score_samples(X) <= 0).all()


def test_an_outlier_class_lowers_the_score_of_what_looks_like_it_and_survives_saving():
    """Known classes at -3 and +3 on every axis; outliers (and the unseen test points) lie beyond the
    second, at +9, where the two-class discriminant is most confident."""
    X, y = blobs(0)
    rng = np.random.default_rng(1)
    side = lambda n: rng.normal(0, 1, (n, 4)) + 9.0  # noqa: E731
    Xv, _ = blobs(2)
    plain = ClassPosterior().fit(X, y)
    exposed = ClassPosterior().fit(np.r_[X, side(80)], np.r_[y, np.full(80, OUTLIER)])
    unseen = side(60)
    auc = lambda m: open_set(m.score_samples(Xv), m.score_samples(unseen))["auroc"]  # noqa: E731
    assert auc(plain) < 0.7 and auc(exposed) > 0.95
    assert list(exposed.known_) == [0, 1, 1] and exposed.classes_[0] == OUTLIER
    arrays, meta = pack_scorer("s", exposed)
    back = unpack_scorer("s", json.loads(json.dumps(meta)), arrays)
    np.testing.assert_array_equal(back.score_samples(unseen), exposed.score_samples(unseen))
    with pytest.raises(InputError, match="outlier rows only"):
        ClassPosterior().fit(X, np.full(len(X), OUTLIER))


def test_the_fused_scorer_gives_outliers_only_to_the_components_that_take_a_class_of_them():
    X, y = blobs(0)
    rng = np.random.default_rng(3)
    blocks = {"features": X, "proba": np.c_[1 - (y == 1), (y == 1)].astype(float) * 0.8 + 0.1}
    out = {"features": rng.normal(9, 1, (30, 4)), "proba": np.full((30, 2), 0.5)}
    sc = OpenSetScorer(method="fused-lda").fit(blocks, y, outliers=out)  # (the CLI's default takes lda alone)
    assert sc.components_ == ("confidence", "lda") and sc.n_outliers_ == 30
    # 30 rows of one kind: two classes of it (outlier_components), below every known class
    assert list(sc.estimators_[1].classes_) == [OUTLIER - 1, OUTLIER, 0, 1]
    assert not hasattr(sc.estimators_[0], "classes_")
    assert OpenSetScorer(method="lda").fit(blocks, y).n_outliers_ == 0
    from leakstore.model.openset import takes_outliers

    assert takes_outliers("lda") and takes_outliers("fused-lda") and not takes_outliers("fused-period")


def test_an_outlier_kind_of_two_clouds_is_fitted_as_two_classes():
    """One kind of outlier in two clouds (at -9 and +9) around known classes at -3 and +3: as one class
    its mean lies between the known ones and images like either cloud are called known; as two
    classes, each cloud is one and images like it are flagged."""
    X, y = blobs(0)
    Xv, _ = blobs(2)
    rng = np.random.default_rng(3)
    clouds = lambda n: np.r_[rng.normal(-9, 1, (n, 4)), rng.normal(9, 1, (n, 4))]  # noqa: E731
    out, unseen = clouds(60), clouds(40)
    kind = np.zeros(len(out), np.int64)
    sub = split_outlier_kinds(out, kind, 2, seed=0)
    assert len(set(sub[:60])) == 1 and len(set(sub[60:])) == 1 and sub[0] != sub[60]
    np.testing.assert_array_equal(split_outlier_kinds(out, kind, 1, seed=0), kind)
    # a kind too small to cut (fewer than MIN_ROWS_PER_COMPONENT rows per class) stays one class, numbered k * n
    few = np.r_[kind, np.ones(2 * MIN_ROWS_PER_COMPONENT - 1, np.int64)]
    sub3 = split_outlier_kinds(np.r_[out, rng.normal(0, 1, (len(few) - len(out), 4))], few, 2, seed=0)
    assert set(sub3[len(out) :]) == {2} and set(sub3[: len(out)]) == {0, 1}
    flagged = {}
    for n in (1, 2):
        sc = OpenSetScorer(method="lda", outlier_components=n).fit(
            {"features": X}, y, {"features": Xv}, outliers={"features": out, "outlier_class": kind}
        )
        flagged[n] = float((sc.score_samples({"features": unseen}) < sc.offset_).mean())
        assert (sc.score_samples({"features": Xv}) < sc.offset_).mean() <= 0.1
    assert flagged[1] < 0.2 and flagged[2] > 0.9


def test_a_model_saved_before_outlier_components_reads_as_one_class_per_kind():
    assert ModelConfig.from_dict({k: v for k, v in ModelConfig().to_dict().items() if k != "outlier_components"}) == (
        ModelConfig(outlier_components=1)
    )
    X, y = blobs(0)
    sc = OpenSetScorer(method="lda", outlier_components=1).fit({"features": X}, y)
    arrays, meta = pack_scorer("o", sc)
    assert meta["params"].pop("outlier_components") == 1  # as a scorer saved before the parameter
    back = unpack_scorer("o", json.loads(json.dumps(meta)), arrays)
    assert back.get_params()["outlier_components"] == 1
    np.testing.assert_array_equal(back.score_samples({"features": X}), sc.score_samples({"features": X}))


def _outlier_store(path, labels, groups, cfg=CFG, status=None):
    names = tuple(sorted(set(labels)))
    n = len(labels)
    cat = Catalog(
        paths=tuple(f"/o/{i}.png" for i in range(n)),
        labels=np.array([names.index(lab) for lab in labels], np.int16),
        splits=np.zeros(n, np.int8),
        groups=tuple(groups),
        class_names=names,
        split_source="test",
    )
    st = FeatureStore.create(path, cfg, cat, chunk_size=8)
    c, h, w = cfg.latent_shape
    for k in range(st.n_chunks):
        r = st.chunk_rows(k)
        m = len(r)
        st.write_chunk(
            k,
            {
                "latent0": np.zeros((m, c, h, w), np.float16),
                "latents": np.zeros((m, len(cfg.timesteps), c, h, w), np.float16),
                "spectra": np.zeros((m, len(cfg.timesteps), c, cfg.fft_size, cfg.fft_size), np.float16),
                "sha256": np.array(["1" * 64] * m),
                "error": np.array([""] * m),
            },
            (np.full(m, DONE, np.uint8) if status is None else status[r.start : r.stop]),
        )
    return st


def test_outlier_rows_never_come_from_judged_images_or_held_out_generators(tmp_path):
    store = planted_store(tmp_path / "k.zarr", per_class=10)
    # give the known store groups: one per image (its split decides whether copies of it may fit)
    groups = store.read("group")
    splits = store.read("split")
    sha = store.read("sha256")
    train_g, val_g = "g-train", "g-val"
    labels = ["gen-a", "gen-a", "gen-b", "photo", "gen-a", "gen-c"]
    ogroups = [train_g, val_g, train_g, "photo:1", f"sha:{sha[0]}", train_g]
    store.group["group"][:] = np.array([train_g if s == 0 else val_g for s in splits], dtype=object).astype(
        groups.dtype
    )
    ost = _outlier_store(tmp_path / "o.zarr", labels, ogroups)
    st, rows = outlier_rows(ost.path, store)
    # row 1 copies a validation group; row 4 a store row's SHA-256 (every synthetic row has that one, some judged)
    assert rows.tolist() == [0, 2, 3, 5]
    assert outlier_rows(ost.path, store, exclude=["gen-c"])[1].tolist() == [0, 2, 3]
    other = _outlier_store(tmp_path / "x.zarr", labels, ogroups, cfg=CFG.replace(resolution=32))
    with pytest.raises(InputError, match="other settings"):
        outlier_rows(other.path, store)
    with pytest.raises(InputError, match="no row that may fit"):
        outlier_rows(ost.path, store, exclude=["gen-a", "gen-b", "gen-c", "photo"])


def test_a_final_model_fits_copies_of_the_test_images_it_learns_never_of_validation_ones(tmp_path):
    store = planted_store(tmp_path / "k.zarr", per_class=10)
    splits, groups = store.read("split"), store.read("group")
    assert set(splits.tolist()) == {0, 1, 2}
    store.group["group"][:] = np.array(["g-" + ("train", "val", "test")[s] for s in splits], dtype=object).astype(
        groups.dtype
    )
    ost = _outlier_store(tmp_path / "o.zarr", ["gen-a", "gen-a", "gen-b"], ["g-train", "g-val", "g-test"])
    assert outlier_rows(ost.path, store)[1].tolist() == [0]
    assert outlier_rows(ost.path, store, judged_splits=(1,))[1].tolist() == [0, 2]


def test_make_outliers_then_train_with_them(class_folders, tmp_path):
    from PIL import Image

    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)).save(photos / "cam.jpg", quality=90)
    (photos / "broken.jpg").write_bytes(b"\xff\xd8junk")
    out = tmp_path / "outliers"
    args = [
        "make-outliers",
        str(class_folders),
        str(out),
        "--photos",
        str(photos),
        "--vae",
        "demo",
        "--decoders",
        "2",
        "--decoder-steps",
        "3",
        "--per-photo",
        "3",
        "--size",
        "64",
        "--no-progress",
        "--json",
    ]
    r = runner.invoke(app, args)
    assert r.exit_code == 0, r.output
    s = json.loads(r.output)
    assert s["images"] == 29 + 3 and s["made"]["photo"] == 3 and s["failed"] == 1
    assert len(s["decoders"]) == 2 and all(s["made"][k] > 0 for k in s["decoders"] + ["vae"])
    assert "jpeg" not in s["made"]  # compression is no outlier: known images get it too
    assert s["real_class"] == "real"  # the CLI warns: photographs would teach 'real is other'
    assert "broken.jpg" in (out / "failed.csv").read_text()
    assert len(list((out / "decoders").glob("*.safetensors"))) == 2
    import pandas as pd

    man = pd.read_csv(out / "manifest.csv", keep_default_na=False)
    kinds = set(s["decoders"]) | {"vae"}
    # KIND/SOURCE: every kind its own outlier class, the source kept to leave a held-out generator's copies out
    assert {lab.split("/")[0] for lab in man.label} == kinds | {"photo"}
    assert {lab.split("/")[-1] for lab in man.label} == {"real", "gen-a", "gen-b", "photo"}
    assert man.group.str.startswith("sha:").sum() == 29 and man.group.str.startswith("photo:").sum() == 3
    files = {p: (out / p).read_bytes() for p in man.path}
    r = runner.invoke(app, args)  # a rerun: the same files, untouched
    assert r.exit_code == 0 and {p: (out / p).read_bytes() for p in man.path} == files
    r = runner.invoke(app, args[:-1])  # the human summary warns about photographs beside 'real'
    assert r.exit_code == 0 and "leave --photos out" in r.output
    assert pd.read_csv(out / "manifest.csv", keep_default_na=False).equals(man)

    feat = [
        "--vae",
        "demo",
        "--resolution",
        "32",
        "--fft-size",
        "4",
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
    for data, st in ((class_folders, "k.zarr"), (out / "manifest.csv", "o.zarr")):
        r = runner.invoke(app, ["featurize", str(data), str(tmp_path / st)] + feat)
        assert r.exit_code == 0, r.output
    r = runner.invoke(
        app,
        [
            "train",
            str(tmp_path / "k.zarr"),
            "--out",
            str(tmp_path / "run"),
            "--epochs",
            "1",
            "--width",
            "8",
            "--embed-dim",
            "16",
            "--members",
            "1",
            "--outliers",
            str(tmp_path / "o.zarr"),
            "--no-progress",
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    summ = json.loads(r.output)
    k = FeatureStore.open(tmp_path / "k.zarr")
    # copies of validation and test images never fit: only those of training images, and the photo crops
    n_train = int(((k.read("split") == 0) & (k.status() == DONE)).sum())
    assert summ["outliers"]["rows"] == summ["outliers"]["used"] == n_train + 3
    assert summ["outliers"]["classes"] == 4  # two decoders, the autoencoder, photographs
    assert summ["open_scorer"]["method"] == "lda"  # the default with --outliers
    r = runner.invoke(app, ["evaluate", str(tmp_path / "run"), str(tmp_path / "k.zarr"), "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["outlier_sample"] == {}
    # the photograph the flag fitted as an outlier, judged as an outside source: named as in-sample
    (tmp_path / "outside.csv").write_text(f"path,label\n{photos / 'cam.jpg'},camera\n")
    r = runner.invoke(app, ["featurize", str(tmp_path / "outside.csv"), str(tmp_path / "u.zarr")] + feat)
    assert r.exit_code == 0, r.output
    ev = ["evaluate", str(tmp_path / "run"), str(tmp_path / "k.zarr"), "--unseen", str(tmp_path / "u.zarr")]
    r = runner.invoke(app, ev + ["--json"])
    assert r.exit_code == 0, r.output
    m = json.loads(r.output)
    assert m["outlier_sample"] == {str(tmp_path / "u.zarr"): 1} and m["in_sample"] == {}
    assert m["unseen"]["per_generator"]["camera"]["outlier_photos"] == 1
    r = runner.invoke(app, ev)
    assert f"{tmp_path / 'u.zarr'} holds 1 photograph the unknown flag was fitted on as outliers" in r.output
    assert "In-sample outside images" in (tmp_path / "run" / "eval" / "report.html").read_text()
    # raw images score as their store rows do: the lda block reads every stored feature
    from leakstore import Attributor
    from leakstore.model.predict import predict

    a = Attributor.load(tmp_path / "run")
    assert set(a.bundle.feature_names) >= {"latents", "periodicity", "pixel_spectrum", "noise_spectrum"}
    paths = [str(p) for p in k.read("path")[:6]]
    got = a.score_many(paths)["open_score"].to_numpy(float)
    want = predict(a.bundle, k.load(a.bundle.feature_names, rows=np.arange(6)))["open_score"]
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)
    r = runner.invoke(
        app,
        [
            "train",
            str(tmp_path / "k.zarr"),
            "--out",
            str(tmp_path / "run3"),
            "--epochs",
            "1",
            "--width",
            "8",
            "--embed-dim",
            "16",
            "--members",
            "1",
            "--open-scorer",
            "fused-period",
            "--outliers",
            str(tmp_path / "o.zarr"),
            "--no-progress",
        ],
    )
    assert r.exit_code == 0 and "takes no outliers" in r.output, r.output
    r = runner.invoke(
        app,
        [
            "train",
            str(tmp_path / "k.zarr"),
            "--out",
            str(tmp_path / "run2"),
            "--outliers",
            str(tmp_path / "k.zarr") + "-missing",
        ],
    )
    assert r.exit_code != 0 and "k.zarr-missing" in r.output and len(r.output.strip().splitlines()) == 1


def test_each_photos_source_is_its_own_outlier_class(class_folders, tmp_path):
    """Two --photos sources: two kinds (photo, photo-2), each a class of the scorer; a photograph
    given in both sources gives crops to both (the source, not the file, names the kind)."""
    from PIL import Image

    from leakstore.featurize.outliers import make_outliers

    rng = np.random.default_rng(1)
    cam, web = tmp_path / "cam", tmp_path / "web"
    cam.mkdir(), web.mkdir()
    Image.fromarray(rng.integers(0, 255, (80, 100, 3), dtype=np.uint8)).save(cam / "a.jpg", quality=92)
    Image.fromarray(rng.integers(0, 255, (70, 90, 3), dtype=np.uint8)).save(web / "b.jpg", quality=70)
    Image.open(cam / "a.jpg").save(web / "a.png")
    s = make_outliers(
        class_folders, tmp_path / "o", photos=(cam, web), decoders=0, per_photo=2, size=32, progress=False
    )
    assert s["made"] == {"photo": 2, "photo-2": 4} and s["images"] == s["photos"] == 6
    import pandas as pd

    man = pd.read_csv(tmp_path / "o" / "manifest.csv", keep_default_na=False)
    assert sorted(man.label.unique()) == ["photo", "photo-2"]
    assert all(p.startswith(lab + "/") for p, lab in zip(man.path, man.label))
    # one source alone keeps the label every earlier manifest has
    one = make_outliers(class_folders, tmp_path / "o1", photos=(web,), decoders=0, per_photo=1, size=32, progress=False)
    assert one["made"] == {"photo": 2}


def test_the_lda_block_holds_what_the_model_reads_so_scoring_loads_the_same(tmp_path):
    """A --no-residual model's lda scorer is fitted without the residual, and its scoring does not
    load it: the two column counts agree (they would not if either side took every stored feature)."""
    from leakstore.model.checkpoint import load_bundle
    from leakstore.model.config import ModelConfig
    from leakstore.model.predict import predict
    from leakstore.model.train import train
    from tests.synthetic import CFG_RESIDUAL

    store = planted_store(tmp_path / "s.zarr", per_class=20, cfg=CFG_RESIDUAL)
    cfg = ModelConfig(width=8, embed_dim=16, epochs=1, batch_size=16, members=1, open_scorer="lda", use_residual=False)
    train(store.path, tmp_path / "run", cfg, progress=False)
    b = load_bundle(tmp_path / "run")
    assert "residual" not in b.feature_names
    c = store.config.latent_shape[0]
    assert b.open.estimators_[0].n_features_in_ == 2 * c  # the latent statistics alone
    p = predict(b, store.load(b.feature_names))
    assert np.isfinite(p["open_score"]).all()
    train(store.path, tmp_path / "run2", cfg.replace(use_residual=True), progress=False)
    b2 = load_bundle(tmp_path / "run2")
    assert (
        "residual" in b2.feature_names
        and b2.open.estimators_[0].n_features_in_ == 2 * c + store.read("residual").shape[1]
    )
