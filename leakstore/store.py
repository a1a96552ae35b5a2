"""The feature store: the one contract between featurize, train and score.

A store is one Zarr v3 group. Every array is chunked along `image` only, with the same
chunk length, so a writer that owns chunk k owns rows [k*chunk, (k+1)*chunk) of every
array: shards never share a chunk and need no locks.

    <feature> (N, ...)                    every feature of leakstore.features.FEATURES that the config
                                          enables (latent0, latents, spectra[, residual]), NaN-filled
    label    (N,)                int16    class index into attrs["class_names"], -1 unlabelled
    split    (N,)                int8     0 train, 1 val, 2 test, -1 none
    path     (N,)                str      source file
    group    (N,)                str      source group (e.g. prompt or photo), "" when unknown
    sha256   (N,)                str      SHA-256 of the file's bytes; seeds the noise
    status   (N,)                uint8    0 pending, 1 done, 2 failed (written after the data)
    error    (N,)                str      why a row failed, "" otherwise

Float arrays are filled with NaN, so a row that was never written (or failed) can never
be mistaken for a row of zeros.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec, BloscShuffle

from leakstore.config import CODECS, STORE_ADVICE, FeaturizeConfig, RunOptions, check_compatible
from leakstore.errors import ConfigMismatchError, InputError, StoreError
from leakstore.features import FeatureBatch, features_for
from leakstore.fsio import naming
from leakstore.version import __version__

SCHEMA_VERSION = 1
FORMAT_NAME = "leakstore.features"
PENDING, DONE, FAILED = 0, 1, 2
STATUS_NAMES = {PENDING: "pending", DONE: "done", FAILED: "failed"}
SPLIT_NAMES = ("train", "val", "test")
SPLIT_CODES = {name: i for i, name in enumerate(SPLIT_NAMES)}
# what evaluate and calibrate may judge: one split, the two held-out ones together, or every row
JUDGED_SPLITS = {"test": ("test",), "val": ("val",), "train": ("train",), "val+test": ("val", "test")}


def in_split(splits: np.ndarray, split: str) -> np.ndarray:
    """Which rows of `splits` (split codes) `split` names: one split, 'val+test' (both splits training held
    out: more prompts to judge on, the validation ones having chosen the epochs) or 'all'."""
    if split == "all":
        return np.ones(len(splits), dtype=bool)
    return np.isin(splits, [SPLIT_CODES[n] for n in JUDGED_SPLITS[split]])


@dataclass(frozen=True)
class ArraySpec:
    name: str
    dims: tuple[str, ...]
    dtype: str
    fill: Any


# Per-row bookkeeping arrays (the features come from the table in leakstore.features).
ROW_ARRAYS = (
    ArraySpec("label", ("image",), "int16", -1),
    ArraySpec("split", ("image",), "int8", -1),
    ArraySpec("path", ("image",), "str", ""),
    ArraySpec("group", ("image",), "str", ""),
    ArraySpec("sha256", ("image",), "str", ""),
    ArraySpec("status", ("image",), "uint8", PENDING),
    ArraySpec("error", ("image",), "str", ""),
)


def array_specs(n: int, cfg: FeaturizeConfig) -> dict[str, tuple[ArraySpec, tuple[int, ...]]]:
    """Every array of a store: its spec and shape, derived from the feature table and ROW_ARRAYS."""
    specs = [
        (ArraySpec(f.name, ("image",) + f.dims, f.dtype, float("nan")), (n,) + f.shape(cfg)) for f in features_for(cfg)
    ]
    specs += [(spec, (n,)) for spec in ROW_ARRAYS]
    return {s.name: (s, shape) for s, shape in specs}


def data_arrays(cfg: FeaturizeConfig) -> tuple[str, ...]:
    """The arrays featurize writes per chunk (the rest are written once, at creation)."""
    return tuple(f.name for f in features_for(cfg)) + ("sha256", "error")


def _compressors(codec: str, dtype: str):
    if dtype == "str" or codec == "none":
        return None
    if codec not in CODECS:
        raise StoreError(f"unknown codec {codec!r}; choose one of {', '.join(CODECS)}")
    cname, level = ("lz4", 1) if codec == "lz4" else ("zstd", int(codec[4:]))
    return [BloscCodec(cname=cname, clevel=level, shuffle=BloscShuffle.shuffle)]


def _jsonable(x):
    """Zarr attributes reject numpy scalars (and poison the in-memory attrs): convert first."""
    return json.loads(json.dumps(x, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


@dataclass(frozen=True)
class Catalog:
    """What to featurize, in store order. Built by featurize.datasets; stored at creation."""

    paths: tuple[str, ...]
    labels: np.ndarray  # (N,) int16
    splits: np.ndarray  # (N,) int8
    groups: tuple[str, ...]
    class_names: tuple[str, ...]
    real_class: str | None = None
    split_source: str = "none"
    source: str = ""
    # training views (featurize --train-views): extra rows that re-read a source row's file through a
    # post-processing view drawn from `view_policy`; None for a catalog without them
    view_index: np.ndarray | None = None  # (N,) int16: 0 for a clean row, 1..n for view rows
    source_rows: np.ndarray | None = None  # (N,) int64: the clean row each row comes from (itself when clean)
    view_policy: str = ""
    # crops (featurize --crops K): every image is K consecutive rows, one per native-pixel crop
    crop_index: np.ndarray | None = None  # (N,) int16: 0..K-1; None for a catalog without crops
    image_rows: np.ndarray | None = None  # (N,) int64: the image's first row (crop 0), its aggregation key

    def __len__(self) -> int:
        return len(self.paths)

    @cached_property
    def fingerprint(self) -> str:
        """A hash of the paths, labels, splits, classes (and training views): computed once per catalog."""
        import hashlib

        h = hashlib.sha256()
        for p in self.paths:
            h.update(p.encode() + b"\0")
        h.update(self.labels.astype("<i2").tobytes())
        h.update(self.splits.astype("<i1").tobytes())
        h.update("\0".join(self.class_names).encode())
        if self.view_index is not None:  # catalogs without views keep the fingerprint they always had
            h.update(self.view_index.astype("<i2").tobytes() + self.source_rows.astype("<i8").tobytes())
            h.update(self.view_policy.encode())
        if self.crop_index is not None:  # nor do catalogs without crops
            h.update(b"crops" + self.crop_index.astype("<i2").tobytes() + self.image_rows.astype("<i8").tobytes())
        return h.hexdigest()[:16]


class FeatureStore:
    """A handle on one featurized store. Open with `FeatureStore.open`, create with `create`."""

    def __init__(self, path: str | Path, group: zarr.Group):
        self.path = Path(path)
        self.group = group
        attrs = dict(group.attrs)
        if attrs.get("format") != FORMAT_NAME:
            raise StoreError(
                f"{self.path} is a Zarr group but not a leakstore feature store "
                "(no 'format' attribute): featurize into a new path"
            )
        version = attrs.get("schema_version")
        if version != SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} has store schema version {version}; this leakstore reads "
                f"version {SCHEMA_VERSION}: featurize again, or use leakstore {attrs.get('package_version')}"
            )
        self.attrs = attrs
        self.config = FeaturizeConfig.from_dict(attrs["featurize_config"])

    # ------------------------------------------------------------------ open / create
    @classmethod
    def open(cls, path: str | Path, mode: str = "r") -> FeatureStore:
        path = Path(path)
        if not path.exists():
            raise StoreError(f"no store at {path}: run `leakstore featurize DATA {path}` first")
        try:
            group = zarr.open_group(str(path), mode=mode)
        except Exception as e:  # zarr raises several types for a non-store folder
            raise StoreError(f"{path} is not a readable Zarr store ({type(e).__name__}: {e})") from e
        return cls(path, group)

    @classmethod
    def create(
        cls,
        path: str | Path,
        cfg: FeaturizeConfig,
        catalog: Catalog,
        *,
        chunk_size: int = RunOptions.chunk_size,
        codec: str = RunOptions.codec,
        overwrite: bool = False,
        extra_attrs: dict | None = None,
    ) -> FeatureStore:
        """Create a store for `catalog`, or open the existing one when it matches.

        Creation is atomic: the store is built in a temporary sibling folder and renamed into
        place, so several shard processes can race to create it and all end up on one store.
        """
        path = Path(path)
        if path.exists():
            if not overwrite:
                store = cls.open(path, mode="r+")
                store.check_matches(cfg, catalog)
                return store
            remove_store(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        try:
            cls._build(tmp, cfg, catalog, chunk_size, codec, extra_attrs or {})
            try:
                os.rename(tmp, path)
            except OSError:
                if not path.exists():
                    raise
                # another shard won the race: use its store if it is the same
                shutil.rmtree(tmp, ignore_errors=True)
                store = cls.open(path, mode="r+")
                store.check_matches(cfg, catalog)
                return store
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return cls.open(path, mode="r+")

    @staticmethod
    def _build(
        tmp: Path, cfg: FeaturizeConfig, catalog: Catalog, chunk_size: int, codec: str, extra_attrs: dict
    ) -> None:
        n = len(catalog)
        if n == 0:
            raise StoreError("nothing to featurize: the input holds no images")
        chunk = max(1, min(int(chunk_size), n))
        if catalog.crop_index is not None:  # an image's crops never straddle a chunk
            k = cfg.crops
            chunk = min(n, -(-chunk // k) * k)
        root = zarr.open_group(str(tmp), mode="w")
        for name, (spec, shape) in array_specs(n, cfg).items():
            root.create_array(
                name,
                shape=shape,
                chunks=(chunk,) + shape[1:],
                dtype=spec.dtype,
                fill_value=spec.fill,
                dimension_names=spec.dims,
                compressors=_compressors(codec, spec.dtype),
            )
        if catalog.view_index is not None:
            for name, dtype, fill in (("source", "int64", -1), ("view_index", "int16", 0), ("view", "str", "")):
                root.create_array(
                    name,
                    shape=(n,),
                    chunks=(chunk,),
                    dtype=dtype,
                    fill_value=fill,
                    dimension_names=("image",),
                    compressors=_compressors(codec, dtype),
                )
            root["source"][:] = catalog.source_rows.astype("int64")
            root["view_index"][:] = catalog.view_index.astype("int16")
        if catalog.crop_index is not None:
            for name, dtype, fill in (("crop", "int16", 0), ("image", "int64", -1)):
                root.create_array(
                    name,
                    shape=(n,),
                    chunks=(chunk,),
                    dtype=dtype,
                    fill_value=fill,
                    dimension_names=("image",),
                    compressors=_compressors(codec, dtype),
                )
            root["crop"][:] = catalog.crop_index.astype("int16")
            root["image"][:] = catalog.image_rows.astype("int64")
        root["path"][:] = np.asarray(catalog.paths, dtype=str)
        root["group"][:] = np.asarray(catalog.groups, dtype=str)
        root["label"][:] = catalog.labels.astype("int16")
        root["split"][:] = catalog.splits.astype("int8")
        root.attrs.update(
            _jsonable(
                {
                    "format": FORMAT_NAME,
                    "schema_version": SCHEMA_VERSION,
                    "package_version": __version__,
                    "featurize_config": cfg.to_dict(),
                    "config_hash": cfg.hash,
                    "class_names": list(catalog.class_names),
                    "real_class": catalog.real_class,
                    "split_names": list(SPLIT_NAMES),
                    "split_source": catalog.split_source,
                    "source": catalog.source,
                    "catalog_fingerprint": catalog.fingerprint,
                    "train_views": (
                        {"n": int(catalog.view_index.max()), "policy": catalog.view_policy}
                        if catalog.view_index is not None
                        else None
                    ),
                    "chunk_size": chunk,
                    "codec": codec,
                    "dimensions": {name: list(spec.dims) for name, (spec, _) in array_specs(n, cfg).items()},
                    "builtin_encoder": bool(cfg.vae.builtin),
                    "store_id": uuid.uuid4().hex,
                    **extra_attrs,
                }
            )
        )

    def catalog(self) -> Catalog:
        """The catalog the store was created for, rebuilt from its own arrays (what a dask worker
        featurizes from: no file list travels with the tasks)."""
        a = self.attrs
        views = self.has_views
        cat = Catalog(
            tuple(str(p) for p in self.read("path")),
            self.read("label").astype(np.int16),
            self.read("split").astype(np.int8),
            tuple(str(g) for g in self.read("group")),
            tuple(a["class_names"]),
            a.get("real_class"),
            a.get("split_source", "none"),
            a.get("source", ""),
            self.view_index().astype(np.int16) if views else None,
            self.source_rows().astype(np.int64) if views else None,
            a["train_views"]["policy"] if views else "",
            self.read("crop").astype(np.int16) if self.has_crops else None,
            self.read("image").astype(np.int64) if self.has_crops else None,
        )
        if cat.fingerprint != a.get("catalog_fingerprint"):
            raise StoreError(
                f"{self.path}: its arrays do not match its catalog fingerprint (the store is damaged): "
                "featurize into a new store"
            )
        return cat

    def check_matches(self, cfg: FeaturizeConfig, catalog: Catalog | None = None) -> None:
        check_compatible(cfg, self.config, f"store {self.path}", advice=STORE_ADVICE)
        if catalog is not None and catalog.fingerprint != self.attrs.get("catalog_fingerprint"):
            views = self.attrs.get("train_views") or {}
            if catalog.view_policy and views.get("policy") and views["policy"] != catalog.view_policy:
                raise ConfigMismatchError(
                    f'store {self.path} drew its training views from --view-policy "{views["policy"]}", this run '
                    f'from "{catalog.view_policy}": pass --view-policy '
                    f'"{views["policy"]}" to resume it, or featurize into a new store'
                )
            raise ConfigMismatchError(
                f"store {self.path} was created for another list of images (catalog "
                f"{self.attrs.get('catalog_fingerprint')} != {catalog.fingerprint}): the input folder or "
                "manifest changed since. Featurize into a new store, or pass --overwrite to start again."
            )

    # ------------------------------------------------------------------ layout
    @property
    def n(self) -> int:
        return int(self.group["status"].shape[0])

    @property
    def chunk_size(self) -> int:
        return int(self.attrs["chunk_size"])

    @property
    def n_chunks(self) -> int:
        return -(-self.n // self.chunk_size)

    @property
    def class_names(self) -> list[str]:
        return list(self.attrs["class_names"])

    def chunk_rows(self, k: int) -> range:
        return range(k * self.chunk_size, min(self.n, (k + 1) * self.chunk_size))

    def status(self) -> np.ndarray:
        return np.asarray(self.group["status"][:])

    def todo_chunks(self, shard: tuple[int, int] = (0, 1)) -> list[int]:
        """Chunks of this shard (k % n == i) that still hold a pending row."""
        i, n = shard
        st = self.status()
        return [
            k
            for k in range(self.n_chunks)
            if k % n == i and (st[self.chunk_rows(k).start : self.chunk_rows(k).stop] == PENDING).any()
        ]

    # ------------------------------------------------------------------ write / read
    @property
    def has_views(self) -> bool:
        """Whether the store holds training-view rows (featurize --train-views)."""
        return bool(self.attrs.get("train_views"))

    @property
    def chunk_arrays(self) -> tuple[str, ...]:
        """The arrays a featurize run writes per chunk (the rest are written at creation)."""
        return data_arrays(self.config) + (("view",) if self.has_views else ())

    @property
    def has_crops(self) -> bool:
        return "crop" in self.group

    def image_rows(self) -> np.ndarray:
        """(N,) the image each row belongs to (the row of its crop 0): itself without crops."""
        return self.read("image") if self.has_crops else np.arange(self.n)

    def source_rows(self) -> np.ndarray:
        """(N,) the clean row each row comes from: itself, except for training-view rows."""
        return self.read("source") if self.has_views else np.arange(self.n)

    def view_index(self) -> np.ndarray:
        """(N,) 0 for a clean row, j for a row's j-th training view."""
        return self.read("view_index") if self.has_views else np.zeros(self.n, dtype=np.int16)

    def write_chunk(self, k: int, data: dict[str, np.ndarray], status: np.ndarray) -> None:
        """Write whole chunk k: the data arrays first, `status` last, so a reader (or a
        resumed run) never sees a row marked done whose data is not on disk."""
        rows = self.chunk_rows(k)
        sl = slice(rows.start, rows.stop)
        for name in self.chunk_arrays:
            arr = data[name]
            if len(arr) != len(rows):
                raise StoreError(f"chunk {k}: {name} has {len(arr)} rows, expected {len(rows)}")
            with naming(f"{self.path / name} (chunk {k})"):
                self.group[name][sl] = arr
        with naming(f"{self.path / 'status'} (chunk {k})"):
            self.group["status"][sl] = status.astype("uint8")

    def read(self, name: str, rows: slice | Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        arr = self.group[name]
        if rows is None:
            return np.asarray(arr[:])
        if isinstance(rows, slice):
            return np.asarray(arr[rows])
        return np.asarray(
            arr.get_orthogonal_selection((np.asarray(rows, dtype=np.int64),) + (slice(None),) * (arr.ndim - 1))
        )

    def load(self, names=None, rows: np.ndarray | None = None) -> FeatureBatch:
        """Done rows (all, or those among `rows`) in store order, with the named features (default:
        every feature the store holds). Failed and pending rows are never read."""
        import torch

        # the per-row arrays are read over the rows' span only: a chunk's rows of a big store cost one chunk
        span = slice(0, self.n) if rows is None or len(rows) == 0 else slice(int(np.min(rows)), int(np.max(rows)) + 1)
        done = span.start + np.flatnonzero(self.read("status", span) == DONE)
        if rows is not None:
            done = np.intersect1d(done, rows)
        if len(done) == 0:
            raise InputError(f"store {self.path} has no featurized rows: run or finish `leakstore featurize` first")
        contiguous = len(done) == done[-1] - done[0] + 1
        sel = slice(int(done[0]), int(done[-1]) + 1) if contiguous else done
        names = [f.name for f in features_for(self.config) if names is None or f.name in names]
        arrays = {n: torch.from_numpy(np.ascontiguousarray(self.read(n, sel))) for n in names}
        local = done - span.start
        return FeatureBatch(
            done,
            arrays,
            self.read("label", span)[local].astype(np.int64),
            self.read("split", span)[local].astype(np.int64),
            np.array([str(p) for p in self.read("path", span)[local]], dtype=object),
        )

    def summary(self) -> dict[str, Any]:
        """A machine-readable description (what `leakstore inspect --json` prints)."""
        st = self.status()
        labels = self.read("label")
        splits = self.read("split")
        names = self.class_names
        per_class = {}
        for ci, cname in enumerate(names):
            m = labels == ci
            per_class[cname] = {s: int(((splits == si) & m & (st == DONE)).sum()) for si, s in enumerate(SPLIT_NAMES)}
            per_class[cname]["failed"] = int((m & (st == FAILED)).sum())
        errors = self.read("error")
        failed_rows = np.flatnonzero(st == FAILED)[:20]
        paths = self.read("path", failed_rows) if len(failed_rows) else []
        return {
            "path": str(self.path),
            "schema_version": self.attrs["schema_version"],
            "package_version": self.attrs["package_version"],
            "config_hash": self.attrs["config_hash"],
            "featurize_config": self.attrs["featurize_config"],
            "builtin_encoder": self.attrs.get("builtin_encoder", False),
            "n_images": int(len(np.unique(self.image_rows()))),  # a store of crops: K rows an image
            "n_rows": self.n,
            "status": {STATUS_NAMES[s]: int((st == s).sum()) for s in STATUS_NAMES},
            "class_names": names,
            "per_class": per_class,
            "unlabelled": int((labels < 0).sum()),
            "split_source": self.attrs.get("split_source"),
            "train_views": self.attrs.get("train_views"),
            "view_rows": int((self.view_index() > 0).sum()),
            "arrays": {
                name: {
                    "shape": list(self.group[name].shape),
                    "dtype": str(self.group[name].dtype),
                    "chunks": list(self.group[name].chunks),
                }
                for name in array_specs(0, self.config)
            },
            "first_failures": [{"path": str(p), "error": str(errors[r])} for p, r in zip(paths, failed_rows)],
        }


def is_store_input(inp) -> bool:
    """Whether a command's input is a store (a Zarr group folder) rather than images: the one test every
    command uses. A Zarr group leakstore did not make is still a store input: opening it refuses it in
    one line, where treating it as a folder of images would report no images."""
    return not isinstance(inp, (list, tuple)) and (Path(str(inp)) / "zarr.json").is_file()


def made_by_leakstore(path: str | Path) -> bool:
    """Whether `path` is a feature store leakstore made (a Zarr group whose attributes name this format):
    what --overwrite may delete."""
    try:
        meta = json.loads((Path(path) / "zarr.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and (meta.get("attributes") or {}).get("format") == FORMAT_NAME


def remove_store(path: str | Path) -> None:
    """Delete the store at `path` for --overwrite; an empty folder goes too. Anything else is refused
    and nothing is deleted: --overwrite must never take a folder of photographs with it."""
    path = Path(path)
    if path.is_dir() and not any(path.iterdir()):
        path.rmdir()
        return
    if not made_by_leakstore(path):
        raise StoreError(
            f"{path} exists and is not a leakstore feature store, so --overwrite deleted nothing: "
            "give the store a path of its own (e.g. {}.zarr)".format(path.name)
        )
    shutil.rmtree(path)
