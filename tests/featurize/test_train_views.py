"""Training views: extra rows of post-processed training/validation images, deterministic, never
for test images, resumable; and a model trained on them survives the post-processing."""

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from leakstore.errors import InputError
from leakstore.featurize.views import DEFAULT_POLICY, draw_view, parse_policy
from leakstore.store import DONE, PENDING, FeatureStore
from tests.conftest import featurize_tiny, write_class_images


def _run(data, store, views=2, **kw):
    return featurize_tiny(data, store, train_views=views, **kw)


def test_policy_draws_are_seeded_by_the_image_and_follow_real_life_order():
    p = parse_policy(DEFAULT_POLICY)
    sha = "ab" * 32
    assert draw_view(p, sha, 1) == draw_view(p, sha, 1) and draw_view(p, sha, 1) != draw_view(p, sha, 2)
    order = ["crop", "resize", "blur", "noise", "grayscale", "jpeg", "webp"]
    for i in range(1, 40):
        ops = [s.op for s in draw_view(p, f"{i:064x}", i)]
        assert ops and [order.index(o) for o in ops] == sorted(order.index(o) for o in ops)
        assert sum(o in ("jpeg", "webp") for o in ops) <= 1  # one compression, last
    # a policy may draw both JPEG encoders: still one compression, last
    both = parse_policy("resize:0.5-1,jpeg:50-95,jpeg444:70-95")
    ops = [[s.op for s in draw_view(both, f"{i:064x}", 1)] for i in range(60)]
    assert {"jpeg", "jpeg444"} <= {o for v in ops for o in v}
    assert all(not any(o.startswith("jpeg") for o in v[:-1]) for v in ops)  # compression only last, once
    with pytest.raises(InputError, match="OP:LO-HI"):
        parse_policy("jpeg")
    with pytest.raises(InputError, match="LO <= HI"):
        parse_policy("jpeg:95-50")


@pytest.fixture
def data(tmp_path):
    return write_class_images(tmp_path / "data", {"real": 10, "gen-a": 10}, size=(72, 64))


def test_view_rows_keep_their_source_split_and_test_images_get_none(data, tmp_path):
    _run(data, tmp_path / "s.zarr")
    s = FeatureStore.open(tmp_path / "s.zarr")
    vi, src, split, lab = s.view_index(), s.source_rows(), s.read("split"), s.read("label")
    views = np.flatnonzero(vi > 0)
    clean = np.flatnonzero(vi == 0)
    assert len(clean) == 20 and len(views) == 2 * int(np.isin(split[clean], (0, 1)).sum())
    assert (split[views] == split[src[views]]).all() and (lab[views] == lab[src[views]]).all()
    assert not (split[views] == 2).any()  # no test photograph ever trains
    assert (s.read("path")[views] == s.read("path")[src[views]]).all()
    names = s.read("view")
    assert all(names[views]) and not any(names[clean])  # every view row names its view
    assert (s.status() == DONE).all() and s.summary()["view_rows"] == len(views)


def test_view_prob_zero_trains_as_if_the_store_had_no_views(data, tmp_path):
    from leakstore.model.config import ModelConfig
    from leakstore.model.train import train

    _run(data, tmp_path / "s.zarr")
    s = FeatureStore.open(tmp_path / "s.zarr")
    vi, split = s.view_index(), s.read("split")
    cfg = ModelConfig(width=8, embed_dim=16, epochs=1, batch_size=8, protos_per_class=1)
    off = train(tmp_path / "s.zarr", tmp_path / "off", cfg.replace(view_prob=0.0), progress=False)
    on = train(tmp_path / "s.zarr", tmp_path / "on", cfg.replace(view_prob=0.5), progress=False)
    # scorers, calibration and threshold are fitted on these rows: views only when views are on
    assert off["train_rows"] == int(((vi == 0) & (split == 0)).sum()) and off["val_rows"] == int(
        ((vi == 0) & (split == 1)).sum()
    )
    assert on["train_rows"] == int((split == 0).sum()) and on["val_rows"] == int((split == 1).sum())
    # --scorer-rows clean: the network learns from views, the scorers see clean rows only
    sc = train(tmp_path / "s.zarr", tmp_path / "sc", cfg.replace(view_prob=0.5, scorer_rows="clean"), progress=False)
    assert (sc["train_rows"], sc["val_rows"], sc["scorer_rows"]) == (off["train_rows"], off["val_rows"], "clean")
    assert sc["calibration_rows"] == off["val_rows"]
    # --scorer-rows clean-fit: fitted as under clean, the open-set scales and threshold set on every validation row
    cf = train(
        tmp_path / "s.zarr", tmp_path / "cf", cfg.replace(view_prob=0.5, scorer_rows="clean-fit"), progress=False
    )
    assert (cf["train_rows"], cf["val_rows"], cf["calibration_rows"]) == (
        off["train_rows"],
        off["val_rows"],
        on["val_rows"],
    )
    from leakstore.model.checkpoint import load_bundle

    b_sc, b_cf = load_bundle(tmp_path / "sc"), load_bundle(tmp_path / "cf")
    np.testing.assert_array_equal(b_cf.closed.means_, b_sc.closed.means_)  # same network, same clean rows
    from leakstore.model.predict import predict

    blocks = predict(b_sc, s.load(b_sc.feature_names))["blocks"]
    raw_sc, raw_cf = b_sc.open.component_scores(blocks), b_cf.open.component_scores(blocks)
    for c in raw_sc:  # the same open-set components ...
        np.testing.assert_array_equal(raw_cf[c], raw_sc[c])
    assert b_cf.open.threshold_ != b_sc.open.threshold_  # ... calibrated on the views too
    with pytest.raises(InputError, match="scorer_rows"):
        cfg.replace(scorer_rows="views")


def test_evaluating_a_split_with_views_judges_its_images_not_their_training_views(data, tmp_path):
    from leakstore.model.config import ModelConfig
    from leakstore.model.train import train
    from leakstore.pipelines.evaluate import evaluate

    _run(data, tmp_path / "s.zarr", views=2, fractions=(0.5, 0.5, 0.0))
    s = FeatureStore.open(tmp_path / "s.zarr")
    vi, split = s.view_index(), s.read("split")
    assert (vi[split == 1] > 0).any()  # the validation split has view rows to leave out
    cfg = ModelConfig(width=8, embed_dim=16, epochs=1, batch_size=8, protos_per_class=1)
    train(tmp_path / "s.zarr", tmp_path / "run", cfg, progress=False)
    for split_name, code in (("val", [1]), ("all", [0, 1, 2])):
        m = evaluate(tmp_path / "run", [str(tmp_path / "s.zarr")], tmp_path / f"ev-{split_name}", split=split_name)
        clean = int(((vi == 0) & np.isin(split, code)).sum())
        assert m["views"][0]["closed"]["n"] == clean
        if split_name == "val":  # what training says of the validation images is what evaluating them gives
            o = m["views"][0]["open"]
            assert o["false_unknown_rate"]["validation"] == pytest.approx(o["known_flagged"])


def test_a_store_whose_shrinking_views_failed_is_evaluated_on_its_images(data, tmp_path):
    from leakstore.model.config import ModelConfig
    from leakstore.model.train import train
    from leakstore.pipelines.evaluate import evaluate

    # a 72x64 image shrunk by half gives no 64 px centre crop: those view rows fail, recorded
    _run(data, tmp_path / "s.zarr", views=2, view_policy="resize:0.4-0.5,jpeg:60-90", resize_policy="center-crop")
    s = FeatureStore.open(tmp_path / "s.zarr")
    done, vi, split = s.status() == DONE, s.view_index(), s.read("split")
    assert (~done & (vi > 0)).any() and done[vi == 0].all()  # some views failed, no image did
    cfg = ModelConfig(width=8, embed_dim=16, epochs=1, batch_size=8, protos_per_class=1, members=1)
    train(tmp_path / "s.zarr", tmp_path / "run", cfg, progress=False)
    m = evaluate(
        tmp_path / "run", [str(tmp_path / "s.zarr")], tmp_path / "ev", split="val", unseen=[tmp_path / "s.zarr"]
    )
    assert m["views"][0]["closed"]["n"] == int(((vi == 0) & (split == 1)).sum())


def test_same_bytes_give_the_same_view_and_features_anywhere(data, tmp_path):
    _run(data, tmp_path / "a.zarr")
    moved = tmp_path / "moved"
    shutil.copytree(data, moved)  # same bytes, other paths
    _run(moved, tmp_path / "b.zarr")
    a, b = FeatureStore.open(tmp_path / "a.zarr"), FeatureStore.open(tmp_path / "b.zarr")
    assert (a.read("view") == b.read("view")).all()
    for name in ("latents", "spectra", "latent0"):
        np.testing.assert_array_equal(a.read(name), b.read(name))


def test_an_interrupted_view_run_resumes_to_the_same_store(data, tmp_path):
    _run(data, tmp_path / "s.zarr")
    ref = {n: FeatureStore.open(tmp_path / "s.zarr").read(n) for n in ("latents", "view", "sha256")}
    g = FeatureStore.open(tmp_path / "s.zarr", mode="r+").group
    n = g["status"].shape[0]
    g["status"][n - 12 :] = PENDING  # the last chunks never finished
    g["latents"][n - 12 :] = np.nan
    g["view"][n - 12 :] = ""
    rep = _run(data, tmp_path / "s.zarr")
    assert rep.processed >= 12 and rep.already_done > 0
    s = FeatureStore.open(tmp_path / "s.zarr")
    for k, v in ref.items():
        np.testing.assert_array_equal(s.read(k), v)


def test_another_policy_or_view_count_is_another_store(data, tmp_path):
    from leakstore.errors import ConfigMismatchError

    _run(data, tmp_path / "s.zarr")
    with pytest.raises(ConfigMismatchError, match="another list of images"):
        _run(data, tmp_path / "s.zarr", views=3)
    # another policy alone: the error names the store's, to resume with
    stored = str(parse_policy(DEFAULT_POLICY))  # the store keeps the policy in real-life order
    with pytest.raises(ConfigMismatchError, match=re.escape(f'--view-policy "{stored}" to resume')):
        _run(data, tmp_path / "s.zarr", view_policy="jpeg:60-90")


def test_the_default_policy_adds_no_noise():
    """Noise views hid noisier unseen generators from the statistics' discriminant (docs/results)."""
    p = parse_policy(DEFAULT_POLICY)
    assert {op for op, _, _ in p.ranges} == {"jpeg", "webp", "resize", "blur"}
    assert not any(s.op == "noise" for i in range(1, 200) for s in draw_view(p, f"{i:064x}", 1))


def _planted(root: Path, n: int, seed: int) -> Path:
    """Per-image colour casts; gen adds a strong 2-pixel checkerboard (heavy JPEG wipes it) and a
    weak red tint (JPEG keeps it): clean training can lean on the checkerboard alone."""
    rng = np.random.default_rng(seed)
    for cls in ("real", "gen"):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            a = 128 + rng.normal(0, 6, (64, 64, 3)) + rng.normal(0, 8, 3)
            if cls == "gen":
                a += 24.0 * ((np.indices((64, 64)).sum(0) % 2) * 2 - 1)[..., None]
                a[..., 0] += 8.0
            Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(root / cls / f"{i:03d}.png")
    return root


@pytest.mark.slow
def test_a_cue_that_survives_jpeg_is_learned_when_views_are_on(tmp_path):
    from leakstore.model.config import ModelConfig
    from leakstore.model.train import train
    from leakstore.pipelines.evaluate import evaluate

    data = _planted(tmp_path / "data", 40, 0)
    unseen = _planted(tmp_path / "unseen", 30, 1)  # independent images to measure on
    featurize_tiny(unseen, tmp_path / "jpeg.zarr", view="jpeg:10")
    # what the networks learn (the stored statistics' discriminant reads the tint whatever the views)
    cfg = ModelConfig(
        width=8, embed_dim=16, epochs=12, batch_size=16, renoise=False, view_prob=0.5, members=1, discriminant=0.0
    )
    acc = {}
    for views in (0, 2):
        store = tmp_path / f"s{views}.zarr"
        _run(data, store, views=views, view_policy="jpeg:5-15")
        train(store, tmp_path / f"run{views}", cfg, progress=False)
        m = evaluate(tmp_path / f"run{views}", [str(tmp_path / "jpeg.zarr")], tmp_path / f"ev{views}", split="all")
        acc[views] = m["robustness"][0]["top1"]
    assert acc[2] > 0.9 and acc[2] > acc[0] + 0.08, acc  # clean training leaned on the fragile cue
