"""train --members M: M networks from seeds seed..seed+M-1, one joined embedding for every scorer."""

import json

import numpy as np
import pytest
import torch

import leakstore.model.train as train_module
from leakstore.model.checkpoint import build_member, load_bundle
from leakstore.model.config import ModelConfig
from leakstore.model.net import Ensemble
from leakstore.model.predict import predict
from leakstore.model.train import train
from leakstore.store import FeatureStore
from tests.synthetic import CFG, planted_store

FAST = ModelConfig(width=16, embed_dim=32, epochs=2, patience=20, batch_size=32, lr=1e-3, members=1)


def _members(n=2, k=3):
    out = []
    for s in range(n):
        torch.manual_seed(s)
        out.append(build_member(FAST, CFG, k))
    return out


def test_joint_distances_are_the_gate_weighted_distances_to_the_joined_prototypes():
    ens = Ensemble(_members())
    d = FAST.embed_dim
    z, g = torch.randn(5, 2 * d), torch.rand(5, 2 * d)
    want = (g[:, None, None] * (z[:, None, None] - ens.prototypes[None]) ** 2).sum(-1)
    torch.testing.assert_close(ens.distances(z, g), want)
    logits = torch.stack(
        [m.logits(z[:, i * d : (i + 1) * d], g[:, i * d : (i + 1) * d]) for i, m in enumerate(ens.members)]
    ).mean(0)
    torch.testing.assert_close(ens.logits(z, g), logits)
    centres = torch.randn(2, 2 * d)
    ens.add_prototypes(1, centres)
    m = FAST.protos_per_class
    for i, member in enumerate(ens.members):
        torch.testing.assert_close(member.prototypes[1, m : m + 2], centres[:, i * d : (i + 1) * d])
        assert member.proto_mask[1, m : m + 2].all() and not member.proto_mask[0, m:].any()


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("ens")
    planted_store(d / "s.zarr", per_class=20)
    single = train(d / "s.zarr", d / "one", FAST, unknown_labels=["gen-c"], progress=False)
    joint = train(d / "s.zarr", d / "two", FAST.replace(members=2), unknown_labels=["gen-c"], progress=False)
    return d, single, joint


def test_an_ensemble_trains_saves_and_predicts_on_the_joined_embedding(runs):
    d, single, joint = runs
    b = load_bundle(d / "two")
    assert isinstance(b.net, Ensemble) and len(b.net.members) == 2
    assert [m["seed"] for m in joint["members"]] == [0, 1] and "members" not in single
    assert json.loads((d / "two" / "model.json").read_text())["model_config"]["members"] == 2
    f = FeatureStore.open(d / "s.zarr").load()
    p = predict(b, f)
    assert p["embedding"].shape == (len(f), 2 * FAST.embed_dim)
    np.testing.assert_allclose(p["proba"].sum(1), 1, atol=1e-6)
    assert np.isfinite(p["open_score"]).all() and p["attention"].shape == (len(f), len(CFG.timesteps))
    np.testing.assert_array_equal(predict(load_bundle(d / "two"), f)["open_score"], p["open_score"])
    # the first member is the single network of the same seed, trained bit for bit alike
    one, first = load_bundle(d / "one").net.state_dict(), b.net.members[0].state_dict()
    for k, v in one.items():
        if k.rsplit(".", 1)[-1] not in ("prototypes", "proto_mask"):  # post-hoc slots are chosen jointly
            assert torch.equal(v, first[k]), k
    assert not torch.equal(b.net.members[1].state_dict()["fuse.0.weight"], first["fuse.0.weight"])


def test_an_ensemble_interrupted_between_members_resumes_to_the_same_model(runs, monkeypatch):
    d, _, _ = runs
    real = train_module._train_member

    def stop_at_second(k, *a, **kw):
        if k == 1:
            raise KeyboardInterrupt
        return real(k, *a, **kw)

    monkeypatch.setattr(train_module, "_train_member", stop_at_second)
    with pytest.raises(KeyboardInterrupt):
        train(d / "s.zarr", d / "cut", FAST.replace(members=2), unknown_labels=["gen-c"], progress=False)
    assert (d / "cut" / "train_state.json").exists() and not (d / "cut" / "model.json").exists()
    monkeypatch.setattr(train_module, "_train_member", real)
    s = train(d / "s.zarr", d / "cut", FAST.replace(members=2), unknown_labels=["gen-c"], resume=True, progress=False)
    assert [m["epochs_run"] for m in s["members"]] == [2, 2]
    a, b = load_bundle(d / "two").net.state_dict(), load_bundle(d / "cut").net.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_members_must_be_at_least_one():
    from leakstore.errors import InputError

    with pytest.raises(InputError, match="members"):
        ModelConfig(members=0)
