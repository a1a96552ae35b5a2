"""A score job cut off midway keeps its finished partitions; the rerun computes only the rest."""

import time
from pathlib import Path

import pandas as pd
import pytest
from distributed import Client

from leakstore.model.config import ModelConfig
from leakstore.model.train import train
from leakstore.pipelines import score as sc
from tests.synthetic import planted_store


def _settle(client, timeout: float = 60.0) -> None:
    """Wait until no task of a failed run still executes: cancelling releases a task the worker is
    running but does not stop it, and it would write its part (and count as a call) during the rerun."""
    deadline, quiet = time.monotonic() + timeout, 0
    while quiet < 2 and time.monotonic() < deadline:
        busy = sum(client.run(lambda dask_worker: dask_worker.state.executing_count).values())
        quiet = quiet + 1 if busy == 0 else 0
        time.sleep(0.1)


def test_an_interrupted_score_resumes_and_writes_every_row_once(tmp_path, monkeypatch):
    planted_store(tmp_path / "s.zarr", per_class=40, chunk=16)  # 160 rows, 10 partitions
    train(tmp_path / "s.zarr", tmp_path / "run", ModelConfig(width=8, embed_dim=16, epochs=2), progress=False)
    real, calls, fail = sc.score_store_rows, [], {"at": 96}

    def flaky(run_dir, store_path, start, stop, device="cpu"):
        calls.append(start)
        if start == fail["at"]:
            raise RuntimeError("worker lost")
        return real(run_dir, store_path, start, stop, device)

    monkeypatch.setattr(sc, "score_store_rows", flaky)
    out = tmp_path / "p.parquet"
    with Client(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=":0") as client:
        with pytest.raises(RuntimeError, match="worker lost"):
            sc.score(tmp_path / "run", tmp_path / "s.zarr", out, client=client, progress=False)
        _settle(client)
        kept = sorted(p.name for p in (tmp_path / "p.parquet.parts").glob("part-*.parquet"))
        assert 0 < len(kept) < 10 and not out.exists()
        done_before = {int(n[5:11]) * 16 for n in kept}
        fail["at"], calls[:] = -1, []
        counts = sc.score(tmp_path / "run", tmp_path / "s.zarr", out, client=client, progress=False)
    assert sorted(calls) == sorted(set(range(0, 160, 16)) - done_before)  # only the unfinished partitions
    assert counts["rows"] == counts["scored"] == 160 and counts["failed"] == 0
    assert sum(counts["predicted"].values()) == 160
    df = pd.read_parquet(out)
    assert list(df.row) == list(range(160)) and (df.status == "ok").all()
    assert counts["unknown"] == int(df.is_unknown.sum())
    import pyarrow.parquet as pq

    assert pq.ParquetFile(out).num_row_groups == 10  # streamed in, one part at a time
    assert not (tmp_path / "p.parquet.parts").exists()


def test_parts_with_a_column_all_null_in_one_are_assembled_under_one_schema(tmp_path):
    parts = tmp_path / "p.parts"
    parts.mkdir()
    a = pd.DataFrame(
        {"row": [0, 1], "status": ["ok", "ok"], "is_unknown": [False, True], "pred": ["x", "y"], "error": [None, None]}
    )
    b = pd.DataFrame({"row": [2], "status": ["failed"], "is_unknown": [None], "pred": [None], "error": ["broken"]})
    sc.write_part(a, str(sc.part_path(parts, 0)))
    sc.write_part(b, str(sc.part_path(parts, 1)))
    counts = sc.assemble(parts, 2, tmp_path / "p.parquet")
    got = pd.read_parquet(tmp_path / "p.parquet")
    assert (
        got.row.tolist() == [0, 1, 2] and got.error.isna().tolist() == [True, True, False] and got.error[2] == "broken"
    )
    failures = {"broken": {"error": "broken", "count": 1, "example": "row 2"}}
    assert counts == {
        "rows": 3,
        "scored": 2,
        "failed": 1,
        "unknown": 1,
        "predicted": {"x": 1, "y": 1},
        "failures": failures,
    }


def test_the_summary_counts_failures_by_kind_with_an_example_of_each(capsys):
    """Failures differing only in their numbers (an image's size) are one kind; the most frequent
    kinds are printed first, each with one file, the rest counted."""
    from leakstore.cli import _print_score_summary

    errors = ["is 100x90, smaller than the 128 px crop", "is 64x64, smaller than the 128 px crop", "truncated file"]
    errors += [f"odd {k}th kind" for k in "abc"]  # 'a', 'b', 'c': three more kinds
    df = pd.DataFrame(
        {
            "path": [f"/in/{i}.png" for i in range(7)],
            "status": ["failed"] * 6 + ["ok"],
            "is_unknown": [None] * 6 + [False],
            "pred": [None] * 6 + ["x"],
            "error": errors + [None],
        }
    )
    s = sc.summarise(df)
    assert s["failed"] == 6 and s["failures"][0] == {
        "error": "is 100x90, smaller than the 128 px crop",
        "count": 2,
        "example": "/in/0.png",
    }
    assert [f["count"] for f in s["failures"]] == [2, 1, 1, 1, 1]
    _print_score_summary(s, Path("p.parquet"))
    out = capsys.readouterr().out
    assert "failed: /in/0.png: is 100x90, smaller than the 128 px crop (and 1 more alike)" in out
    assert "failed: /in/2.png: truncated file\n" in out and "failed: 2 more, of 2 other kinds" in out
