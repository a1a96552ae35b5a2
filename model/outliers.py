"""Outlier exposure for the unknown flag: rows of images that no known generator made.

`leakstore make-outliers` writes such images (photographs; known images through simulated decoders
or another autoencoder) with a manifest whose label is `KIND/SOURCE` (the kind of copy, the source
image's class; `photo` for photograph crops) and whose group is the source's group; each kind is one
outlier class of the scorer. `leakstore featurize` turns that into an outlier store with the
training store's settings, and `train --outliers STORE` gives its rows to the open-set scorers that
take "other" classes (`lda`).

Which rows may fit: never one made from an image of the training store's validation or test
groups (a known validation image's copy would teach the scorer about the rows that judge it), and
never one made from a generator held out as unknown (in a leave-one-generator-out fold, that
generator's copies would be its fingerprint in the "other" classes).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from leakstore.errors import InputError
from leakstore.store import DONE, FeatureStore

MAX_ROWS = 20000  # a seeded sample above this many (the scorers' fit rows are capped alike: model/train.py)


def outlier_rows(
    path: str | Path, store: FeatureStore, exclude=(), seed: int = 0, judged_splits=(1, 2)
) -> tuple[FeatureStore, np.ndarray]:
    """(outlier store, the rows of it that may fit a scorer of a model trained on `store` without the
    generators in `exclude`; a seeded sample of MAX_ROWS of them when there are more). Copies of the
    images of `judged_splits` never fit (a model trained with --final judges only its validation split)."""
    ost = FeatureStore.open(path)
    if ost.config.hash != store.config.hash:
        raise InputError(
            f"--outliers {ost.path} was featurized with other settings than {store.path} (config "
            f"{ost.config.hash} vs {store.config.hash}): featurize its manifest with the same options "
            "(leakstore inspect shows them)"
        )
    # a copy's group is its source's group, or sha:<the source file's SHA-256> for a source without one
    judged = np.isin(store.read("split"), judged_splits)
    held_groups = {str(g) for g in store.read("group")[judged] if str(g)} | {
        f"sha:{h}" for h in store.read("sha256")[judged] if str(h)
    }
    ok = (
        (ost.read("status") == DONE)
        & ~np.isin(outlier_sources(ost, np.arange(ost.n)), list(exclude))
        & ~np.isin(np.array([str(g) for g in ost.read("group")], dtype=object), list(held_groups))
    )
    rows = np.flatnonzero(ok)
    if not len(rows):
        raise InputError(
            f"--outliers {ost.path} has no row that may fit this model (every row failed, or was made "
            f"from a validation or test image of {store.path} or from a held-out generator)"
        )
    if len(rows) > MAX_ROWS:
        rows = np.sort(np.random.default_rng(seed).choice(rows, MAX_ROWS, replace=False))
    return ost, rows


def outlier_kind(label: str) -> str:
    """The kind of an outlier row's label 'KIND/SOURCE' (make-outliers), or the whole label."""
    return label.split("/", 1)[0]


def outlier_source(label: str) -> str:
    """The class of the image an outlier copy was made from ('KIND/SOURCE'), or the whole label."""
    return label.rsplit("/", 1)[-1]


def outlier_sources(ost: FeatureStore, rows: np.ndarray) -> np.ndarray:
    """(len(rows),) object: the class of the image each outlier row was made from ('' for a row without a
    label), so that copies of a held-out generator's images can be left out with it."""
    names = ost.class_names
    return np.array([outlier_source(names[v]) if v >= 0 else "" for v in ost.read("label")[rows]], dtype=object)


def outlier_classes(ost: FeatureStore, rows: np.ndarray) -> np.ndarray:
    """(len(rows),) int64: each row's outlier class, 0..K-1, one per kind of outlier (each simulated
    decoder, the autoencoder, photographs), in sorted order of the kind names."""
    names = ost.class_names
    kinds = np.array([outlier_kind(names[v]) if v >= 0 else "" for v in ost.read("label")[rows]], dtype=object)
    _, idx = np.unique(kinds, return_inverse=True)
    return idx.astype(np.int64)


def outlier_groups(ost: FeatureStore, rows: np.ndarray) -> np.ndarray:
    """(len(rows),) str: the group of each outlier row (its source image's group, `sha:<SHA-256>`, or
    `photo:<SHA-256>`): which prompts' images a copy was made from."""
    return np.array([str(v) for v in ost.read("group")])[rows]


def photo_keys(groups) -> np.ndarray:
    """image_keys of the photographs whose crops are outlier rows (groups `photo:<SHA-256>`): an image
    judged later with one of these digests taught the unknown flag what "none of these" looks like."""
    from leakstore.model.checkpoint import image_keys

    return image_keys([str(g)[6:] for g in groups if str(g).startswith("photo:")])


def outlier_blocks(net, ost: FeatureStore, rows: np.ndarray, load=None) -> dict:
    """The feature-derived open-set blocks of the outlier rows, as `predict.feature_blocks` makes them,
    and under "outlier_class" each row's outlier class (`outlier_classes`).
    `load(store, names)`: a reader of every done row that remembers what it read (the study's, whose
    folds take different rows of one store): the rows are then cut from it instead of read again."""
    from leakstore.model.openset import stored_blocks
    from leakstore.model.predict import feature_blocks

    names = ("latents",) + stored_blocks(("features",), net.cfg)
    if load is None:
        blocks = feature_blocks(net, ost.load(names, rows=rows))
    else:
        every = load(ost, names)
        blocks = feature_blocks(net, every.subset(np.searchsorted(every.rows, rows)))
    return {**blocks, "outlier_class": outlier_classes(ost, rows)}
