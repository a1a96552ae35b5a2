"""Training from a store alone: it learns, flags unseen generators, refuses bad stores, round-trips."""

import json

import numpy as np
import pytest
import torch

from leakstore.errors import ConfigMismatchError, InputError
from leakstore.features import residual_dim
from leakstore.model.checkpoint import load_bundle
from leakstore.model.config import ModelConfig
from leakstore.model.metrics import closed_set, open_set
from leakstore.model.predict import predict
from leakstore.model.train import train
from leakstore.store import FeatureStore
from tests.synthetic import CFG, planted_store

FAST = ModelConfig(width=16, embed_dim=32, epochs=20, patience=20, batch_size=32, lr=1e-3, members=1)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("train")
    planted_store(d / "s.zarr", per_class=60)
    summary = train(d / "s.zarr", d / "run", FAST, unknown_labels=["gen-c"], progress=False)
    return d, summary


def test_learns_a_planted_leak_and_flags_the_unseen_one(trained):
    d, summary = trained
    b = load_bundle(d / "run")
    store = FeatureStore.open(d / "s.zarr")
    f = store.load()
    test = f.subset(f.splits == 2)
    p = predict(b, test)
    known = test.labels != store.class_names.index("gen-c")
    y = np.array([b.class_names.index(store.class_names[i]) for i in test.labels[known]])
    m = closed_set(y, p["proba"][known], b.class_names)
    assert m["top1"] > 0.95 and m["macro_auc"] > 0.98
    o = open_set(p["open_score"][known], p["open_score"][~known])
    assert o["auroc"] > 0.8, o  # the unseen planted generator sits outside the known density
    assert summary["epochs_run"] >= 1 and summary["best_epoch"] >= 1
    assert b.class_names == ["real", "gen-a", "gen-b"] and summary["unknown_labels"] == ["gen-c"]


def test_checkpoint_round_trip_is_exact(trained):
    d, _ = trained
    f = FeatureStore.open(d / "s.zarr").load()
    a, b = load_bundle(d / "run"), load_bundle(d / "run")
    pa, pb = predict(a, f), predict(b, f)
    np.testing.assert_array_equal(pa["proba"], pb["proba"])
    np.testing.assert_array_equal(pa["open_score"], pb["open_score"])
    files = sorted(p.name for p in (d / "run").iterdir())
    assert "model.safetensors" in files and "scorers.safetensors" in files
    assert not any(n.endswith((".pt", ".pth", ".pkl")) for n in files)
    meta = json.loads((d / "run" / "model.json").read_text())
    assert meta["featurize_hash"] == CFG.hash and meta["model_config"]["protos_per_class"] == 6


def test_resume_continues_where_it_stopped(tmp_path):
    planted_store(tmp_path / "s.zarr", per_class=20)
    cfg = FAST.replace(epochs=2)
    train(tmp_path / "s.zarr", tmp_path / "run", cfg, progress=False)
    with pytest.raises(InputError, match="--resume"):
        train(tmp_path / "s.zarr", tmp_path / "run", cfg, progress=False)
    s = train(tmp_path / "s.zarr", tmp_path / "run", cfg.replace(epochs=4), resume=True, progress=False)
    assert [h["epoch"] for h in s["history"]] == [1, 2, 3, 4]


def test_refuses_another_config_and_too_few_rows(tmp_path):
    planted_store(tmp_path / "s.zarr", per_class=20)
    other = CFG.replace(timesteps=(0, 50))
    with pytest.raises(ConfigMismatchError, match="timesteps"):
        train(tmp_path / "s.zarr", tmp_path / "run", FAST, expect=other, progress=False)
    planted_store(tmp_path / "tiny.zarr", per_class=5)
    with pytest.raises(InputError, match="at least"):
        train(tmp_path / "tiny.zarr", tmp_path / "run2", FAST, progress=False)
    with pytest.raises(InputError, match="not classes"):
        train(tmp_path / "s.zarr", tmp_path / "run3", FAST, unknown_labels=["nope"], progress=False)
    planted_store(tmp_path / "s2.zarr", per_class=20, cfg=CFG.replace(fft_size=2))
    train(tmp_path / "s.zarr", tmp_path / "run4", FAST.replace(epochs=1), progress=False)
    with pytest.raises(ConfigMismatchError):
        train(tmp_path / "s2.zarr", tmp_path / "run4", FAST.replace(epochs=1), resume=True, progress=False)


@pytest.mark.parametrize("backbone,temporal", [("resnet", "attention"), ("patch-transformer", "transformer")])
def test_other_backbones_train(tmp_path, backbone, temporal):
    planted_store(tmp_path / "s.zarr", per_class=20)
    s = train(
        tmp_path / "s.zarr",
        tmp_path / "run",
        FAST.replace(epochs=2, backbone=backbone, temporal=temporal, renoise=False, scorer="gmm"),
        progress=False,
    )
    assert np.isfinite(s["history"][-1]["train_loss"])
    assert load_bundle(tmp_path / "run").closed.__class__.__name__ == "ClassGMM"


def test_batch_roll_shifts_each_sample_circularly_like_torch_roll():
    from leakstore.model.train import _roll

    x = torch.randn(5, 3, 2, 6, 7)
    out = _roll(x, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    dy, dx = torch.randint(0, 6, (5,), generator=g), torch.randint(0, 7, (5,), generator=g)
    want = torch.stack([torch.roll(x[i], (int(dy[i]), int(dx[i])), (-2, -1)) for i in range(5)])
    assert torch.equal(out, want)
    assert not torch.equal(out, x)


@pytest.mark.gpu
def test_trains_on_cuda_with_device_noise_and_resident_features(tmp_path):
    planted_store(tmp_path / "s.zarr", per_class=60)
    summary = train(tmp_path / "s.zarr", tmp_path / "run", FAST, device="cuda", progress=False)
    b = load_bundle(tmp_path / "run")
    f = FeatureStore.open(tmp_path / "s.zarr").load()
    test = f.subset(f.splits == 2)
    p = predict(b, test)
    y = np.array(
        [b.class_names.index(n) for n in np.array(FeatureStore.open(tmp_path / "s.zarr").class_names)[test.labels]]
    )
    assert summary["device"].startswith("cuda") and (p["pred"] == y).mean() > 0.95


@pytest.mark.slow
def test_a_class_difference_only_in_the_residual_is_learned_through_its_branch(tmp_path):
    """Latents carry no class signal here (strength 0); only the residual vector differs by class.
    With the residual the model separates the classes; told to ignore it, it cannot."""
    from tests.synthetic import CFG_RESIDUAL

    planted_store(
        tmp_path / "s.zarr",
        classes=("real", "gen-a", "gen-b"),
        per_class=60,
        strength=0.0,
        cfg=CFG_RESIDUAL,
        residual_strength=1.5,
    )
    store = FeatureStore.open(tmp_path / "s.zarr")
    f = store.load()
    test = f.subset(f.splits == 2)
    assert f.get("residual") is not None and f["residual"].shape == (180, residual_dim(CFG_RESIDUAL))
    acc = {}
    for use in (True, False):
        train(tmp_path / "s.zarr", tmp_path / f"run{use}", FAST.replace(use_residual=use, epochs=15), progress=False)
        b = load_bundle(tmp_path / f"run{use}")
        assert ("residual" in b.net.inputs) == use
        acc[use] = float((predict(b, test)["pred"] == test.labels).mean())
    assert acc[True] > 0.95 and acc[False] < 0.6, acc


def test_a_run_logged_to_a_file_gets_a_line_per_epoch_not_a_bar(tmp_path, capsys):
    planted_store(tmp_path / "s.zarr", per_class=20)
    train(tmp_path / "s.zarr", tmp_path / "run", FAST.replace(epochs=2, patience=5), progress=True)
    err = capsys.readouterr().err  # pytest's capture is no terminal, as a log file is not
    lines = [ln for ln in err.splitlines() if "epoch" in ln]
    assert [ln.split(":")[0] for ln in lines] == ["train 1/1 epoch 1/2", "train 1/1 epoch 2/2"]
    assert "\r" not in err and "val AUC" in lines[0]
