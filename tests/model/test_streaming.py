"""Training streamed from the store's chunks: every row once per epoch, bounded windows, the same
model as in memory when one window holds the store, and good models when it does not."""

import numpy as np
import pytest
import torch

from leakstore.errors import InputError
from leakstore.model.checkpoint import build_member, load_bundle
from leakstore.model.config import ModelConfig
from leakstore.model.metrics import closed_set
from leakstore.model.net import NormStats
from leakstore.model.predict import batch_dict, embed_all, embed_rows, predict
from leakstore.model.rows import MemoryRows, StreamRows, open_rows, should_stream
from leakstore.model.train import _capped, _sample_groups, train
from leakstore.store import FeatureStore
from tests.synthetic import CFG, planted_store

FAST = ModelConfig(width=16, embed_dim=32, epochs=6, patience=6, batch_size=32, lr=1e-3, members=1)
NAMES = ("latent0", "latents", "spectra")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    d = tmp_path_factory.mktemp("stream")
    return planted_store(d / "s.zarr", per_class=40, chunk=16)  # 160 rows, 10 chunks


def _stream(store, buffer=32):
    return StreamRows(store, NAMES, store.load(()), buffer=buffer)


def test_an_epoch_reads_every_row_once_in_full_batches_from_bounded_windows(store):
    s = _stream(store, buffer=32)  # two chunks per window
    sizes = []
    fetch = s.fetch
    s.fetch = lambda pos: sizes.append(len(pos)) or fetch(pos)
    idx = torch.arange(0, len(s), 2)  # 80 positions, eight per chunk
    got, batch_lens = [], []
    full = store.load(NAMES)
    for pos, feats, local in s.batches(idx, 12, torch.Generator().manual_seed(0)):
        got.append(pos.numpy())
        batch_lens.append(len(local))
        # the batch's features are the store's rows at those positions
        np.testing.assert_array_equal(feats["latents"][local].numpy(), full["latents"][pos].numpy())
        assert np.array_equal(feats.rows[local.numpy()], s.rows[pos.numpy()])
    got = np.concatenate(got)
    assert sorted(got.tolist()) == idx.tolist()  # each once
    assert all(n == 12 for n in batch_lens[:-1]) and sum(batch_lens) == 80
    assert max(sizes) <= 16 and len(sizes) == 5  # two chunks' rows at a time, never more
    assert not np.array_equal(got, np.sort(got))  # shuffled
    again = np.concatenate([p.numpy() for p, _, _ in s.batches(idx, 12, torch.Generator().manual_seed(0))])
    np.testing.assert_array_equal(got, again)  # the same seed, the same order
    s.close()


def test_without_a_generator_rows_come_in_the_order_asked(store):
    s = _stream(store)
    idx = torch.tensor([3, 40, 41, 90, 150])
    assert np.concatenate([p.numpy() for p, _, _ in s.batches(idx, 2)]).tolist() == idx.tolist()
    f = s.fetch([150, 3, 90])
    np.testing.assert_array_equal(f["latent0"].numpy(), store.load(["latent0"])["latent0"][[150, 3, 90]].numpy())
    s.close()


def test_norm_stats_summed_in_pieces_equal_torch_on_the_whole(store):
    net = build_member(FAST, CFG, 3)
    feats = store.load(NAMES)
    batch = batch_dict(feats, slice(None), net.inputs, "cpu")
    net.set_normalisation(batch)
    whole = {k: v.clone() for k, v in net.state_dict().items() if k.endswith(("_mean", "_std"))}
    lat = batch["latents"].float()
    torch.testing.assert_close(whole["lat_mean"][..., 0, 0], lat.mean((0, 3, 4)), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(whole["lat_std"][..., 0, 0], lat.std((0, 3, 4)), rtol=1e-4, atol=1e-6)
    stats = NormStats(net)
    for s in range(0, len(feats), 37):
        stats.update(batch_dict(feats, slice(s, s + 37), net.inputs, "cpu"))
    stats.apply()
    for k, v in whole.items():
        torch.testing.assert_close(net.state_dict()[k], v, rtol=1e-5, atol=1e-6)


def test_streaming_with_one_window_trains_the_model_memory_trains(store, tmp_path):
    a = train(store.path, tmp_path / "mem", FAST, unknown_labels=["gen-c"], progress=False, stream="off")
    b = train(store.path, tmp_path / "str", FAST, unknown_labels=["gen-c"], progress=False, stream="on", buffer=4096)
    assert not a["streamed"] and b["streamed"]
    for ha, hb in zip(a["history"], b["history"]):
        assert ha["train_loss"] == pytest.approx(hb["train_loss"], rel=1e-4, abs=1e-5)
        assert ha["val_loss"] == pytest.approx(hb["val_loss"], rel=1e-4, abs=1e-5)
    feats = store.load()
    pa, pb = predict(load_bundle(tmp_path / "mem"), feats), predict(load_bundle(tmp_path / "str"), feats)
    np.testing.assert_allclose(pa["proba"], pb["proba"], rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(pa["open_score"], pb["open_score"], rtol=1e-3, atol=1e-3)


def test_streaming_through_small_windows_still_learns(store, tmp_path):
    s = train(
        store.path,
        tmp_path / "run",
        FAST.replace(epochs=12, patience=12),
        unknown_labels=["gen-c"],
        progress=False,
        stream="on",
        buffer=32,
    )
    assert s["streamed"]
    b = load_bundle(tmp_path / "run")
    f = store.load()
    test = f.subset((f.splits == 2) & (f.labels != store.class_names.index("gen-c")))
    y = np.array([b.class_names.index(store.class_names[i]) for i in test.labels])
    assert closed_set(y, predict(b, test)["proba"], b.class_names)["macro_auc"] > 0.95


def test_embed_rows_equals_embed_all_in_any_order(store):
    net = build_member(FAST, CFG, 3)
    feats = store.load(NAMES)
    net.set_normalisation(batch_dict(feats, slice(None), net.inputs, "cpu"))
    idx = np.array([100, 5, 6, 70, 71, 72, 3, 159])
    want = embed_all(net, feats.subset(idx), "cpu")
    for src in (MemoryRows(feats), _stream(store, buffer=16)):
        emb, blocks = embed_rows(net, src, idx, "cpu", batch=3)
        for k in want:
            np.testing.assert_allclose(emb[k], want[k], rtol=1e-5, atol=1e-6)
        assert blocks["stats"].shape == (len(idx), 2 * CFG.latent_shape[0])
        src.close()


def test_scorers_fit_on_a_seeded_sample_of_whole_images():
    image = np.repeat(np.arange(100), 4)  # 100 images of 4 crops
    fit = {"train": np.arange(400) < 300, "val": np.arange(400) >= 300, "calibration": np.arange(400) >= 300}
    out = _capped(fit, image, seed=0, limit=50, cal_limit=50)
    assert 44 < out["train"].sum() <= 50 and out["train"].sum() % 4 == 0
    for m in out.values():  # whole images only
        assert np.all(np.bincount(image[m], minlength=100)[np.unique(image[m])] == 4)
    np.testing.assert_array_equal(out["val"], out["calibration"])
    assert _capped(fit, image, seed=0, limit=50, cal_limit=50)["train"].tolist() == out["train"].tolist()
    assert _capped(fit, image, seed=0, limit=50, cal_limit=1000)["val"].sum() == 100
    assert all(np.array_equal(_capped(fit, image, 0, 1000, 1000)[k], fit[k]) for k in fit)  # below the limit: every row


def test_auto_streams_only_what_does_not_fit(store, monkeypatch):
    import leakstore.model.rows as rows

    assert not should_stream(store, NAMES, 160)
    monkeypatch.setattr(rows, "physical_memory", lambda: 1000)
    assert should_stream(store, NAMES, 160)
    assert isinstance(open_rows(store, NAMES), StreamRows)
    assert isinstance(open_rows(store, NAMES, stream="off"), MemoryRows)
    with pytest.raises(InputError, match="--stream"):
        should_stream(store, NAMES, 160, "sometimes")


@pytest.mark.parametrize("batch", [1, 7, 40, 500])
def test_batches_span_windows_of_any_size(store, batch):
    s = _stream(store, buffer=16)  # windows of one chunk: 8 of the rows asked
    idx = torch.arange(0, len(s), 2)
    full = store.load(["latents"])["latents"]
    got, lens = [], []
    for pos, feats, local in s.batches(idx, batch, torch.Generator().manual_seed(1)):
        np.testing.assert_array_equal(feats["latents"][local].numpy(), full[pos].numpy())
        got.append(pos.numpy())
        lens.append(len(pos))
    assert sorted(np.concatenate(got).tolist()) == idx.tolist()
    assert all(n == batch for n in lens[:-1]) and 0 < lens[-1] <= batch
    limited = sum(len(p) for p, _, _ in s.batches(idx, batch, torch.Generator().manual_seed(1), limit=30))
    assert limited == 30
    s.close()


def test_samples_of_whole_chunks_stay_under_the_limit_and_keep_all_below_it():
    group = np.arange(1000) // 100  # ten chunks of 100 rows
    mask = np.arange(1000) % 2 == 0  # 50 rows in each
    out = _sample_groups(mask, group, seed=3, limit=220)
    assert out.sum() == 200 and not (out & ~mask).any()
    assert len(np.unique(group[out])) == 4 and all((out & (group == g)).sum() == 50 for g in np.unique(group[out]))
    assert _sample_groups(mask, group, seed=3, limit=500) is mask


def test_loading_a_chunk_of_rows_reads_the_row_arrays_over_that_span_only(store, monkeypatch):
    """Scoring a store reads it chunk by chunk: each read of status, labels, splits and paths must cost
    one chunk, not the whole store (it did: 4.3 s a chunk at 200,000 rows, 0.45 s after)."""
    seen = []
    read = store.read
    monkeypatch.setattr(store, "read", lambda name, rows=None: seen.append((name, rows)) or read(name, rows))
    f = store.load(["latent0"], rows=np.arange(32, 48))
    assert f.rows.tolist() == list(range(32, 48))
    for name, rows in seen:
        assert isinstance(rows, slice) and rows.start >= 32 and rows.stop <= 48, (name, rows)
    whole = FeatureStore.open(store.path).load(["latent0"])
    np.testing.assert_array_equal(f.labels, whole.labels[32:48])
    assert list(f.paths) == list(whole.paths[32:48])
