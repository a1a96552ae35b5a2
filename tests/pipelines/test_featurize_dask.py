"""Featurizing on a dask cluster gives the store a single process gives, even when a worker dies."""

import os
import signal
import time

import numpy as np
import pytest
from distributed import Client
from typer.testing import CliRunner

from leakstore.cli import app
from leakstore.config import RunOptions
from leakstore.featurize.api import featurize, prepare
from leakstore.pipelines.cluster import local_cluster
from leakstore.pipelines.featurize_dask import featurize_on_dask
from leakstore.store import DONE, FeatureStore
from tests.conftest import write_class_images

KW = dict(
    vae="demo", resolution=64, timesteps=(0, 100), fft_size=4, residual_bins=4, period=8, spectrum_bins=16, device="cpu"
)  # the CLI's default periodicity, pixel and noise spectra


def same_store(a, b):
    sa, sb = FeatureStore.open(a), FeatureStore.open(b)
    assert sa.attrs["config_hash"] == sb.attrs["config_hash"]
    assert sa.attrs["catalog_fingerprint"] == sb.attrs["catalog_fingerprint"]
    for name in (
        "latent0",
        "latents",
        "spectra",
        "residual",
        "periodicity",
        "pixel_spectrum",
        "status",
        "sha256",
        "error",
        "view",
        "label",
        "split",
    ):
        np.testing.assert_array_equal(sa.read(name), sb.read(name))  # NaN-aware: NaN == NaN here


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = write_class_images(tmp_path_factory.mktemp("d") / "data", {"real": 16, "gen-a": 16, "gen-b": 15}, size=(72, 64))
    (d / "real" / "bad.png").write_bytes(b"not an image")
    return d


@pytest.fixture(scope="module")
def plain(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("p") / "plain.zarr"
    featurize(data, out, train_views=1, opts=RunOptions(device="cpu", workers=1, progress=False, chunk_size=8), **KW)
    return out


def test_cluster_1_and_2_give_the_single_process_store(data, plain, tmp_path):
    for n in (1, 2):
        args = [
            "featurize",
            str(data),
            str(tmp_path / f"c{n}.zarr"),
            "--vae",
            "demo",
            "--resolution",
            "64",
            "--timesteps",
            "0,100",
            "--fft-size",
            "4",
            "--residual-bins",
            "4",
            "--device",
            "cpu",
            "--chunk-size",
            "8",
            "--train-views",
            "1",
            "--cluster",
            str(n),
            "--no-progress",
            "--json",
        ]
        r = CliRunner().invoke(app, args)
        assert r.exit_code == 0, r.output
        same_store(plain, tmp_path / f"c{n}.zarr")
    s = FeatureStore.open(tmp_path / "c2.zarr")
    assert (s.status() == DONE).sum() == s.n - 2  # the bad file and its view failed


@pytest.mark.slow
def test_a_worker_killed_mid_run_changes_nothing(data, plain, tmp_path):
    catalog, encoder, cfg = prepare(data, train_views=1, **KW)
    with local_cluster(2) as c, Client(c) as client:
        pids = list(client.run(os.getpid).values())
        import threading

        def kill_one():
            deadline = time.time() + 60
            while not any(client.processing().values()) and time.time() < deadline:
                time.sleep(0.01)
            os.kill(pids[0], signal.SIGKILL)  # its chunks run again elsewhere

        t = threading.Thread(target=kill_one)
        t.start()
        rep = featurize_on_dask(
            catalog,
            tmp_path / "k.zarr",
            cfg,
            encoder,
            RunOptions(device="cpu", chunk_size=8, progress=False),
            client=client,
        )
        t.join()
    assert rep.failed_in_store == 2
    same_store(plain, tmp_path / "k.zarr")


def test_featurize_starts_the_local_cluster_that_featurize_workers_allows(data, tmp_path, monkeypatch, capsys):
    """The cap on GPU workers reaches the cluster that is started (no GPU here: the cap is mocked)."""
    import leakstore.pipelines.cluster as cluster
    import leakstore.pipelines.featurize_dask as fd

    started = []
    monkeypatch.setattr("leakstore.device.featurize_workers", lambda n, dev: (1, f"--cluster {n}: starting 1 worker"))

    def connect(scheduler, workers):
        started.append(workers)
        raise RuntimeError("stop here")

    monkeypatch.setattr(cluster, "connect", connect)
    catalog, encoder, cfg = prepare(data, **KW)
    with pytest.raises(RuntimeError, match="stop here"):
        fd.featurize_on_dask(
            catalog,
            tmp_path / "s.zarr",
            cfg,
            encoder,
            RunOptions(device="cpu", chunk_size=8, progress=False),
            cluster=3,
        )
    assert started == [1]
    assert "featurize: --cluster 3: starting 1 worker" in capsys.readouterr().err
