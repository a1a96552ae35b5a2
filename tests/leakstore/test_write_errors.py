"""A full disk, a read-only folder, a vanished mount: one line, rc 1, and the same command run again
finishes the job, equal to a run that never failed. Faults are injected as the OSError the OS
raises (no root, mount or real full disk needed)."""

from __future__ import annotations

import errno

import numpy as np
import pytest
from safetensors.numpy import load_file
from typer.testing import CliRunner

from leakstore.cli import app
from leakstore.fsio import atomic_path, free_space_note, write_error
from leakstore.store import FeatureStore

runner = CliRunner()
FEATURIZE = [
    "--vae",
    "demo",
    "--resolution",
    "32",
    "--timesteps",
    "0,100",
    "--fft-size",
    "2",
    "--no-residual",
    "--period",
    "0",
    "--pixel-spectrum",
    "0",
    "--noise-spectrum",
    "0",
    "--device",
    "cpu",
    "--workers",
    "0",
    "--chunk-size",
    "4",
    "--no-progress",
]
TRAIN = [
    "--width",
    "8",
    "--embed-dim",
    "16",
    "--epochs",
    "3",
    "--patience",
    "3",
    "--batch-size",
    "8",
    "--members",
    "1",
    "--device",
    "cpu",
    "--no-progress",
]


def full_disk(after: int):
    """A function that works `after` times, then raises ENOSPC as a full disk does."""
    calls = {"n": 0}

    def hit(real):
        def wrapped(*a, **k):
            calls["n"] += 1
            if calls["n"] > after:
                raise OSError(errno.ENOSPC, "No space left on device", "/mnt/small/target")
            return real(*a, **k)

        return wrapped

    return hit


def one_line(r, code=1) -> str:
    assert r.exit_code == code, r.output
    out = r.output.strip()
    assert "Traceback" not in out and "\n" not in out, out
    return out


def arrays(path) -> dict:
    s = FeatureStore.open(path)
    return {k: s.read(k) for k in ("latent0", "latents", "spectra", "status", "sha256", "error")}


def test_featurize_on_a_full_disk_is_one_line_and_the_rerun_equals_an_undisturbed_run(
    class_folders, tmp_path, monkeypatch
):
    assert runner.invoke(app, ["featurize", str(class_folders), str(tmp_path / "ok.zarr"), *FEATURIZE]).exit_code == 0
    real = FeatureStore.write_chunk
    with monkeypatch.context() as m:
        m.setattr(FeatureStore, "write_chunk", full_disk(after=3)(real))
        out = one_line(runner.invoke(app, ["featurize", str(class_folders), str(tmp_path / "s.zarr"), *FEATURIZE]))
    assert "No space left on device" in out and "/mnt/small/target" in out
    assert "12 of 29 images are in the store" in out and "rerun the same command" in out
    r = runner.invoke(app, ["featurize", str(class_folders), str(tmp_path / "s.zarr"), *FEATURIZE])
    assert r.exit_code == 0, r.output
    a, b = arrays(tmp_path / "ok.zarr"), arrays(tmp_path / "s.zarr")
    for k in a:
        assert np.array_equal(a[k], b[k], equal_nan=a[k].dtype.kind == "f"), k


@pytest.mark.parametrize(
    "code,fix", [(errno.EROFS, "Make it writable"), (errno.EACCES, "Give write permission"), (errno.EIO, "Fix that")]
)
def test_every_write_error_names_the_path_and_the_fix(code, fix):
    import os

    line = write_error(OSError(code, os.strerror(code), "/data/out.zarr/latents/c/0"), "3 of 9 images are kept.")
    assert line.startswith("could not write /data/out.zarr/latents/c/0: ") and "3 of 9 images are kept." in line
    assert f"{fix} and rerun the same command." in line


def test_a_file_is_replaced_whole_or_not_at_all(tmp_path):
    target = tmp_path / "model.json"
    target.write_text("old")
    with pytest.raises(OSError) as e:
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp))
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["model.json"]
    assert e.value.filename == str(target)  # the file meant, not its temporary name
    with pytest.raises(OSError) as e:
        with atomic_path(target):
            raise OSError(errno.ENOSPC, "No space left on device")  # file.write names no file
    assert e.value.filename == str(target)


def test_train_on_a_full_disk_keeps_the_last_epoch_and_resumes_to_the_same_model(tmp_path, monkeypatch):
    from tests.synthetic import planted_store

    planted_store(tmp_path / "s.zarr", per_class=16)
    store = str(tmp_path / "s.zarr")
    assert runner.invoke(app, ["train", store, "--out", str(tmp_path / "ok"), *TRAIN]).exit_code == 0
    import leakstore.model.checkpoint as ck

    real = ck.t_save

    def half_then_full(tensors, filename, metadata=None):  # the disk fills up in the middle of the file
        with open(filename, "wb") as f:
            f.write(b"\x00" * 64)
        raise OSError(errno.ENOSPC, "No space left on device", filename)

    calls = {"n": 0}

    def save(*a, **k):
        calls["n"] += 1
        return (half_then_full if calls["n"] == 2 else real)(*a, **k)  # epoch 2's state

    with monkeypatch.context() as m:
        m.setattr(ck, "t_save", save)
        out = one_line(runner.invoke(app, ["train", store, "--out", str(tmp_path / "run"), *TRAIN]))
    assert "No space left on device" in out and "--resume" in out
    assert not list((tmp_path / "run").glob("*.partial"))  # nothing half-written is left
    state = ck.read_train_state_meta(tmp_path / "run")
    assert state["epoch"] == 1  # epoch 1's state, whole
    r = runner.invoke(app, ["train", store, "--out", str(tmp_path / "run"), "--resume", *TRAIN])
    assert r.exit_code == 0, r.output
    a, b = load_file(str(tmp_path / "ok" / "model.safetensors")), load_file(str(tmp_path / "run" / "model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_score_on_a_full_disk_keeps_its_parts_and_the_rerun_equals_an_undisturbed_run(tmp_path, monkeypatch):
    import pandas as pd

    from leakstore.model.config import ModelConfig
    from leakstore.model.train import train
    from tests.synthetic import planted_store

    planted_store(tmp_path / "s.zarr", per_class=24, chunk=16)
    train(
        tmp_path / "s.zarr",
        tmp_path / "run",
        ModelConfig(width=8, embed_dim=16, epochs=2, members=1),
        device="cpu",
        progress=False,
    )
    from distributed import LocalCluster

    # workers write the parts: in-process workers, so that the full disk below is theirs too
    with LocalCluster(processes=False, n_workers=1, threads_per_worker=1, dashboard_address=":0") as cluster:
        args = [
            "score",
            str(tmp_path / "run"),
            str(tmp_path / "s.zarr"),
            "--scheduler",
            cluster.scheduler_address,
            "--no-progress",
        ]
        assert runner.invoke(app, [*args, "--out", str(tmp_path / "ok.parquet")]).exit_code == 0
        real = pd.DataFrame.to_parquet
        with monkeypatch.context() as m:
            m.setattr(pd.DataFrame, "to_parquet", full_disk(after=2)(real))
            out = one_line(runner.invoke(app, [*args, "--out", str(tmp_path / "p.parquet")]))
        assert "No space left on device" in out and "2 finished partitions are kept" in out
        assert not (tmp_path / "p.parquet").exists()
        r = runner.invoke(app, [*args, "--out", str(tmp_path / "p.parquet")])
    assert r.exit_code == 0, r.output
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "ok.parquet"), pd.read_parquet(tmp_path / "p.parquet"))


def test_featurize_says_when_the_disk_looks_too_small(tmp_path):
    assert free_space_note(tmp_path, 10, "featurizing 1 image") is None
    note = free_space_note(tmp_path / "new" / "s.zarr", 1 << 62, "featurizing 9 images")
    assert note.startswith("note: featurizing 9 images needs up to") and "free space and rerun" in note


def test_a_safetensors_write_error_becomes_the_os_error_it_was(tmp_path):
    from leakstore.fsio import save_safetensors

    def full(tensors, filename, **kw):  # what safetensors raises on a full disk
        open(filename, "wb").write(b"\x00" * 10)
        raise RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")

    with pytest.raises(OSError) as e:
        save_safetensors(full, {}, tmp_path / "model.safetensors")
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(tmp_path / "model.safetensors")
    assert list(tmp_path.iterdir()) == []
