"""Find the images to featurize and their labels and splits: a `Catalog`.

Three input forms:
  * a folder per class: ROOT/<generator>/**/*.{png,jpg,...}  (a folder named `real` is the real class)
  * a manifest, CSV or Parquet, with columns path,label[,split][,group] (paths relative to the manifest)
  * WILD's layout: a folder per class plus ROOT/Split.json (train/val/test lists, by file name
    per class or by index into each class's sorted file list, i.e. prompt-aligned)

Splits come from the input when it has them; otherwise they are drawn once, stratified by
class, seeded, and grouped by `group` when present (so crops of one source never straddle
splits). The store keeps them: later stages never recompute them.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from leakstore.config import DEFAULT_SPLIT_FRACTIONS
from leakstore.errors import InputError
from leakstore.featurize.images import IMAGE_EXTENSIONS
from leakstore.store import SPLIT_CODES, Catalog

DEFAULT_FRACTIONS = DEFAULT_SPLIT_FRACTIONS
_SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
    "": None,
    "none": None,
    "nan": None,
}


def list_images(folder: Path) -> list[Path]:
    return sorted(
        (p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS),
        key=lambda p: str(p.relative_to(folder)),
    )


def list_inputs(inp) -> list[str]:
    """Images to score: a folder (recursively), a manifest (.csv/.parquet with a 'path' column,
    relative to the manifest), a glob, one image, or a list of paths."""
    import glob

    import pandas as pd

    if isinstance(inp, (list, tuple)):
        return [str(p) for p in inp]
    s = str(inp)
    p = Path(s)
    if p.is_dir():
        return [str(q.resolve()) for q in list_images(p)]
    if p.is_file() and p.suffix.lower() in (".csv", ".parquet"):
        df = pd.read_parquet(p) if p.suffix.lower() == ".parquet" else pd.read_csv(p, dtype=str, keep_default_na=False)
        if "path" not in df:
            raise InputError(f"{p}: a manifest needs a 'path' column")
        return [str((p.parent / q).resolve()) if not Path(q).is_absolute() else q for q in df["path"]]
    if p.is_file():
        return [str(p.resolve())]
    hits = sorted(glob.glob(s, recursive=True))
    if not hits:
        raise InputError(f"no input at {s}: give a store, a folder, a manifest, a glob or an image")
    return hits


def _split_code(value, where: str) -> int:
    key = str(value).strip().lower() if value is not None else ""
    if key not in _SPLIT_ALIASES:
        raise InputError(f"{where}: unknown split {value!r}; use train, val or test (or leave it empty)")
    name = _SPLIT_ALIASES[key]
    return -1 if name is None else SPLIT_CODES[name]


def _stable_rank(key: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()


def assign_splits(
    labels: np.ndarray, groups: list[str], *, seed: int = 0, fractions: tuple[float, float, float] = DEFAULT_FRACTIONS
) -> np.ndarray:
    """Seeded, stratified split codes (0 train, 1 val, 2 test) for every labelled row.

    Without groups each class is split on its own. With groups, whole groups go to one split
    (ordered by a seeded hash, cut at the fractions), so every crop of a source stays together.
    Unlabelled rows get -1. Depends only on (labels, groups, seed): reproducible anywhere.
    """
    if abs(sum(fractions) - 1.0) > 1e-6 or min(fractions) < 0:
        raise InputError(f"split fractions {fractions} must be non-negative and sum to 1")
    out = np.full(len(labels), -1, dtype=np.int8)
    bounds = np.cumsum(fractions)[:2]
    if any(groups):
        uniq = sorted(set(groups), key=lambda g: _stable_rank(g, seed))
        pos = {g: (i + 0.5) / len(uniq) for i, g in enumerate(uniq)}
        for i, g in enumerate(groups):
            if labels[i] >= 0:
                out[i] = int(np.searchsorted(bounds, pos[g], side="right"))
        return out
    for c in np.unique(labels[labels >= 0]):
        idx = np.flatnonzero(labels == c)
        order = sorted(idx, key=lambda i: _stable_rank(str(i), seed))
        n = len(order)
        n_train = max(1, round(fractions[0] * n)) if n >= 3 else n
        n_val = max(1, round(fractions[1] * n)) if n - n_train >= 2 else 0
        for j, i in enumerate(order):
            out[i] = 0 if j < n_train else (1 if j < n_train + n_val else 2)
    return out


def _finish(
    paths, label_names, splits, groups, *, real_label, seed, fractions, split_source, source, classes=None
) -> Catalog:
    classes = classes or sorted({name for name in label_names if name})
    index = {c: i for i, c in enumerate(classes)}
    labels = np.array([index[n] if n else -1 for n in label_names], dtype=np.int16)
    if splits is None:
        splits = assign_splits(labels, groups, seed=seed, fractions=fractions)
        split_source = (
            f"drawn: stratified{', grouped' if any(groups) else ''}, seed {seed}, fractions {list(fractions)}"
        )
    return Catalog(
        paths=tuple(os.path.abspath(p) for p in paths),
        labels=labels,
        splits=np.asarray(splits, dtype=np.int8),
        groups=tuple(groups),
        class_names=tuple(classes),
        real_class=real_label if real_label in index else None,
        split_source=split_source,
        source=source,
    )


def from_folders(root: Path, *, real_label: str, seed: int, fractions) -> Catalog:
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    paths, names = [], []
    for d in class_dirs:
        files = list_images(d)
        paths += files
        names += [d.name] * len(files)
    if not paths:
        loose = list_images(root)
        if loose:
            raise InputError(
                f"{root} holds images but no class folders: put them in {root}/<generator>/, "
                "or list them in a manifest (path,label) with an empty label for unlabelled images"
            )
        raise InputError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) under {root}")
    return _finish(
        paths,
        names,
        None,
        [""] * len(paths),
        real_label=real_label,
        seed=seed,
        fractions=fractions,
        split_source="",
        source=str(root),
    )


def from_wild(root: Path, *, real_label: str, seed: int, fractions) -> Catalog:
    """WILD: class folders plus Split.json; files listed in no split get split -1."""
    try:
        raw = json.loads((root / "Split.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"{root / 'Split.json'}: cannot read it ({e})") from None
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    files = {d.name: sorted(list_images(d), key=lambda p: p.name.lower()) for d in class_dirs}
    split_of: dict[Path, int] = {}
    for key, value in raw.items():
        name = _SPLIT_ALIASES.get(key.lower())
        if name is None:
            continue
        code = SPLIT_CODES[name]
        for cls, fl in files.items():
            if isinstance(value, dict):
                by_name = {p.name: p for p in fl}
                for entry in value.get(cls, []):
                    p = by_name.get(Path(str(entry)).name)
                    if p is None:
                        raise InputError(f"Split.json lists {cls}/{entry} under {key!r}, but no such image exists")
                    split_of[p] = code
            elif isinstance(value, list):
                for i in value:
                    if not 0 <= int(i) < len(fl):
                        raise InputError(
                            f"Split.json index {i} under {key!r} is out of range for class "
                            f"{cls!r}, which has {len(fl)} images"
                        )
                    split_of[fl[int(i)]] = code
            else:
                raise InputError(f"Split.json: {key!r} must map to a list of indices or a dict class -> files")
    paths = [p for d in class_dirs for p in files[d.name]]
    names = [d.name for d in class_dirs for _ in files[d.name]]
    splits = np.array([split_of.get(p, -1) for p in paths], dtype=np.int8)
    return _finish(
        paths,
        names,
        splits,
        [""] * len(paths),
        real_label=real_label,
        seed=seed,
        fractions=fractions,
        split_source="Split.json",
        source=str(root),
    )


def from_manifest(path: Path, *, real_label: str, seed: int, fractions) -> Catalog:
    import pandas as pd

    try:
        df = (
            pd.read_parquet(path)
            if path.suffix.lower() == ".parquet"
            else pd.read_csv(path, dtype=str, keep_default_na=False)
        )
    except Exception as e:
        raise InputError(f"{path}: cannot read the manifest ({type(e).__name__}: {e})") from None
    df.columns = [str(c).strip().lower() for c in df.columns]
    if "path" not in df.columns:
        raise InputError(f"{path}: the manifest needs a 'path' column (and usually 'label'); found {list(df.columns)}")
    base = path.parent
    paths = [(base / p) if not Path(p).is_absolute() else Path(p) for p in df["path"].astype(str)]
    names = [str(x).strip() if x is not None else "" for x in df["label"]] if "label" in df else [""] * len(df)
    names = ["" if n.lower() in ("nan", "none") else n for n in names]
    group_col = "group" if "group" in df else ("family_group" if "family_group" in df else None)
    groups = [str(g) for g in df[group_col]] if group_col else [""] * len(df)
    splits = None
    if "split" in df:
        splits = np.array([_split_code(s, f"{path} row {i + 2}") for i, s in enumerate(df["split"])], dtype=np.int8)
        if (splits < 0).all():
            splits = None
    return _finish(
        paths,
        names,
        splits,
        groups,
        real_label=real_label,
        seed=seed,
        fractions=fractions,
        split_source=f"manifest {path.name}" if splits is not None else "",
        source=str(path),
    )


def with_train_views(cat: Catalog, n: int, policy: str) -> Catalog:
    """`cat` plus `n` view rows for every labelled training and validation row, appended after the
    clean rows (which keep their order): same path, label, split and group, `source_rows` naming
    the clean row, `view_index` 1..n. Test rows get none: robustness sweeps measure them."""
    import dataclasses

    from leakstore.featurize.views import parse_policy

    if n <= 0:
        return cat
    if n > 64:
        raise InputError(f"--train-views {n}: at most 64 views per image")
    pol = str(parse_policy(policy))
    src = np.flatnonzero((cat.labels >= 0) & np.isin(cat.splits, (0, 1)))
    rows = np.repeat(src, n)
    idx = np.tile(np.arange(1, n + 1), len(src))
    return dataclasses.replace(
        cat,
        paths=cat.paths + tuple(cat.paths[i] for i in rows),
        labels=np.r_[cat.labels, cat.labels[rows]],
        splits=np.r_[cat.splits, cat.splits[rows]],
        groups=cat.groups + tuple(cat.groups[i] for i in rows),
        view_index=np.r_[np.zeros(len(cat), np.int16), idx].astype(np.int16),
        source_rows=np.r_[np.arange(len(cat)), rows].astype(np.int64),
        view_policy=pol,
    )


def with_crops(cat: Catalog, crops: int) -> Catalog:
    """Every row of `cat` as `crops` consecutive rows, one per crop (crop_index 0..crops-1), with the
    image's path, label, split and group: crops of one image never straddle splits, and
    `image_rows` (the row of its crop 0) groups them for per-image figures. A training view (after
    `with_train_views`) is an image of its own, each of its crops a view of the same clean crop."""
    import dataclasses

    if crops <= 1:
        return cat
    src = np.repeat(np.arange(len(cat)), crops)
    crop = np.tile(np.arange(crops), len(cat))
    views = {}
    if cat.view_index is not None:  # a training view's crop k comes from its clean image's crop k
        views = dict(
            view_index=cat.view_index[src].astype(np.int16),
            source_rows=(cat.source_rows[src] * crops + crop).astype(np.int64),
        )
    return dataclasses.replace(
        cat,
        paths=tuple(cat.paths[i] for i in src),
        labels=cat.labels[src],
        splits=cat.splits[src],
        groups=tuple(cat.groups[i] for i in src),
        crop_index=crop.astype(np.int16),
        image_rows=(src * crops).astype(np.int64),
        **views,
    )


def build_catalog(
    data: str | Path,
    *,
    real_label: str = "real",
    seed: int = 0,
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS,
) -> Catalog:
    """Dispatch on the input form (see module docstring)."""
    data = Path(data)
    if not data.exists():
        raise InputError(
            f"input {data} does not exist: give a folder per class, a manifest .csv/.parquet, "
            "or a WILD folder with Split.json"
        )
    kw = dict(real_label=real_label, seed=seed, fractions=fractions)
    if data.is_file():
        if data.suffix.lower() not in (".csv", ".parquet"):
            raise InputError(f"{data} is a file but not a manifest (.csv or .parquet)")
        return from_manifest(data, **kw)
    if (data / "Split.json").exists():
        return from_wild(data, **kw)
    return from_folders(data, **kw)
