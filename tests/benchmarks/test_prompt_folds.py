"""benchmarks.prompt_folds: fold copies that leave the source alone, and every training image judged once."""

import numpy as np

from benchmarks import prompt_folds
from leakstore.model.config import ModelConfig
from leakstore.store import FeatureStore
from tests.synthetic import planted_store

CFG = ModelConfig(width=8, embed_dim=16, epochs=2, batch_size=16, protos_per_class=1, members=1)


def test_the_folds_judge_every_training_image_once_by_a_model_that_never_trained_on_it(tmp_path):
    planted_store(tmp_path / "s.zarr", classes=("real", "gen-a", "gen-b"), per_class=20, chunk=16)
    src = FeatureStore.open(tmp_path / "s.zarr", mode="r+")
    split = src.read("split").copy()
    # prompts, each in one split (as a store split by prompt has them), every class on each
    src.group["group"][:] = np.array([f"prompt-{s}-{i % 3}" for i, s in enumerate(split)])
    prompts = np.array([str(g) for g in src.read("group")], dtype=object)
    r = prompt_folds.run(tmp_path / "s.zarr", tmp_path / "folds", 2, (0.0, 0.2, 1.0), cfg=CFG)
    np.testing.assert_array_equal(FeatureStore.open(tmp_path / "s.zarr").read("split"), split)  # untouched
    held = [set(f) for f in r["folds"]]
    assert not held[0] & held[1] and held[0] | held[1] == set(prompts[split == 0])
    for k in range(2):
        fs = FeatureStore.open(tmp_path / "folds" / f"fold{k}.zarr").read("split")
        mine = np.isin(prompts, list(held[k]))
        np.testing.assert_array_equal(fs, np.where(mine, 2, split))  # the fold's prompts test, the rest as they were
    for w in ("0.0", "0.2", "1.0"):
        clean = r["weights"][w]["clean"]
        assert clean["images"] == int((split == 0).sum()) and len(clean["per_fold"]) == 2
        assert 0.0 <= clean["macro_auc"] <= 1.0
    # weight 0 is the networks' own attribution, weight 1 the discriminant's: not the same figures
    assert r["weights"]["0.0"]["clean"] != r["weights"]["1.0"]["clean"]
    again = prompt_folds.run(tmp_path / "s.zarr", tmp_path / "folds", 2, (0.2,), cfg=CFG)  # reuses the folds
    assert again["weights"]["0.2"] == r["weights"]["0.2"]
