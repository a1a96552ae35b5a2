"""benchmarks.heldout_folds: a held-out generator judged out of fold, its outlier copies left out."""

import numpy as np
import pytest

from benchmarks import heldout_folds
from leakstore.store import DONE, Catalog, FeatureStore
from tests.synthetic import CFG, planted_store


def _with_prompts(path):
    """A planted store whose rows carry prompts (six, each in one split, every class on each)."""
    st = FeatureStore.open(path, mode="r+")
    split = st.read("split")
    st.group["group"][:] = np.array([f"prompt-{s}-{i % 3}" for i, s in enumerate(split)], dtype=object).astype(
        st.read("group").dtype
    )
    return st


def _copies_of(store, label, path, source=None):
    """An outlier store whose rows are the known store's `label` rows as they are, named as make-outliers
    names a copy ('KIND/SOURCE', the source image's prompt as group): what a held-out generator's copies are."""
    c = store.class_names.index(label)
    rows = np.flatnonzero((store.read("label") == c) & (store.read("split") != 2))
    cat = Catalog(
        paths=tuple(f"/o/{i}.png" for i in range(len(rows))),
        labels=np.zeros(len(rows), np.int16),
        splits=np.zeros(len(rows), np.int8),
        groups=tuple(str(g) for g in store.read("group")[rows]),
        class_names=(f"copy/{source or label}",),
        split_source="test",
    )
    st = FeatureStore.create(path, CFG, cat, chunk_size=8)
    for k in range(st.n_chunks):
        r = st.chunk_rows(k)
        src = rows[r.start : r.stop]
        data = {a: store.group[a][src] for a in ("latent0", "latents", "spectra")}
        data.update({"sha256": np.array(["1" * 64] * len(src)), "error": np.array([""] * len(src))})
        st.write_chunk(k, data, np.full(len(src), DONE, np.uint8))
    return st


def test_a_held_out_generator_is_judged_out_of_fold_and_never_against_its_own_copies(tmp_path):
    planted_store(tmp_path / "k.zarr", per_class=30, strength=1.0)
    store = _with_prompts(tmp_path / "k.zarr")
    r = heldout_folds.run(tmp_path / "k.zarr", folds=2, draws=2)
    assert set(r["per_generator"]) == set(store.class_names) - {"real"} and r["prompts"] == 6  # as the study
    assert all(len(v) == 2 and all(0 <= a <= 1 for a in v) for v in r["per_generator"].values())
    assert r["mean"] == pytest.approx(np.mean(r["mean_per_draw"]))
    # copies of gen-c's images as outliers, named as made from another class: they stay in when gen-c is
    # held out and explain it (the inflation the benchmark guards against) ...
    _copies_of(store, "gen-c", tmp_path / "wrong.zarr", source="elsewhere")
    inflated = heldout_folds.run(tmp_path / "k.zarr", tmp_path / "wrong.zarr", folds=2, draws=2)
    assert min(inflated["per_generator"]["gen-c"]) > 0.95
    # ... named as gen-c's copies, they are left out with it: gen-c is judged as without them
    _copies_of(store, "gen-c", tmp_path / "o.zarr")
    fair = heldout_folds.run(tmp_path / "k.zarr", tmp_path / "o.zarr", folds=2, draws=2)
    assert max(fair["per_generator"]["gen-c"]) < 0.9
    np.testing.assert_allclose(fair["per_generator"]["gen-c"], r["per_generator"]["gen-c"], atol=0.15)


def test_a_scorer_that_reads_the_network_is_sent_to_the_study(tmp_path):
    planted_store(tmp_path / "k.zarr", per_class=12)
    _with_prompts(tmp_path / "k.zarr")
    with pytest.raises(SystemExit, match="openset-study"):
        heldout_folds.run(tmp_path / "k.zarr", scorer="prototype", folds=2, draws=1)
    with pytest.raises(SystemExit, match="not an open-set scorer"):
        heldout_folds.run(tmp_path / "k.zarr", scorer="knn", folds=2, draws=1)
