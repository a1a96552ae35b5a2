"""Dask clusters for the pipelines: a local cluster of worker processes, or a running scheduler.

Shared by scoring and featurizing (`leakstore.pipelines.score`, `leakstore.pipelines.featurize_dask`)."""

from __future__ import annotations

import os

from leakstore.device import LOCAL_WORKERS
from leakstore.errors import InputError

THREAD_CAPS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")  # dask's one-thread caps


def local_cluster(n_workers: int):
    """A LocalCluster of worker processes (one thread each) for leakstore's work.

    dask's nanny exports MALLOC_TRIM_THRESHOLD_=65536 into every worker; setting it also
    freezes glibc's mmap threshold, so each large tensor is mmap'd and unmapped again, a fifth
    slower featurizing (docs/scaling.md). The nanny reads
    this config when it is built, so restarted workers keep it; dask's thread caps stay (one
    thread per worker process), also where the caller's environment sets OMP_NUM_THREADS and the
    like: dask lets those win over its caps, and N workers of as many threads each would contend.

    dask logs at error level only, here and in the workers: Ctrl-C or a finished job otherwise
    ends in warnings about cancelled tasks and slow worker shutdowns, which are not the user's news."""
    import logging

    import dask
    from distributed import LocalCluster

    logging.getLogger("distributed").setLevel(logging.ERROR)

    class Cluster(LocalCluster):
        """Puts the caller's environment back when it closes: a LocalCluster's nannies run in this
        process and write their workers' environment (OMP_NUM_THREADS=1, ...) into it at every spawn,
        so every process started afterwards would run one thread."""

        def close(self, *args, **kwargs):
            try:
                return super().close(*args, **kwargs)
            finally:
                _restore_environ(environ)

    environ = dict(os.environ)
    # workers killed on Ctrl-C leave semaphores behind; multiprocessing's tracker process (started with
    # the cluster, from this environment) would say so in two lines after leakstore's one
    os.environ.setdefault("PYTHONWARNINGS", "ignore::UserWarning:multiprocessing.resource_tracker")
    for k in THREAD_CAPS:  # put back by _restore_environ below
        os.environ.pop(k, None)
    try:
        with dask.config.set(
            {
                "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
                "distributed.nanny.pre-spawn-environ.DASK_LOGGING__DISTRIBUTED": "error",
                f"distributed.nanny.pre-spawn-environ.{LOCAL_WORKERS}": str(n_workers),
                "logging.distributed": "error",
            }
        ):
            return Cluster(n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=":0")
    finally:
        _restore_environ(environ)  # also right after the first spawn (a restarted worker gets its own again)


def _restore_environ(environ: dict) -> None:
    for k in set(os.environ) - set(environ):
        del os.environ[k]
    os.environ.update(environ)


CONNECT_TIMEOUT_S = 10  # how long --scheduler is tried before the one-line error


def connect(scheduler, workers):
    """(client, local cluster or None): on the scheduler at `scheduler`, else on a new local cluster
    of `workers` processes (default one per core). Shared by scoring and featurizing."""
    from distributed import Client

    if scheduler:
        try:
            return Client(scheduler, timeout=f"{CONNECT_TIMEOUT_S}s"), None
        except (OSError, TimeoutError) as e:
            raise InputError(
                f"cannot reach the dask scheduler at {scheduler} within {CONNECT_TIMEOUT_S} s ({type(e).__name__}): "
                "start it (dask scheduler) or drop --scheduler to use local workers"
            ) from None
    cluster = local_cluster(workers or max(1, (os.cpu_count() or 2)))
    return Client(cluster), cluster
