"""Which torch device a stage runs on (shared by featurize, training and scoring)."""

from __future__ import annotations

from leakstore.errors import LeakstoreError


def resolve_device(device: str = "auto"):
    """'auto', 'cpu', 'cuda', 'cuda:N' -> torch.device; a clear error when CUDA is asked for and absent."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    d = torch.device(device)
    if d.type == "cuda" and not torch.cuda.is_available():
        raise LeakstoreError(f"--device {device}: no CUDA device is visible here; use --device cpu")
    return d


LOCAL_WORKERS = "LEAKSTORE_LOCAL_WORKERS"  # set by pipelines.score.local_cluster in its workers' environment


def worker_device(device: str, index: int | None = None):
    """The device of this dask worker process, for `device` as the user gave it.

    Workers of a local cluster (`--cluster N`, which sets LEAKSTORE_LOCAL_WORKERS=N in their
    environment) that are asked for plain 'cuda' are spread over the visible GPUs round-robin by
    worker number, instead of all landing on GPU 0. Workers that share one GPU each get an equal
    share of its memory (torch's per-process cap): without it one worker could take the whole card
    and the next one failed with CUDA out-of-memory (seen with 2 featurize workers on one H200, the
    residual on; whether cuDNN's benchmark workspaces or torch's allocator cache grew was not
    established). Workers started by hand (`dask worker`, one per
    GPU with CUDA_VISIBLE_DEVICES) are not touched. `index`: the worker's number, its dask name as a
    LocalCluster gives it (0..N-1); default: read from the running task's worker, else 0."""
    import os

    import torch

    dev = resolve_device(device)
    n = int(os.environ.get(LOCAL_WORKERS, "0") or 0)
    if dev.type != "cuda" or n <= 1:
        return dev
    if index is None:
        index = _worker_number()
    count = max(1, torch.cuda.device_count())
    if dev.index is None:
        dev = torch.device("cuda", index % count)
        sharing = len(range(dev.index, n, count))  # local workers that land on this GPU
    else:
        sharing = n  # every local worker was sent to this one GPU
    torch.cuda.set_device(dev)
    if sharing > 1:
        torch.cuda.set_per_process_memory_fraction(0.95 / sharing, dev)
    return dev


def featurize_workers(n: int, device: str) -> tuple[int, str | None]:
    """(workers, notice): the size of a local featurize cluster (`featurize --cluster N`).

    On CUDA at most one worker per visible GPU: two workers sharing one card ran many times slower
    than one (docs/speed.md). On one GPU the single-process `featurize --device cuda --workers W`
    (W loader threads) is the fast path. The
    notice says what was changed; None when nothing was."""
    import torch

    dev = resolve_device(device)
    if dev.type != "cuda":
        return n, None
    gpus = 1 if dev.index is not None else max(1, torch.cuda.device_count())
    if n <= gpus:
        return n, None
    return gpus, (
        f"--cluster {n}: {gpus} GPU{'s' if gpus > 1 else ''} visible for --device {device}; starting {gpus} "
        f"worker{'s' if gpus > 1 else ''}, one per GPU (workers sharing a GPU were far slower than one alone; on one "
        "GPU, "
        "featurize without --cluster and with --workers for loader threads is the fast path)"
    )


def worker_process_device(device: str, index: int | None = None):
    """The device a dask worker process (featurizing or scoring) runs on: `worker_device`, and on
    the CPU one torch thread per process (worker processes scale; threads inside them fight)."""
    dev = worker_device(device, index)
    if dev.type == "cpu":
        import torch

        torch.set_num_threads(1)
    return dev


def number_of(worker) -> int | None:
    """A dask worker's number: a LocalCluster names its workers 0..n-1; others may be named anything."""
    return worker.name if isinstance(worker.name, int) else None


def _worker_number() -> int:
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):  # not inside a task (a worker plugin passes its number instead)
        return 0
    return number_of(worker) or 0


THREADS_ENV = "LEAKSTORE_THREADS"


def set_threads(n: int | None = None) -> int:
    """Set torch's CPU threads for this process and return the number: `n`, else $LEAKSTORE_THREADS,
    else torch's own choice (one per core). Call before the first tensor op; 0 or less means torch's
    choice as well."""
    import os

    import torch

    if n is None:
        env = os.environ.get(THREADS_ENV, "").strip()
        try:
            n = int(env) if env else 0
        except ValueError:
            from leakstore.errors import InputError

            raise InputError(
                f"${THREADS_ENV}={env!r} is not a number of threads; set it to e.g. 1, or unset it"
            ) from None
    if n and n > 0:
        torch.set_num_threads(int(n))
    return torch.get_num_threads()
