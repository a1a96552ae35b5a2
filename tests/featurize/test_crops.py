"""--crops K: every image is K consecutive rows of native-pixel crops, grouped with their image
(no crop of a test image trains), and evaluation and scoring judge each image on all of them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.special import softmax

from leakstore.config import FeaturizeConfig, RunOptions
from leakstore.errors import InputError
from leakstore.featurize.api import featurize
from leakstore.featurize.datasets import build_catalog, with_crops, with_train_views
from leakstore.featurize.images import crop_window
from leakstore.model.config import ModelConfig
from leakstore.model.train import train
from leakstore.store import FeatureStore
from tests.conftest import write_class_images

KW = dict(
    vae="demo",
    resolution=32,
    timesteps=(0, 100),
    fft_size=2,
    residual_bins=0,
    period=8,
    spectrum_bins=0,
    noise_bins=0,
    device="cpu",
)
FAST = ModelConfig(width=8, embed_dim=16, epochs=3, batch_size=16, members=1)


def test_crop_windows_tile_the_image_on_the_8_pixel_grid():
    a = np.arange(256 * 256 * 3, dtype=np.uint32).reshape(256, 256, 3)
    tiles = [crop_window(a, 128, k, 4) for k in range(4)]
    assert all(t.shape == (128, 128, 3) for t in tiles)
    np.testing.assert_array_equal(
        np.block([[tiles[0][..., 0], tiles[1][..., 0]], [tiles[2][..., 0], tiles[3][..., 0]]]), a[..., 0]
    )  # 2 x 2 crops cover it exactly
    yy, xx = np.meshgrid(np.arange(300), np.arange(1000), indexing="ij")
    b = np.stack([yy, xx, xx], -1)
    origins = [tuple(crop_window(b, 128, k, 9)[0, 0, :2]) for k in range(9)]
    assert all(crop_window(b, 128, k, 9).shape == (128, 128, 3) for k in range(9))
    assert all(y % 8 == 0 and x % 8 == 0 for y, x in origins)  # origins on the 8-pixel grid
    assert origins[0] == (0, 0) and origins[8][0] > 300 - 128 - 8 and origins[8][1] > 1000 - 128 - 8
    assert len(set(origins)) == 9  # spread over the image
    small = np.zeros((100, 90, 3))
    assert crop_window(small, 128, 3, 4) is small  # too small: whole, for the policy
    with pytest.raises(InputError, match="square number"):
        FeaturizeConfig(vae=_vae(), crops=3, residual_bins=0)


def _vae():
    from leakstore.config import VAEIdentity

    return VAEIdentity(name="x", source="builtin", kind="kl", latent_channels=4)


def test_crop_rows_are_consecutive_and_keep_their_images_split(tmp_path):
    data = write_class_images(tmp_path / "d", {"real": 9, "gen-a": 9}, size=(80, 72))
    cat = build_catalog(data)
    c = with_crops(cat, 4)
    assert len(c) == 4 * len(cat)
    np.testing.assert_array_equal(c.crop_index, np.tile(np.arange(4), len(cat)))
    np.testing.assert_array_equal(c.image_rows, np.repeat(np.arange(len(cat)) * 4, 4))
    for r in range(len(c)):  # every crop carries its image's path, label, split and group
        i = r // 4
        assert (c.paths[r], c.labels[r], c.splits[r], c.groups[r]) == (
            cat.paths[i],
            cat.labels[i],
            cat.splits[i],
            cat.groups[i],
        )
    assert c.fingerprint != cat.fingerprint


def test_crops_of_training_views_map_to_the_same_crop_of_their_clean_image(tmp_path):
    data = write_class_images(tmp_path / "d", {"real": 9, "gen-a": 9}, size=(80, 72))
    cat = with_train_views(build_catalog(data), 2, "jpeg:50-95")
    c = with_crops(cat, 4)
    assert len(c) == 4 * len(cat)
    views = np.flatnonzero(c.view_index > 0)
    assert len(views) == 4 * int((cat.view_index > 0).sum())
    for r in views:  # the view's crop k trains beside the clean image's crop k
        src = c.source_rows[r]
        assert c.view_index[src] == 0 and c.crop_index[src] == c.crop_index[r] and c.paths[src] == c.paths[r]
        assert c.image_rows[r] != c.image_rows[src]  # a view is an image of its own
    np.testing.assert_array_equal(c.source_rows[c.view_index == 0], np.flatnonzero(c.view_index == 0))


def test_a_crop_store_with_training_views_trains(tmp_path):
    data = write_class_images(tmp_path / "d", {"real": 10, "gen-a": 10, "gen-b": 10}, size=(80, 72))
    featurize(
        data,
        tmp_path / "s.zarr",
        crops=4,
        train_views=1,
        view_policy="jpeg:50-60",
        opts=RunOptions(device="cpu", workers=0, progress=False, chunk_size=8),
        **KW,
    )
    s = FeatureStore.open(tmp_path / "s.zarr")
    assert s.has_crops and s.has_views and s.n == 4 * (30 + int((s.view_index() > 0).sum()) // 4)
    vi, src, lat = s.view_index(), s.source_rows(), s.read("latent0")
    r = int(np.flatnonzero(vi > 0)[0])
    assert s.read("crop")[r] == s.read("crop")[src[r]] and not np.array_equal(lat[r], lat[src[r]])
    summ = train(tmp_path / "s.zarr", tmp_path / "run", FAST, device="cpu", progress=False)
    assert summ["train_views"]["n"] == 1 and summ["open_scorer"]["image_threshold"] is not None


@pytest.fixture(scope="module")
def crop_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("crops")
    data = write_class_images(d / "data", {"real": 12, "gen-a": 12, "gen-b": 12}, size=(80, 72))
    featurize(
        data, d / "s.zarr", crops=4, opts=RunOptions(device="cpu", workers=0, progress=False, chunk_size=10), **KW
    )
    train(d / "s.zarr", d / "run", FAST, device="cpu", progress=False)
    return d


def test_a_crop_store_is_deterministic_and_chunks_hold_whole_images(crop_model, tmp_path):
    s = FeatureStore.open(crop_model / "s.zarr")
    assert s.has_crops and s.config.crops == 4 and s.chunk_size % 4 == 0
    featurize(
        crop_model / "data",
        tmp_path / "again.zarr",
        crops=4,
        opts=RunOptions(device="cpu", workers=0, progress=False, chunk_size=10),
        **KW,
    )
    t = FeatureStore.open(tmp_path / "again.zarr")
    for k in ("latents", "periodicity", "crop", "image", "split"):
        np.testing.assert_array_equal(s.read(k), t.read(k))
    lat = s.read("latent0")
    assert not np.array_equal(lat[0], lat[1])  # crops differ


def test_per_image_figures_equal_a_hand_computation(crop_model):
    from leakstore.api.predictor import Predictor
    from leakstore.pipelines.evaluate import evaluate

    m = evaluate(crop_model / "run", [str(crop_model / "s.zarr")], crop_model / "eval", device="cpu")
    assert m["views"][0]["unit"] == "image" and m["views"][0]["crops"] == 4
    got = pd.read_parquet(crop_model / "eval" / "predictions.parquet")
    pr = Predictor.load(crop_model / "run", "cpu")
    s = FeatureStore.open(crop_model / "s.zarr")
    feats = s.load(pr.inputs)
    test = feats.subset(feats.splits == 2)
    p = pr.predict(test)
    image = s.image_rows()[test.rows]
    assert len(got) == len(set(image)) and len(set(image)) * 4 == len(test)
    for k, i in enumerate(sorted(set(image), key=list(image).index)):
        rows = image == i
        want = softmax(np.log(np.clip(p["proba"][rows], 1e-12, 1)).mean(0))
        np.testing.assert_allclose(
            got.loc[k, [f"p_{c}" for c in pr.bundle.class_names]].to_numpy(float), want, rtol=1e-6, atol=1e-9
        )
        np.testing.assert_allclose(got.open_score[k], p["open_score"][rows].mean(), rtol=1e-6, atol=1e-9)
    thr = pr.bundle.open.image_threshold_
    np.testing.assert_array_equal(got.is_unknown.to_numpy(bool), got.open_score.to_numpy() < thr)


def test_scoring_a_crop_store_and_its_images_gives_one_row_per_image(crop_model):
    from leakstore import Attributor
    from leakstore.api.predictor import Predictor

    pr = Predictor.load(crop_model / "run", "cpu")
    s = FeatureStore.open(crop_model / "s.zarr")
    from_store = pd.concat(
        [pr.score_store(crop_model / "s.zarr", r.start, r.stop) for r in (s.chunk_rows(k) for k in range(s.n_chunks))],
        ignore_index=True,
    )
    assert len(from_store) == 36 and (from_store.crops == 4).all()
    assert list(from_store.row) == list(range(0, 144, 4))
    api = Attributor.load(crop_model / "run", "cpu").score_many(crop_model / "data")
    m = from_store.merge(api, on="path", suffixes=("_store", "_api"))
    assert len(m) == 36
    np.testing.assert_allclose(m.open_score_store, m.open_score_api, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(m.confidence_store, m.confidence_api, rtol=1e-4, atol=1e-6)
    assert (m.pred_store == m.pred_api).all()


def test_crops_that_are_one_window_are_encoded_once_when_scoring_in_memory(tmp_path):
    """An image no larger than one crop gives K equal rows (one window, one noise draw): scoring in
    memory encodes it once and copies the row; a larger image's crops are each encoded. The rows are
    those a padded store batch computes for every crop."""
    from PIL import Image

    from leakstore.featurize.inmemory import featurize_paths
    from leakstore.featurize.runner import DeviceFeaturizer
    from leakstore.featurize.vae import load_encoder

    enc = load_encoder("demo")
    cfg = FeaturizeConfig(vae=enc.identity, crops=4, **{k: v for k, v in KW.items() if k not in ("vae", "device")})
    rng = np.random.default_rng(0)
    paths = []
    for name, side in (("small", 32), ("large", 64), ("small2", 32)):
        paths.append(str(tmp_path / f"{name}.png"))
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(paths[-1])
    encoded = []
    run = DeviceFeaturizer(enc, cfg, torch.device("cpu"), 16, use_compile=False)
    inner = run.run
    run.run = lambda x: encoded.append(x.shape[0]) or inner(x)
    feats, _, errors = featurize_paths(paths, cfg, enc, batch_size=16, runner=run)
    assert not errors and len(feats) == 12 and encoded == [6]  # 1 + 4 + 1 windows of 12 rows
    lat = feats["latents"].numpy()
    for img in (0, 2):
        for k in range(1, 4):
            np.testing.assert_array_equal(lat[4 * img + k], lat[4 * img])
    assert len({lat[4 + k].tobytes() for k in range(4)}) == 4
    padded = DeviceFeaturizer(enc, cfg, torch.device("cpu"), 16, use_compile=False, pad=True)
    whole, _, _ = featurize_paths(paths, cfg, enc, batch_size=16, runner=padded)
    assert set(feats.arrays) == set(whole.arrays) and "latents" in feats.arrays
    for name in feats.arrays:
        np.testing.assert_allclose(feats[name].numpy(), whole[name].numpy(), rtol=1e-5, atol=1e-5)


def test_a_store_computes_an_image_no_larger_than_one_crop_once(tmp_path, monkeypatch):
    """Store featurizing leaves the repeated crops of a small image out of its batches and copies
    crop 0's row: every row as it would be computed, fewer rows encoded; a file whose pixels fail
    fails on every crop row with one reason."""
    from PIL import Image

    from leakstore.featurize import runner as R
    from leakstore.featurize.views import apply_view, parse_view, view_size

    rng = np.random.default_rng(1)
    for cls in ("gen-a", "gen-b"):
        (tmp_path / "d" / cls).mkdir(parents=True)
        for i, side in enumerate((32, 36, 64, 40, 32)):  # 32 and 36 px: one window at 32 px; 40, 64: four
            px = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
            Image.fromarray(px).save(tmp_path / "d" / cls / f"{i}.png")
    good = (tmp_path / "d" / "gen-a" / "4.png").read_bytes()
    (tmp_path / "d" / "gen-a" / "4.png").write_bytes(good[: len(good) // 2])  # header intact, pixels cut
    encoded = []
    call = R.DeviceFeaturizer.__call__
    monkeypatch.setattr(
        R.DeviceFeaturizer, "__call__", lambda self, x, *a: encoded.append(x.shape[0]) or call(self, x, *a)
    )
    opts = RunOptions(device="cpu", workers=0, progress=False, chunk_size=8, batch_size=4)
    rep = featurize(tmp_path / "d", tmp_path / "s.zarr", crops=4, opts=opts, **KW)
    assert rep.processed == 40 and rep.done == 36 and rep.failed == 4
    assert sum(encoded) == 2 * (1 + 1 + 4 + 4) + 1  # gen-b/4.png one row; the cut file none (crop 0 fails)
    s = FeatureStore.open(tmp_path / "s.zarr")
    lat, st, err, paths = s.read("latent0"), s.read("status"), s.read("error"), s.read("path")
    for img in range(10):
        rows = np.arange(4 * img, 4 * img + 4)
        side = Image.open(paths[rows[0]]).size[0]
        if st[rows[0]] != 1:
            assert paths[rows[0]].endswith("gen-a/4.png") and len(set(err[rows])) == 1 and err[rows[0]]
        elif side <= 39:
            assert all(np.array_equal(lat[r], lat[rows[0]]) for r in rows)
        else:
            assert len({lat[r].tobytes() for r in rows}) == 4
    monkeypatch.setattr(R, "repeated_crops", lambda *a, **k: {})  # every row computed
    featurize(tmp_path / "d", tmp_path / "all.zarr", crops=4, opts=opts, **KW)
    t = FeatureStore.open(tmp_path / "all.zarr")
    np.testing.assert_array_equal(t.read("status"), st)
    np.testing.assert_array_equal(t.read("error"), err)
    for name in ("latents", "latent0", "periodicity"):
        a, b = s.read(name), t.read(name)
        np.testing.assert_allclose(a[st == 1], b[st == 1], rtol=1e-5, atol=1e-6)
    for h, w, spec in ((256, 200, "resize:0.5"), (257, 129, "crop:0.7+resize:0.33"), (50, 80, "jpeg:75")):
        steps = parse_view(spec)
        got = apply_view(np.zeros((h, w, 3), np.uint8), steps).shape[:2]
        assert view_size(h, w, steps) == got


def test_a_sweep_of_a_crop_model_judges_each_test_image_on_its_crops(crop_model, tmp_path):
    """The sweep's view stores hold each test image once, as the model's K crops, and its figures
    are those of evaluating a store of the same images featurized with that view."""
    from leakstore.pipelines.evaluate import evaluate
    from leakstore.pipelines.sweep import sweep

    s = FeatureStore.open(crop_model / "s.zarr")
    test_images = int(((s.read("split") == 2) & (s.read("crop") == 0)).sum())
    m = sweep(crop_model / "run", views=("jpeg:80",), out=tmp_path / "sw", device="cpu", workers=0, progress=False)
    v = FeatureStore.open(tmp_path / "sw" / "views" / "jpeg-80.zarr")
    assert v.has_crops and v.n == 4 * test_images
    np.testing.assert_array_equal(v.read("crop"), np.tile(np.arange(4), test_images))
    featurize(
        crop_model / "data",
        tmp_path / "j.zarr",
        crops=4,
        view="jpeg:80",
        opts=RunOptions(device="cpu", workers=0, progress=False, chunk_size=10),
        **KW,
    )
    stores = [str(crop_model / "s.zarr"), str(tmp_path / "j.zarr")]
    ref = evaluate(crop_model / "run", stores, tmp_path / "ev", device="cpu")
    got, want = m["robustness"][1], ref["robustness"][1]
    assert got["view"] == want["view"] == "jpeg:80"
    for key in ("macro_auc", "top1"):
        assert abs(got[key] - want[key]) < 1e-6, (key, got, want)


def test_inspect_counts_a_crop_store_in_rows_and_images(crop_model):
    import json

    from typer.testing import CliRunner

    from leakstore.cli import app

    r = CliRunner().invoke(app, ["inspect", str(crop_model / "s.zarr"), "--json"])
    d = json.loads(r.output)
    assert r.exit_code == 0 and (d["n_rows"], d["n_images"]) == (144, 36)
    r = CliRunner().invoke(app, ["inspect", str(crop_model / "s.zarr")])
    assert "144 rows (36 images x 4 crops): 144 done" in r.output


def test_a_companion_attributes_images_no_larger_than_one_crop_beside_the_model(crop_model, tmp_path):
    """RUN/small, a model of downscaled training images (one row each), attributes beside the model
    the images whose crops are one window: half its log-probabilities, half the model's crops' mean.
    Larger images, the unknown flag and its score are the model's alone; a companion that does not fit
    is refused in one line."""
    import json
    import shutil

    from scipy.special import softmax

    from leakstore.api.predictor import Predictor
    from leakstore.errors import ConfigMismatchError, LeakstoreError

    run = tmp_path / "run"
    shutil.copytree(crop_model / "run", run)
    opts = RunOptions(device="cpu", workers=0, progress=False, chunk_size=12)
    featurize(crop_model / "data", tmp_path / "small.zarr", view="resize:0.4", opts=opts, **KW)  # 32 x 29 px
    train(tmp_path / "small.zarr", run / "small", FAST, device="cpu", progress=False)
    featurize(crop_model / "data", tmp_path / "half.zarr", crops=4, view="resize:0.4", opts=opts, **KW)

    def scored(run_dir, store):
        pr = Predictor.load(run_dir, "cpu")
        s = FeatureStore.open(store)
        rows = [pr.score_store(store, r.start, r.stop) for r in (s.chunk_rows(k) for k in range(s.n_chunks))]
        return pr, pd.concat(rows, ignore_index=True)

    pr, both = scored(run, tmp_path / "half.zarr")
    assert pr.bundle.small is not None and pr.bundle.small.featurize.crops == 1
    _, alone = scored(crop_model / "run", tmp_path / "half.zarr")
    _, small = scored(run / "small", tmp_path / "small.zarr")
    names = [f"p_{c}" for c in pr.bundle.class_names]
    small = small.set_index("path").loc[both.path]
    want = softmax((np.log(alone[names].to_numpy()) + np.log(small[names].to_numpy())) / 2, axis=1)
    np.testing.assert_allclose(both[names].to_numpy(), want, rtol=1e-5, atol=1e-6)
    assert not np.allclose(both[names].to_numpy(), alone[names].to_numpy(), atol=1e-3)
    np.testing.assert_array_equal(both.open_score.to_numpy(), alone.open_score.to_numpy())
    _, full = scored(run, crop_model / "s.zarr")  # four windows an image: the model's own
    _, full_alone = scored(crop_model / "run", crop_model / "s.zarr")
    np.testing.assert_array_equal(full[names].to_numpy(), full_alone[names].to_numpy())
    # explain shows the companion's part for such an image, and none for a full-size one
    from PIL import Image

    big = sorted((crop_model / "data").rglob("*.png"))[0]
    with Image.open(big) as im:
        im.resize((36, 34)).save(tmp_path / "thumb.png")  # one 32 px window
    e = pr.explain(str(tmp_path / "thumb.png"))
    assert e["verdict"]["status"] == "ok", e["verdict"]
    assert len(e["companion"]) == 3 and len(e["crops"]) == 4
    assert set(e["companion"]) <= set(pr.bundle.class_names) and 0 < sum(e["companion"].values()) <= 1 + 1e-6
    calls, predict = [], pr.predict
    pr.predict = lambda batch: calls.append(len(batch)) or predict(batch)
    e = pr.explain(str(big))
    assert e["companion"] is None and calls == [4]  # one prediction for the verdict and the crop lines
    del pr.predict
    verdict = pr.score_paths([str(big)]).iloc[0]
    assert e["verdict"]["pred"] == verdict.pred and e["verdict"]["open_score"] == pytest.approx(verdict.open_score)
    from typer.testing import CliRunner

    from leakstore.cli import app

    r = CliRunner().invoke(app, ["explain", str(tmp_path / "thumb.png"), str(run), "--device", "cpu"])
    assert r.exit_code == 0 and "crops 0-3:" in r.output and "companion (RUN/small):" in r.output, r.output

    shutil.copytree(run / "small", run / "small" / "small")
    with pytest.raises(LeakstoreError, match="judges one crop per image"):
        Predictor.load(run / "small", "cpu")
    shutil.rmtree(run / "small" / "small")
    # a companion that learned other images (here the test split too, --final) beside a model that did not:
    # refused when the model loads, and said by `train` as soon as either of the two is trained
    args = ["train", str(tmp_path / "small.zarr"), "--out", str(run / "small"), "--overwrite", "--final"]
    args += ["--width", "8", "--embed-dim", "16", "--epochs", "2", "--members", "1", "--no-progress", "--threads", "1"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert f"warning: {run / 'small'} learned other images than {run}" in r.output
    assert f"(next: leakstore score {run} IMAGES)" in r.output  # a companion is used through its model
    with pytest.raises(LeakstoreError, match="learned other images"):
        Predictor.load(run, "cpu")
    train(tmp_path / "small.zarr", run / "small", FAST, device="cpu", progress=False, overwrite=True)
    assert Predictor.load(run, "cpu").bundle.small is not None  # the same images again: it fits
    meta = json.loads((run / "small" / "model.json").read_text())
    meta["featurize_config"]["timesteps"] = [0, 50]
    (run / "small" / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigMismatchError, match="timesteps"):
        Predictor.load(run, "cpu")


def test_calibrate_sets_a_crop_models_threshold_on_whole_images(crop_model, tmp_path):
    """A crop model's threshold is its whole image's (the crops' mean score): calibrate moves that one,
    and the images it was set on are then flagged at the asked share."""
    from leakstore.api.predictor import Predictor
    from leakstore.pipelines.calibrate import calibrate

    info = calibrate(crop_model / "run", [crop_model / "s.zarr"], rate=0.25, out=tmp_path / "cal", device="cpu")
    before, after = Predictor.load(crop_model / "run", "cpu"), Predictor.load(tmp_path / "cal", "cpu")
    assert after.bundle.open.image_threshold_ == info["threshold"] != before.bundle.open.image_threshold_
    assert after.bundle.open.offset_ == before.bundle.open.offset_  # the per-crop threshold is not the image's
    s = FeatureStore.open(crop_model / "s.zarr")
    df = pd.concat([after.score_store(s.path, r.start, r.stop) for r in map(s.chunk_rows, range(s.n_chunks))])
    split = s.read("split")[df.row.to_numpy()]
    assert info["images"] == int((split > 0).sum()) > 0 and info["left_out_trained"] == int((split == 0).sum())
    assert abs(df.is_unknown.to_numpy(bool)[split > 0].mean() - 0.25) <= 1 / info["images"] + 1e-9


def test_an_images_crop_rows_read_and_decode_its_file_once(crop_model, tmp_path, monkeypatch):
    """An image's K crop rows are consecutive: one read, hash and decode serve them all, and the store
    is the one made when every row decodes its file anew."""
    import leakstore.featurize.runner as R

    decoded, real = [], R.decode_image
    monkeypatch.setattr(R, "decode_image", lambda data, path, **kw: decoded.append(path) or real(data, path, **kw))
    opts = RunOptions(device="cpu", workers=0, progress=False, chunk_size=10)
    featurize(crop_model / "data", tmp_path / "once.zarr", crops=4, opts=opts, **KW)
    assert len(decoded) == len(set(decoded)) == 36  # 144 rows
    item = R.ImageRows.__getitem__

    def anew(self, j):
        self._last = None
        return item(self, j)

    monkeypatch.setattr(R.ImageRows, "__getitem__", anew)
    featurize(crop_model / "data", tmp_path / "every.zarr", crops=4, opts=opts, **KW)
    assert len(decoded) == 36 + 144
    a, b = FeatureStore.open(tmp_path / "once.zarr"), FeatureStore.open(tmp_path / "every.zarr")
    for name in ("latents", "latent0", "spectra", "periodicity", "sha256", "status"):
        np.testing.assert_array_equal(a.read(name), b.read(name))
