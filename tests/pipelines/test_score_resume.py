"""A score job cut off midway keeps its finished partitions; the rerun computes only the rest."""
import pandas as pd
import pytest
from distributed import Client

from leakstore.model.config import ModelConfig
from leakstore.model.train import train
from leakstore.pipelines import score as sc
from tests.synthetic import planted_store


def test_an_interrupted_score_resumes_and_writes_every_row_once(tmp_path, monkeypatch):
    planted_store(tmp_path / "s.zarr", per_class=40, chunk=16)             # 160 rows, 10 partitions
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
        kept = sorted(p.name for p in (tmp_path / "p.parquet.parts").glob("part-*.parquet"))
        assert 0 < len(kept) < 10 and not out.exists()
        done_before = {int(n[5:11]) * 16 for n in kept}
        fail["at"], calls[:] = -1, []
        df = sc.score(tmp_path / "run", tmp_path / "s.zarr", out, client=client, progress=False)
    assert sorted(calls) == sorted(set(range(0, 160, 16)) - done_before)    # only the unfinished partitions
    assert list(df.row) == list(range(160)) and (df.status == "ok").all()
    assert pd.read_parquet(out).row.tolist() == list(range(160))
    assert not (tmp_path / "p.parquet.parts").exists()
