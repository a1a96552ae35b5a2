"""Which GPU a local dask worker takes, and its share of that GPU's memory (torch.cuda mocked)."""

import os

import pytest
import torch

from leakstore.device import featurize_workers, worker_device


@pytest.fixture
def gpus(monkeypatch):
    """A machine with `n` visible GPUs; records set_device and the memory caps asked for."""
    calls = {"device": [], "fraction": []}

    def machine(n):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
        monkeypatch.setattr(torch.cuda, "set_device", lambda d: calls["device"].append(str(d)))
        monkeypatch.setattr(
            torch.cuda, "set_per_process_memory_fraction", lambda f, d: calls["fraction"].append((round(f, 4), str(d)))
        )
        return calls

    return machine


def test_local_workers_go_round_robin_over_the_gpus_and_share_memory_only_where_they_share_a_gpu(gpus, monkeypatch):
    calls = gpus(2)
    monkeypatch.setenv("LEAKSTORE_LOCAL_WORKERS", "3")
    assert [str(worker_device("cuda", index=i)) for i in range(3)] == ["cuda:0", "cuda:1", "cuda:0"]
    assert calls["device"] == ["cuda:0", "cuda:1", "cuda:0"]
    # GPU 0 holds workers 0 and 2: each gets half of it (less headroom); GPU 1's worker is alone, uncapped
    assert calls["fraction"] == [(0.475, "cuda:0"), (0.475, "cuda:0")]


def test_local_workers_sent_to_one_named_gpu_split_it_evenly(gpus, monkeypatch):
    calls = gpus(4)
    monkeypatch.setenv("LEAKSTORE_LOCAL_WORKERS", "4")
    assert str(worker_device("cuda:2", index=1)) == "cuda:2"
    assert calls["fraction"] == [(0.2375, "cuda:2")]


def test_workers_not_started_by_a_local_cluster_and_single_workers_are_left_alone(gpus, monkeypatch):
    calls = gpus(2)
    monkeypatch.delenv("LEAKSTORE_LOCAL_WORKERS", raising=False)
    assert str(worker_device("cuda", index=1)) == "cuda"  # `dask worker` with CUDA_VISIBLE_DEVICES
    monkeypatch.setenv("LEAKSTORE_LOCAL_WORKERS", "1")
    assert str(worker_device("cuda", index=0)) == "cuda"
    assert str(worker_device("cpu", index=0)) == "cpu"
    assert calls == {"device": [], "fraction": []}


def test_worker_plugins_pass_the_workers_number_on(monkeypatch):
    """Plugin setup runs outside any task, where dask cannot say which worker it is: the plugins pass it."""
    from types import SimpleNamespace

    from leakstore.pipelines import featurize_dask, score

    seen = []
    monkeypatch.setenv("LEAKSTORE_WORKER", "0")  # setup sets it: put back afterwards, not left to other tests
    monkeypatch.setattr(featurize_dask.FeatureStore, "open", staticmethod(lambda path: path))
    monkeypatch.setattr(featurize_dask, "_runner", lambda store, device, batch, number: seen.append(number))
    monkeypatch.setattr(score, "get_predictor", lambda run_dir, device, number, threads: seen.append((number, threads)))
    featurize_dask.LoadEncoder("s.zarr", "cuda", 16).setup(SimpleNamespace(name=3))
    score.LoadModel("run", "cuda").setup(SimpleNamespace(name="tcp://10.0.0.1:4000"))
    score.LoadModel("run", "cpu", 2).setup(SimpleNamespace(name=1))
    assert seen == [3, (None, None), (1, 2)]


def test_a_cpu_worker_process_runs_one_torch_thread(monkeypatch):
    """Featurizing and scoring workers share one rule: on the CPU, one thread per process."""
    from leakstore.device import worker_process_device

    before = torch.get_num_threads()
    monkeypatch.setattr(torch, "set_num_threads", lambda n: calls.append(n))
    calls = []
    assert worker_process_device("cpu", 3) == torch.device("cpu") and calls == [1]
    assert torch.get_num_threads() == before  # the test process is left as it was


def test_a_local_featurize_cluster_gets_one_worker_per_gpu_and_says_so(gpus):
    gpus(1)
    n, notice = featurize_workers(2, "cuda")
    assert n == 1 and "--cluster 2" in notice and "1 GPU visible" in notice
    assert featurize_workers(3, "cuda:0")[0] == 1  # one named GPU is one GPU, whatever is visible
    gpus(4)
    assert featurize_workers(6, "cuda")[0] == 4
    assert featurize_workers(4, "cuda") == (4, None)
    assert featurize_workers(8, "cpu") == (8, None)  # CPU workers scale with processes


def test_threads_come_from_the_option_then_the_environment(monkeypatch):
    from leakstore.device import THREADS_ENV, set_threads
    from leakstore.errors import InputError

    calls = []
    monkeypatch.setattr(torch, "set_num_threads", lambda n: calls.append(n))
    monkeypatch.setenv(THREADS_ENV, "3")
    set_threads(1)
    set_threads()
    monkeypatch.delenv(THREADS_ENV)
    set_threads()  # neither: torch's own choice, nothing set
    assert calls == [1, 3]
    monkeypatch.setenv(THREADS_ENV, "many")
    with pytest.raises(InputError, match=THREADS_ENV):
        set_threads()


def test_idle_openmp_threads_sleep_unless_the_user_says_otherwise():
    import subprocess
    import sys

    code = "import os, leakstore; print(os.environ['OMP_WAIT_POLICY'])"
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    assert (
        subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True).stdout.strip()
        == "PASSIVE"
    )
    env["OMP_WAIT_POLICY"] = "ACTIVE"
    assert (
        subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True).stdout.strip() == "ACTIVE"
    )
