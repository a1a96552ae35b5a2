import json

import numpy as np
import pytest

from leakstore.errors import InputError
from leakstore.featurize.datasets import assign_splits, build_catalog
from tests.conftest import write_class_images


def test_class_folders(class_folders):
    cat = build_catalog(class_folders)
    assert cat.class_names == ("gen-a", "gen-b", "real") and cat.real_class == "real"
    assert len(cat) == 29 and set(np.unique(cat.labels)) == {0, 1, 2}
    for c in range(3):  # stratified: every class in every split
        assert set(cat.splits[cat.labels == c]) == {0, 1, 2}
    assert "seed 0" in cat.split_source
    again = build_catalog(class_folders)
    assert np.array_equal(again.splits, cat.splits) and again.fingerprint == cat.fingerprint
    other = build_catalog(class_folders, seed=1)
    assert not np.array_equal(other.splits, cat.splits)


def test_nested_folders_and_extensions(tmp_path):
    write_class_images(tmp_path / "d" / "real" / "sub", {"x": 2})
    write_class_images(tmp_path / "d" / "gen", {"deep": 3}, fmt="jpg")
    (tmp_path / "d" / "gen" / "notes.txt").write_text("not an image")
    cat = build_catalog(tmp_path / "d")
    assert cat.class_names == ("gen", "real") and len(cat) == 5


def test_grouped_splits_never_straddle():
    labels = np.repeat(np.arange(3), 40)
    groups = [f"photo{i % 10}" for i in range(120)]
    s = assign_splits(labels, groups, seed=0)
    for g in set(groups):
        assert len({int(s[i]) for i in range(120) if groups[i] == g}) == 1
    assert set(s) == {0, 1, 2}


def test_manifest_with_splits_and_groups(class_folders):
    m = class_folders / "manifest.csv"
    rows = ["path,label,split,group"]
    for i, p in enumerate(sorted(class_folders.rglob("*.png"))):
        rows.append(f"{p.relative_to(class_folders)},{p.parent.name},{['train', 'val', 'test'][i % 3]},g{i}")
    rows.append("real/000.png,,,")  # unlabelled row
    m.write_text("\n".join(rows))
    cat = build_catalog(m)
    assert len(cat) == 30 and cat.labels[-1] == -1 and cat.splits[-1] == -1
    assert list(cat.splits[:3]) == [0, 1, 2] and cat.split_source == "manifest manifest.csv"


def test_manifest_errors(tmp_path):
    m = tmp_path / "m.csv"
    m.write_text("file,label\na.png,x\n")
    with pytest.raises(InputError, match="'path' column"):
        build_catalog(m)
    m.write_text("path,label,split\na.png,x,holdout\n")
    with pytest.raises(InputError, match="unknown split"):
        build_catalog(m)


def test_wild_split_json_by_index_and_by_name(class_folders):
    (class_folders / "Split.json").write_text(json.dumps({"train": [0, 1, 2, 3], "validation": [4], "test": [5, 6]}))
    cat = build_catalog(class_folders)
    assert cat.split_source == "Split.json"
    for c in range(3):  # prompt-aligned: the same indices in every class
        assert list(cat.splits[cat.labels == c][:7]) == [0, 0, 0, 0, 1, 2, 2]
    assert (cat.splits == -1).sum() == 29 - 21
    (class_folders / "Split.json").write_text(
        json.dumps({"train": {"real": ["000.png"]}, "test": {"gen-a": ["001.png"]}})
    )
    cat = build_catalog(class_folders)
    assert (cat.splits == 0).sum() == 1 and (cat.splits == 2).sum() == 1
    (class_folders / "Split.json").write_text(json.dumps({"train": [99]}))
    with pytest.raises(InputError, match="out of range"):
        build_catalog(class_folders)


def test_missing_and_empty_inputs(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        build_catalog(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no images"):
        build_catalog(tmp_path / "empty")
    write_class_images(tmp_path / "loose", {".": 2})
    with pytest.raises(InputError, match="no class folders"):
        build_catalog(tmp_path / "loose")
