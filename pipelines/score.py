"""Batch scoring with dask.distributed: one row per input, in input order, failures recorded.

Input is a featurized store (dask maps the model over the store's chunks; no VAE, no GPU
needed) or raw images (folders, manifests, globs, lists: workers featurize each partition
with the exact featurize config recorded in the model, then score it).

Each worker loads the model once, through `LoadModel` (a WorkerPlugin); tasks are pure
functions of (model path, partition), so a worker lost mid-job only means its partitions
are recomputed elsewhere: no row is lost or written twice.
"""

from __future__ import annotations

import json
import os
import re
import threading
from pathlib import Path

import numpy as np
import pandas as pd

from leakstore.api.predictor import PROVENANCE_COLUMNS, STABILITY_COLUMNS
from leakstore.config import DEFAULT_DEVICE, DEFAULT_SCORE_CHUNK
from leakstore.errors import InputError, Interrupted
from leakstore.featurize.datasets import list_inputs
from leakstore.fsio import atomic_path, write_json
from leakstore.pipelines.cluster import connect
from leakstore.store import is_store_input

_PREDICTORS: dict[str, object] = {}
_LOCK = threading.Lock()
PARTITION_IMAGES = DEFAULT_SCORE_CHUNK


# ---------------------------------------------------------------------------- model, once per process
def get_predictor(
    run_dir: str, device: str = DEFAULT_DEVICE, worker_number: int | None = None, threads: int | None = None
):
    """The Predictor for run_dir, loaded once per process (keyed by path, device and file time);
    its encoder is loaded on the first raw-image partition and kept. `worker_number`: the dask
    worker's number, which picks its GPU on a local cluster; `threads`: torch's CPU threads in a worker
    (default $LEAKSTORE_THREADS, else one)."""
    from leakstore.api.predictor import Predictor

    key = f"{os.path.abspath(run_dir)}|{device}|{os.path.getmtime(Path(run_dir) / 'model.json')}"
    with _LOCK:
        if key not in _PREDICTORS:
            if os.environ.get("LEAKSTORE_WORKER"):
                from leakstore.device import set_threads, worker_process_device

                # local GPU workers spread over the GPUs, one CPU thread per process unless told otherwise
                device = str(worker_process_device(device, worker_number))
                set_threads(threads)
            _PREDICTORS[key] = Predictor.load(run_dir, device)
        return _PREDICTORS[key]


try:
    from distributed.diagnostics.plugin import WorkerPlugin
except ImportError:  # pragma: no cover - distributed is a dependency
    WorkerPlugin = object


class LoadModel(WorkerPlugin):
    """Loads the model into each worker process when the worker starts (or joins later)."""

    def __init__(self, run_dir: str, device: str = DEFAULT_DEVICE, threads: int | None = None):
        self.run_dir, self.device, self.threads = str(run_dir), device, threads

    def setup(self, worker):
        os.environ["LEAKSTORE_WORKER"] = "1"
        from leakstore.device import number_of

        get_predictor(self.run_dir, self.device, number_of(worker), getattr(self, "threads", None))


# ---------------------------------------------------------------------------- one partition
def score_store_rows(
    run_dir: str, store_path: str, start: int, stop: int, device: str = DEFAULT_DEVICE
) -> pd.DataFrame:
    """Score rows [start, stop) of a store (one chunk)."""
    return get_predictor(run_dir, device).score_store(store_path, start, stop)


def score_image_paths(
    run_dir: str, paths: list[str], first_row: int, device: str = DEFAULT_DEVICE, stability: int = 0
) -> pd.DataFrame:
    """Featurize and score one partition of image files (and, with `stability`, their re-encodings)."""
    return get_predictor(run_dir, device).score_paths(paths, first_row, stability=stability)


# ---------------------------------------------------------------------------- the lazy graph
def scoring_frame(
    run_dir, inp, device: str = DEFAULT_DEVICE, partition: int = PARTITION_IMAGES, predictor=None, stability: int = 0
):
    """A lazy dask DataFrame of predictions, one partition per store chunk (or per `partition`
    images). Nothing runs until it is computed. `stability`: raw images only (Predictor.score_paths)."""
    import dask.dataframe as dd

    from leakstore.api.predictor import Predictor

    run_dir = str(Path(run_dir).resolve())
    pred = predictor or Predictor.load(run_dir)  # on the client: validates the model and gives the output schema
    if is_store_input(inp):
        from leakstore.store import FeatureStore

        if stability:
            raise InputError(f"stability re-encodes images: {inp} is a feature store; score the image files instead")
        store = FeatureStore.open(inp)
        pred.check_store(store)
        parts = [(r.start, r.stop) for r in (store.chunk_rows(k) for k in range(store.n_chunks))]
        return dd.from_map(
            _store_part,
            parts,
            run_dir=run_dir,
            store_path=str(Path(inp).resolve()),
            device=device,
            meta=pred.meta({"row": np.int64}),
            divisions=None,
            enforce_metadata=False,
        )
    paths = list_inputs(inp)
    parts = [(s, paths[s : s + partition]) for s in range(0, len(paths), partition)]
    extra = {"row": np.int64, "sha256": object, **(STABILITY_COLUMNS if stability else {})}
    return dd.from_map(
        _image_part,
        parts,
        run_dir=run_dir,
        device=device,
        stability=stability,
        meta=pred.meta(extra),
        enforce_metadata=False,
    )


def _store_part(part, run_dir, store_path, device):
    return score_store_rows(run_dir, store_path, part[0], part[1], device)


def _image_part(part, run_dir, device, stability=0):
    return score_image_paths(run_dir, part[1], part[0], device, stability)


def check_out(out: Path) -> None:
    """Fail before any work when the predictions could not be written."""
    if out.is_dir():
        raise InputError(f"--out {out} is a directory: give a file name, e.g. {out / 'predictions.parquet'}")
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InputError(f"--out {out}: cannot create {parent} ({e.strerror}); choose a writable place") from None
    if not os.access(parent, os.W_OK):
        raise InputError(f"--out {out}: {parent} is not writable; choose a writable place")
    if out.is_file() and not _is_parquet(out):
        raise InputError(
            f"--out {out} exists and is not a Parquet file: scoring replaces only its own output, "
            "so nothing was written; choose another --out"
        )
    parts = out.with_name(out.name + ".parts")
    if parts.exists() and not _is_parts_dir(parts):
        raise InputError(
            f"{parts} exists and was not made by leakstore score: it keeps its partial results there, "
            "so nothing was written; move that folder or choose another --out"
        )


def _is_parquet(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"PAR1"
    except OSError:
        return False


def _is_parts_dir(path: Path) -> bool:
    """A folder of finished partitions that scoring made: job.json and part files only (or empty)."""
    if not path.is_dir():
        return False
    return all(
        p.name == "job.json"
        or (p.name.startswith("part-") and p.suffix in (".parquet", ".tmp"))
        or p.name.startswith(".part-")
        for p in path.iterdir()
    )


def _job(run_dir: str, inp, part: int, stability: int = 0) -> dict:
    """What a set of finished partitions belongs to: the model, the input, the partitioning."""
    import hashlib

    model = Path(run_dir) / "model.json"
    key = {
        "model": str(Path(run_dir).resolve()),
        "model_sha256": hashlib.sha256(model.read_bytes()).hexdigest(),
        "partition": part,
        "stability": stability,
        "columns": sorted(PROVENANCE_COLUMNS),  # parts written without these columns are not mixed in
    }
    if is_store_input(inp):
        from leakstore.store import FeatureStore

        st = FeatureStore.open(inp)
        key["input"] = {"store": str(Path(inp).resolve()), "store_id": st.attrs.get("store_id"), "n": st.n}
    else:
        key["input"] = {"paths_sha256": hashlib.sha256("\0".join(inp).encode()).hexdigest(), "n": len(inp)}
    return key


class ScoringInterrupted(Interrupted):
    """Ctrl-C during `score`: finished partitions are kept for the rerun."""


def score(
    run_dir,
    inp,
    out: str | Path | None = None,
    *,
    workers: int | None = None,
    scheduler: str | None = None,
    device: str = DEFAULT_DEVICE,
    progress: bool = True,
    client=None,
    threads: int | None = None,
    stability: int = 0,
) -> pd.DataFrame | dict:
    """Score INPUT with the model in run_dir on a dask.distributed cluster; write Parquet to `out`.

    Without `out`, returns the predictions as one DataFrame (gathered in this process). With `out`, the
    workers write each partition to OUT.parts/ as it finishes (nothing but counts comes back to this
    process), so an interrupted job rerun with the same model and input computes only what is missing;
    the parts are then streamed into one Parquet file, one part in memory at a time. Returns the counts
    (`summarise`'s fields); read the predictions with pandas.read_parquet(out). `stability` K: raw
    images are also scored under K re-encodings (columns `stability`, `unsure`: Predictor.score_paths)."""
    from leakstore.api.predictor import Predictor

    out = Path(out).absolute() if out is not None else None  # the workers write its parts: one path for all
    if out is not None:
        check_out(out)
    pred = Predictor.load(run_dir)  # a broken or missing model fails here, before any cluster
    if not is_store_input(inp):
        inp = list_inputs(inp)  # listed once, here
    own = client is None
    cluster = None
    if own:
        client, cluster = connect(scheduler, workers)
    try:
        n_workers = max(1, len(client.scheduler_info().get("workers", {})))
        parts_dir = out.with_name(out.name + ".parts") if out is not None else None
        saved = _saved_job(parts_dir)
        # image partitions: at most PARTITION_IMAGES, at least four per worker (all stay busy); a resumed job
        # keeps the partitioning it started with
        part = (
            PARTITION_IMAGES if is_store_input(inp) else max(8, min(PARTITION_IMAGES, -(-len(inp) // (4 * n_workers))))
        )
        if saved and not is_store_input(inp):
            part = saved.get("partition", part)
        ddf = scoring_frame(run_dir, inp, device, partition=part, predictor=pred, stability=stability)
        client.register_plugin(LoadModel(str(Path(run_dir).resolve()), device, threads), name="leakstore-model")
        if progress:
            print(f"dask dashboard: {client.dashboard_link}", flush=True)
        if out is None:
            from distributed import progress as dask_progress

            fut = client.compute(ddf)
            if progress:
                dask_progress(fut)
                print(flush=True)
            return fut.result().sort_values("row", kind="stable").reset_index(drop=True)
        _compute_parts(client, ddf, parts_dir, _job(run_dir, inp, part, stability), saved, progress)
    finally:
        if own:
            client.close()
            if cluster is not None:
                cluster.close()
    counts = assemble(parts_dir, ddf.npartitions, out)
    import shutil

    shutil.rmtree(parts_dir, ignore_errors=True)
    return counts


def _saved_job(parts_dir: Path | None) -> dict | None:
    if parts_dir is None or not (parts_dir / "job.json").is_file():
        return None
    try:
        return json.loads((parts_dir / "job.json").read_text())
    except (OSError, ValueError):
        return None


def part_path(parts_dir: Path, i: int) -> Path:
    return Path(parts_dir) / f"part-{i:06d}.parquet"


def write_part(df: pd.DataFrame, path: str) -> int:
    """On the worker: one partition's predictions, in row order, written whole or not at all. -> its rows."""
    with atomic_path(Path(path)) as tmp:
        df.sort_values("row", kind="stable").to_parquet(tmp, index=False)
    return len(df)


def _compute_parts(client, ddf, parts_dir: Path, job: dict, saved: dict | None, progress: bool) -> None:
    """Compute the partitions not yet in parts_dir; each worker writes its own as it finishes."""
    import shutil

    import dask
    from distributed import as_completed

    if saved != job:  # another model, input or partitioning: start afresh
        shutil.rmtree(parts_dir, ignore_errors=True)
    parts_dir.mkdir(parents=True, exist_ok=True)
    write_json(parts_dir / "job.json", job)
    delayed = ddf.to_delayed()
    path = lambda i: part_path(parts_dir, i)  # noqa: E731
    todo = [i for i in range(len(delayed)) if not path(i).is_file()]
    futures = {client.compute(dask.delayed(write_part)(delayed[i], str(path(i)))): i for i in todo}
    from tqdm.auto import tqdm

    bar = tqdm(total=len(delayed), initial=len(delayed) - len(todo), unit="part", desc="score", disable=not progress)
    try:
        for fut in as_completed(futures):
            fut.result()  # a worker's error is raised here; its part file is not there
            bar.update(1)
    except KeyboardInterrupt:
        done = sum(path(i).is_file() for i in range(len(delayed)))
        raise ScoringInterrupted(
            f"interrupted: {done} of {len(delayed)} partitions are kept in {parts_dir}; "
            "rerun the same command to score only the rest"
        ) from None
    finally:
        bar.close()
        client.cancel(list(futures))  # release every task, erred ones too, so a rerun recomputes them


def assemble(parts_dir: Path, n_parts: int, out: Path) -> dict:
    """The parts, in order, streamed into one Parquet file at `out` (atomically): one part in memory at
    a time, each a row group, under one schema (a column all null in one part takes the others' type).
    Partitions hold consecutive rows, so the file is in input order. -> the counts of `summarise`."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    paths = [part_path(parts_dir, i) for i in range(n_parts)]
    schema = pa.unify_schemas([pq.read_schema(p) for p in paths], promote_options="permissive")
    counts = _counts(None)
    counted = ("row", "status", "is_unknown", "pred", "unsure", "path", "error", *PROVENANCE_COLUMNS)
    with atomic_path(out) as tmp:
        with pq.ParquetWriter(tmp, schema) as writer:
            for p in paths:
                table = pq.read_table(p)
                table = table.select(schema.names).cast(schema) if table.schema != schema else table
                writer.write_table(table)
                _counts(table.select([c for c in counted if c in schema.names]).to_pandas(), counts)
    return counts


_NUMBERS = re.compile(r"\d+")  # sizes and counts vary within one kind of failure


def _counts(df: pd.DataFrame | None, into: dict | None = None) -> dict:
    """Rows, scored, failed, unknown and predicted classes of `df`, added to `into` (new when None)."""
    c = into if into is not None else {"rows": 0, "scored": 0, "failed": 0, "unknown": 0, "predicted": {}}
    if df is None:
        return c
    ok = df[df.status == "ok"]
    c["rows"] += int(len(df))
    c["scored"] += int(len(ok))
    c["failed"] += int((df.status != "ok").sum())
    c["unknown"] += int(ok.is_unknown.astype(bool).sum()) if len(ok) else 0
    bad = df[df.status != "ok"]
    if len(bad) and "error" in bad:  # failures by kind (their reasons with the numbers left out), an example of each
        kinds = c.setdefault("failures", {})
        where = bad.path.astype(str) if "path" in bad else "row " + bad.row.astype(str)
        for path, error in zip(where, bad.error.fillna("").astype(str)):
            k = kinds.setdefault(_NUMBERS.sub("#", error), {"error": error, "count": 0, "example": path})
            k["count"] += 1
    for k, v in ok.pred.value_counts().items():
        c["predicted"][str(k)] = c["predicted"].get(str(k), 0) + int(v)
    if "unsure" in df:  # score --stability: verdicts that a re-encoding changed
        c["unsure"] = c.get("unsure", 0) + (int(ok.unsure.fillna(False).astype(bool).sum()) if len(ok) else 0)
    if "meta_source" in df:  # what the files' metadata claims (image inputs)
        claims = c.setdefault("meta_claims", {})
        for k, v in df.meta_source[df.meta_source != ""].value_counts().items():
            claims[str(k)] = claims.get(str(k), 0) + int(v)
        c["meta_conflicts"] = c.get("meta_conflicts", 0) + int(conflicts(df).sum())
        c["meta_errors"] = c.get("meta_errors", 0) + int((df.meta_error != "").sum())
    return c


def conflicts(df: pd.DataFrame) -> pd.Series:
    """(N,) bool: rows whose metadata claim and signal verdict disagree, or whose C2PA manifest does
    not validate: what an analyst must look at first."""
    return (df.meta_agrees == False).fillna(False) | (df.c2pa_valid == False).fillna(False)  # noqa: E712


def summarise(df: pd.DataFrame | dict, bundle=None) -> dict:
    """Counts (of a DataFrame of predictions, or the counts `score` returned); with the model, how its
    unknown threshold was set (asked rate, rate on validation)."""
    out = (
        _counts(df)
        if isinstance(df, pd.DataFrame)
        else {
            k: df[k]
            for k in (
                "rows",
                "scored",
                "failed",
                "unknown",
                "predicted",
                "unsure",
                "meta_claims",
                "meta_conflicts",
                "meta_errors",
                "failures",
            )
            if k in df
        }
    )
    out["predicted"] = dict(sorted(out["predicted"].items(), key=lambda kv: -kv[1]))
    if isinstance(out.get("failures"), dict):  # most frequent kind first: [{error, count, example}]
        out["failures"] = sorted(out["failures"].values(), key=lambda k: -k["count"])
    if bundle is not None and bundle.open is not None:
        out["open_scorer"] = bundle.cfg.open_scorer if hasattr(bundle.open, "components_") else "kde"
        from leakstore.model.predict import asked_rate, threshold_expects, validation_flagged

        out["false_unknown_rate"] = {
            "asked": asked_rate(bundle),
            "validation": validation_flagged(bundle),
            "expects": threshold_expects(bundle),  # out of fold: pooled over many prompts and one at a time
        }
        if cal := bundle.meta.get("calibration"):  # leakstore calibrate set it on the user's own known images
            out["false_unknown_rate"]["calibrated"] = {
                k: cal.get(k) for k in ("images", "ci_over", "stores", "flag_rate_ci", "flag_rate_per_group")
            }
    return out
