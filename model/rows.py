"""Where training reads its rows from: memory, or the store itself, chunk by chunk.

    source = open_rows(store, names, stream="auto")
    for pos, feats, local in source.batches(idx, 64, gen):   # pos: the rows' positions, local: into feats
        ...

A position is an index into the store's done rows (`source.rows`, `labels`, `splits`, `paths`,
small per-row arrays that always stay in memory). `MemoryRows` holds every feature (what a store
that fits in memory gets, and on a GPU keeps them there); `StreamRows` reads the store's Zarr
chunks as the epoch reaches them: the chunks in a shuffled order, `buffer` rows of them at a time
shuffled together (a shuffle buffer of whole chunks), the next window read by a background thread
while the current one trains. Peak memory is a few windows, whatever the size of the store.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from leakstore.config import DEFAULT_STREAM, DEFAULT_STREAM_BUFFER, STREAM_MODES
from leakstore.errors import InputError
from leakstore.features import BY_NAME, FeatureBatch, torch_dtype
from leakstore.store import DONE, FeatureStore

MEMORY_SHARE = 0.25  # auto: stream when the features a run reads exceed this share of the RAM


def physical_memory() -> int:
    """Bytes of RAM on this machine (0 when the platform does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def memory_row_bytes(store: FeatureStore, names) -> int:
    """Bytes one row of the named features takes in memory."""
    return sum(
        int(np.prod(store.group[n].shape[1:])) * np.dtype(store.group[n].dtype).itemsize
        for n in names
        if n in store.group
    )


def should_stream(store: FeatureStore, names, n_rows: int, stream: str = DEFAULT_STREAM) -> bool:
    if stream not in STREAM_MODES:
        raise InputError(f"--stream {stream!r}: choose one of {', '.join(STREAM_MODES)}")
    if stream != "auto":
        return stream == "on"
    ram = physical_memory()
    return bool(ram) and n_rows * memory_row_bytes(store, names) > MEMORY_SHARE * ram


def open_rows(
    store: FeatureStore, names, stream: str = DEFAULT_STREAM, buffer: int = DEFAULT_STREAM_BUFFER
) -> MemoryRows | StreamRows:
    """The rows of `store` with the named features: streamed when `stream` is "on", or "auto" and
    they would take more than a quarter of the RAM; in memory otherwise."""
    names = [n for n in names if n in store.group]
    if should_stream(store, names, int((store.status() == DONE).sum()), stream):
        return StreamRows(store, names, store.load(()), buffer)  # the done rows' bookkeeping, no features
    return MemoryRows(store.load(names))


class MemoryRows:
    """Every row's features in memory (optionally moved to the GPU once: `to_device`)."""

    streaming = False

    def __init__(self, feats: FeatureBatch):
        self.feats = feats
        self.rows, self.labels, self.splits, self.paths = feats.rows, feats.labels, feats.splits, feats.paths

    def __len__(self) -> int:
        return len(self.rows)

    def to_device(self, device, fraction: float = 0.5) -> MemoryRows:
        """The tensors on the GPU once, when they take at most `fraction` of its free memory (then no
        batch is copied from the host again); unchanged on CPU or when too big."""
        dev = torch.device(device)
        if dev.type != "cuda":
            return self
        need = sum(t.numel() * t.element_size() for t in self.feats.arrays.values())
        free, _ = torch.cuda.mem_get_info(dev)
        return self if need > fraction * free else MemoryRows(self.feats.to(dev))

    def batches(
        self, idx: torch.Tensor, batch_size: int, gen: torch.Generator | None = None, limit: int = 0
    ) -> Iterator[tuple[torch.Tensor, FeatureBatch, torch.Tensor]]:
        """(positions, features, local indices into them) per batch: idx shuffled by `gen`, or in order;
        the first `limit` rows only when limit > 0."""
        order = idx[torch.randperm(len(idx), generator=gen)] if gen is not None else idx
        if limit > 0:
            order = order[:limit]
        for s in range(0, len(order), batch_size):
            b = order[s : s + batch_size]
            yield b, self.feats, b

    def close(self) -> None:
        pass


class StreamRows:
    """Rows read from the store's chunks as they are needed (see the module's docstring)."""

    streaming = True

    def __init__(
        self, store: FeatureStore, names, idx: FeatureBatch, buffer: int = DEFAULT_STREAM_BUFFER, prefetch: int = 1
    ):
        self.store, self.names = store, list(names)
        self.rows, self.labels, self.splits, self.paths = idx.rows, idx.labels, idx.splits, idx.paths
        self.chunk_of = self.rows // store.chunk_size
        self.window_chunks = max(1, int(buffer) // store.chunk_size)
        self.prefetch = max(1, int(prefetch))
        self._pool = ThreadPoolExecutor(max_workers=self.prefetch, thread_name_prefix="leakstore-read")

    def __len__(self) -> int:
        return len(self.rows)

    def to_device(self, device, fraction: float = 0.5) -> StreamRows:
        return self

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __del__(self):
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)

    def fetch(self, pos) -> FeatureBatch:
        """The features of positions `pos` (in that order), read chunk by chunk."""
        pos = np.asarray(pos, dtype=np.int64)
        if len(pos) == 0:
            return FeatureBatch(
                self.rows[:0],
                {
                    n: torch.zeros((0,) + tuple(self.store.group[n].shape[1:]), dtype=torch_dtype(BY_NAME[n].dtype))
                    for n in self.names
                },
                self.labels[:0],
                self.splits[:0],
                self.paths[:0],
            )
        chunks = self.chunk_of[pos]
        arrays = {
            n: np.empty((len(pos),) + tuple(self.store.group[n].shape[1:]), dtype=self.store.group[n].dtype)
            for n in self.names
        }
        for k in np.unique(chunks):
            where = np.flatnonzero(chunks == k)  # the rows of chunk k, where they go in the answer
            rows = self.store.chunk_rows(int(k))
            local = self.rows[pos[where]] - rows.start
            for n in self.names:  # one decompressed chunk at a time, one copy of its rows
                arrays[n][where] = self.store.read(n, slice(rows.start, rows.stop))[local]
        return FeatureBatch(
            self.rows[pos],
            {n: torch.from_numpy(a) for n, a in arrays.items()},
            self.labels[pos],
            self.splits[pos],
            self.paths[pos],
        )

    def _windows(self, idx: np.ndarray, gen: torch.Generator | None) -> list[np.ndarray]:
        """The epoch's positions in windows of whole chunks: chunks in a shuffled order (in order of first
        appearance without `gen`), each window's rows shuffled together."""
        chunks = self.chunk_of[idx]
        if gen is not None and len(np.unique(chunks)) <= self.window_chunks:
            return [idx[torch.randperm(len(idx), generator=gen).numpy()]]  # one window: the order MemoryRows gives
        uniq, first = np.unique(chunks, return_index=True)
        uniq = uniq[np.argsort(first, kind="stable")]
        if gen is not None:
            uniq = uniq[torch.randperm(len(uniq), generator=gen).numpy()]
        out = []
        for s in range(0, len(uniq), self.window_chunks):
            w = idx[np.isin(chunks, uniq[s : s + self.window_chunks])]
            if gen is not None:
                w = w[torch.randperm(len(w), generator=gen).numpy()]
            out.append(w)
        return out

    def batches(
        self, idx: torch.Tensor, batch_size: int, gen: torch.Generator | None = None, limit: int = 0
    ) -> Iterator[tuple[torch.Tensor, FeatureBatch, torch.Tensor]]:
        """(positions, features, local indices) per batch of `batch_size` rows; rows left over at the end
        of a window join the next, so every batch but the last is full. With limit > 0, the first `limit`
        rows of that order: whole windows of shuffled chunks, only as many as it takes are read."""
        windows = self._windows(np.asarray(idx, dtype=np.int64), gen)
        if limit > 0:
            cut, total = [], 0
            for w in windows:
                if total >= limit:
                    break
                cut.append(w[: limit - total])
                total += len(cut[-1])
            windows = cut
        futures = [self._pool.submit(self.fetch, w) for w in windows[: self.prefetch]]
        carry: FeatureBatch | None = None  # the rows a window left over, fewer than a batch
        carry_pos = np.zeros(0, np.int64)
        try:
            for i, w in enumerate(windows):
                feats = futures[i].result()
                futures[i] = None
                if i + self.prefetch < len(windows):
                    futures.append(self._pool.submit(self.fetch, windows[i + self.prefetch]))
                start = 0
                if carry is not None:  # one batch of the rows left over and this window's first rows
                    start = min(batch_size - len(carry), len(w))
                    head = _cat(carry, feats.subset(np.arange(start)))
                    pos = np.concatenate([carry_pos, w[:start]])
                    carry = None
                    if len(pos) == batch_size or i == len(windows) - 1:
                        yield torch.from_numpy(pos), head, torch.arange(len(pos))
                    else:  # a window smaller than what the batch lacks
                        carry, carry_pos = head, pos
                        continue
                last = i == len(windows) - 1
                end = len(w) if last else start + (len(w) - start) // batch_size * batch_size
                for s in range(start, end, batch_size):
                    local = torch.arange(s, min(s + batch_size, end))
                    yield torch.from_numpy(w[s : s + len(local)]), feats, local
                if end < len(w):
                    carry, carry_pos = feats.subset(np.arange(end, len(w))), w[end:]
        finally:
            for f in futures:
                if f is not None:
                    f.cancel()


def _cat(a: FeatureBatch, b: FeatureBatch) -> FeatureBatch:
    return FeatureBatch(
        np.concatenate([a.rows, b.rows]),
        {k: torch.cat([a.arrays[k], b.arrays[k]]) for k in a.arrays},
        np.concatenate([a.labels, b.labels]),
        np.concatenate([a.splits, b.splits]),
        np.concatenate([a.paths, b.paths]),
    )
