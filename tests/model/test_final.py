"""train --final: the test split trains too, and no command then reports figures on it."""

import numpy as np
import pytest

from leakstore.errors import InputError
from leakstore.model.config import ModelConfig
from leakstore.model.train import train, training_splits
from leakstore.pipelines.evaluate import evaluate
from leakstore.store import FeatureStore
from tests.conftest import featurize_tiny, write_class_images

CFG = ModelConfig(width=8, embed_dim=16, epochs=1, batch_size=8, protos_per_class=1, members=1)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    d = tmp_path_factory.mktemp("final")
    data = write_class_images(d / "data", {"real": 12, "gen-a": 12}, size=(32, 32))
    featurize_tiny(data, d / "s.zarr", resolution=32, fractions=(0.5, 0.25, 0.25))
    return FeatureStore.open(d / "s.zarr")


def test_final_trains_on_the_test_split_too(store, tmp_path):
    split = store.read("split")
    assert (split == 2).sum() > 0
    held = train(store.path, tmp_path / "held", CFG, progress=False)
    final = train(store.path, tmp_path / "final", CFG.replace(final=True), progress=False)
    assert not held["final"] and final["final"]
    assert final["train_rows"] == held["train_rows"] + int((split == 2).sum())
    assert final["val_rows"] == held["val_rows"]  # validation still chooses the epoch and calibrates
    np.testing.assert_array_equal(training_splits(split, CFG), split)  # without --final: the store's splits


def test_evaluate_and_the_sweep_refuse_the_test_split_a_final_model_trained_on(store, tmp_path):
    from leakstore.pipelines.sweep import sweep

    train(store.path, tmp_path / "held", CFG, progress=False)
    train(store.path, tmp_path / "final", CFG.replace(final=True), progress=False)
    m = evaluate(tmp_path / "held", [str(store.path)], tmp_path / "ev-held")  # held out: judged
    assert m["views"][0]["closed"]["n"] == int(((store.read("split") == 2) & (store.view_index() == 0)).sum())
    # val+test: both held-out splits' images together, the validation ones and the test ones
    split, clean = store.read("split"), store.view_index() == 0
    both = evaluate(tmp_path / "held", [str(store.path)], tmp_path / "ev-vt", split="val+test")["views"][0]
    assert both["split"] == "val+test" and both["closed"]["n"] == int((np.isin(split, (1, 2)) & clean).sum())
    assert both["closed"]["n"] > m["views"][0]["closed"]["n"]
    for split in ("test", "val+test", "all"):
        with pytest.raises(InputError, match="--final"):
            evaluate(tmp_path / "final", [str(store.path)], tmp_path / f"ev-{split}", split=split)
    m = evaluate(tmp_path / "final", [str(store.path)], tmp_path / "ev-val", split="val")
    assert m["final"] and "train --final" in (tmp_path / "ev-val" / "report.html").read_text()
    assert not evaluate(tmp_path / "held", [str(store.path)], tmp_path / "ev-v", split="val")["final"]
    with pytest.raises(InputError, match="in-sample"):  # refused before any view is featurized
        sweep(tmp_path / "final", views=["jpeg:75"], out=tmp_path / "sweep", progress=False)
    assert not (tmp_path / "sweep" / "views").exists()


def test_a_model_saved_before_final_existed_reads_as_trained_without_it():
    d = ModelConfig().to_dict()
    del d["final"]
    assert ModelConfig.from_dict(d).final is False


def test_a_final_model_may_fit_outlier_copies_of_the_test_images_it_learns(store, tmp_path, monkeypatch):
    import leakstore.model.train as train_mod

    seen = []

    def judged(path, st, exclude=(), seed=0, judged_splits=(1, 2)):
        seen.append(judged_splits)
        raise InputError("stop here")

    monkeypatch.setattr(train_mod, "outlier_rows", judged)
    for final in (False, True):
        with pytest.raises(InputError, match="stop here"):
            train(store.path, tmp_path / f"r{final}", CFG.replace(final=final), outliers=store.path, progress=False)
    assert seen == [(1, 2), (1,)]  # validation images' copies never fit; test images' only when learned


def test_the_command_line_says_what_a_final_model_is_for(store, tmp_path):
    from typer.testing import CliRunner

    from leakstore.cli import app

    args = ["train", str(store.path), "--out", str(tmp_path / "run"), "--final", "--members", "1"]
    args += ["--epochs", "1", "--width", "8", "--embed-dim", "16", "--protos-per-class", "1", "--no-progress"]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "--final: the test split" in r.output and f"next: leakstore score {tmp_path / 'run'}" in r.output
    r = CliRunner().invoke(app, ["evaluate", str(tmp_path / "run"), str(store.path)])
    assert r.exit_code != 0 and "in-sample" in r.output


def test_evaluate_counts_judged_images_the_networks_trained_on_even_as_re_saved_copies(store, tmp_path):
    from leakstore.model.checkpoint import load_bundle

    held = train(store.path, tmp_path / "held", CFG, progress=False)
    train(store.path, tmp_path / "final", CFG.replace(final=True), progress=False)
    assert len(load_bundle(tmp_path / "held").trained_images) == held["train_rows"]  # one key per image
    # the same images re-saved: another store (another id), the same source digests
    data = store.path.parent / "data"
    copies = tmp_path / "jpeg.zarr"
    featurize_tiny(data, copies, resolution=32, view="jpeg:90", fractions=(0.5, 0.25, 0.25))
    n_test = int((FeatureStore.open(copies).read("split") == 2).sum())
    m = evaluate(tmp_path / "held", [str(store.path), str(copies)], tmp_path / "ev-held")
    assert [v["trained_images"] for v in m["views"]] == [0, 0] and m["in_sample"] == {}
    m = evaluate(tmp_path / "final", [str(copies)], tmp_path / "ev-final")  # its test images, re-saved
    assert m["views"][0]["trained_images"] == n_test and m["in_sample"] == {str(copies): n_test}
    assert "In-sample" in (tmp_path / "ev-final" / "report.html").read_text()
    m = evaluate(tmp_path / "held", [str(copies)], tmp_path / "ev-train", split="all")  # its training images
    assert m["views"][0]["trained_images"] == held["train_rows"]
    # the copies given as an outside source: every row of an outside store is judged, the training images too
    m = evaluate(tmp_path / "held", [str(store.path)], tmp_path / "ev-unseen", unseen=[str(copies)])
    per = m["unseen"]["per_generator"]
    assert sum(v["trained_images"] for v in per.values()) == held["train_rows"]
    assert m["in_sample"] == {str(copies): held["train_rows"]}
    assert str(copies) in (tmp_path / "ev-unseen" / "report.html").read_text()
    # the same store judged (all rows) and given as an outside source: its images count once
    m = evaluate(tmp_path / "held", [str(copies)], tmp_path / "ev-both", split="all", unseen=[str(copies)])
    assert m["views"][0]["trained_images"] == held["train_rows"]
    assert m["in_sample"] == {str(copies): held["train_rows"]}


def test_a_model_that_did_not_record_its_training_images_is_judged_without_the_count(store, tmp_path):
    import json

    train(store.path, tmp_path / "run", CFG, progress=False)
    meta = json.loads((tmp_path / "run" / "model.json").read_text())
    del meta["trained_images"]  # as models saved before the record existed
    (tmp_path / "run" / "model.json").write_text(json.dumps(meta))
    m = evaluate(tmp_path / "run", [str(store.path)], tmp_path / "ev")
    assert m["views"][0]["trained_images"] is None and m["in_sample"] == {}
