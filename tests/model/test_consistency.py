"""Paired clean/view training (`train --consistency`): every clean row trains beside one of its own
training views, the view's class distribution is pulled toward the clean row's and never the other
way, and it trains the same model streamed as in memory."""

import numpy as np
import pytest
import torch

from leakstore.model import train as train_mod
from leakstore.model.checkpoint import build_member
from leakstore.model.config import ModelConfig
from leakstore.model.predict import batch_dict
from leakstore.model.rows import MemoryRows
from leakstore.model.train import _paired_loss, _view_of, _view_table, train
from leakstore.store import FeatureStore
from tests.conftest import featurize_tiny, write_class_images

CFG = ModelConfig(width=8, embed_dim=16, epochs=2, batch_size=8, protos_per_class=1, members=1, consistency=1.0)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    d = tmp_path_factory.mktemp("consistency")
    data = write_class_images(d / "data", {"real": 10, "gen-a": 10}, size=(72, 64))
    featurize_tiny(data, d / "s.zarr", train_views=2)
    return FeatureStore.open(d / "s.zarr")


def _tables(store):
    feats = store.load()
    tr = np.flatnonzero(feats.splits == 0)
    clean, views = _view_table(store, feats, tr)
    return feats, clean, views


def test_each_clean_row_trains_beside_one_of_its_own_views(store, monkeypatch):
    feats, clean, views = _tables(store)
    src, vi = store.source_rows()[feats.rows], store.view_index()[feats.rows]
    net = build_member(CFG, store.config, 2)
    net.set_normalisation(batch_dict(feats, slice(None), net.inputs, "cpu"))
    seen = []  # the positions of every forward pass, in order
    real_batch = train_mod._batch
    monkeypatch.setattr(
        train_mod, "_batch", lambda f, idx, *a, **k: seen.append(f.rows[idx]) or real_batch(f, idx, *a, **k)
    )
    y = feats.labels.astype(np.int64)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    fcfg = store.config
    _, forwarded = train_mod._epoch(
        net, opt, MemoryRows(feats), y, clean, CFG, fcfg, "cpu", gen, view_of=_view_of(len(y), clean, views)
    )
    clean_rows, view_rows = np.concatenate(seen[0::2]), np.concatenate(seen[1::2])
    assert forwarded == len(clean_rows) + len(view_rows)  # the speed counts the views' work too
    assert sorted(clean_rows.tolist()) == sorted(feats.rows[clean.numpy()].tolist())  # every clean row once
    assert len(view_rows) == len(clean_rows)  # every one here has two views: one of them beside it
    row_at = {int(r): i for i, r in enumerate(feats.rows)}
    pos = np.array([row_at[int(r)] for r in view_rows])
    assert (vi[pos] > 0).all()
    np.testing.assert_array_equal(src[pos], clean_rows)  # each view is of the clean row it trains beside
    assert len(set(vi[pos].tolist())) == 2  # drawn among the views, not always the first


def test_the_view_is_pulled_toward_the_clean_row_never_the_clean_row_toward_it(store):
    feats, clean, views = _tables(store)
    fcfg = store.config
    net = build_member(CFG, fcfg, 2)
    net.set_normalisation(batch_dict(feats, slice(None), net.inputs, "cpu"))
    pos = clean[:8]
    logits = torch.randn(8, 2, requires_grad=True)
    y = torch.as_tensor(feats.labels.astype(np.int64))
    view_of = _view_of(len(y), clean, views)
    gen = torch.Generator().manual_seed(0)
    args = (net, MemoryRows(feats), feats, pos, logits, view_of, y, CFG, fcfg, "cpu")
    loss, n = _paired_loss(*args, gen, None)
    assert n == 8 and loss.requires_grad
    loss.backward()
    assert logits.grad is None  # the clean prediction is the target: no gradient reaches it
    heavy = _paired_loss(*args[:7], CFG.replace(consistency=50.0), *args[8:], torch.Generator().manual_seed(0), None)
    assert float(heavy[0].detach()) > float(loss.detach())  # the same view, the divergence weighed more
    none = _view_of(len(y), clean, torch.full_like(views, -1))
    assert _paired_loss(net, MemoryRows(feats), feats, pos, logits, none, y, CFG, fcfg, "cpu", gen, None) is None


def test_paired_training_streamed_equals_in_memory(store, tmp_path):
    a = train(store.path, tmp_path / "mem", CFG, progress=False, stream="off")
    b = train(
        store.path, tmp_path / "str", CFG, progress=False, stream="on", buffer=4096
    )  # one window: the order memory gives; views still read
    assert b["streamed"] and not a["streamed"]
    for ha, hb in zip(a["history"], b["history"], strict=True):
        assert ha["train_loss"] == pytest.approx(hb["train_loss"], rel=1e-4, abs=1e-5)
        assert ha["val_loss"] == pytest.approx(hb["val_loss"], rel=1e-4, abs=1e-5)
    assert a["consistency"] == 1.0
    assert all(h["rows"] == 2 * a["train_rows"] // 3 for h in a["history"])  # clean rows and one view each
    with pytest.raises(Exception, match="consistency"):
        CFG.replace(consistency=-1.0)


def test_a_model_saved_before_paired_training_reads_as_trained_without_it():
    d = ModelConfig().to_dict()
    assert d["consistency"] == 1.0  # the default on a store with training views
    del d["consistency"]
    assert ModelConfig.from_dict(d).consistency == 0.0
