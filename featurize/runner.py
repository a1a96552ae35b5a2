"""The batched featurize runner: it only moves data.

    files --(DataLoader worker processes: read, hash, decode, view, resize, seeded noise)-->
    uint8 batches --(device: encode, then every feature of leakstore.features)--> store-dtype results
    --(writer threads: whole chunks, data first, status last)--> Zarr store

Resumable: only chunks with a pending row are processed, and every chunk is rewritten
whole, deterministically, so an interrupted run finished later equals an uninterrupted one.
Sharded: shard i of n owns chunks k with k % n == i; shards share no chunk and need no lock.
"""

from __future__ import annotations

import contextlib
import copy
import os
import sys
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from leakstore.config import BATCH_CPU, BATCH_CUDA, FeaturizeConfig, RunOptions
from leakstore.device import resolve_device
from leakstore.errors import ImageDecodeError, LeakstoreError
from leakstore.features import Context, compute, features_for, needs_decoder, torch_dtype
from leakstore.features.noising import noise_coefficients, seeded_noise
from leakstore.featurize.images import crop_window, crops_coincide, decode_image, header_size, prepare, read_bytes
from leakstore.featurize.provenance import read_provenance
from leakstore.featurize.vae import LatentEncoder
from leakstore.featurize.views import apply_view, draw_view, parse_policy, parse_view, view_name, view_size
from leakstore.fsio import free_space_note
from leakstore.store import DONE, FAILED, Catalog, FeatureStore


@dataclass
class FeaturizeReport:
    store: str
    config_hash: str
    shard: str
    n_images: int
    already_done: int
    processed: int
    done: int
    failed: int
    failed_in_store: int  # failed rows of this shard, this run and earlier ones
    seconds: float
    images_per_s: float
    device: str
    builtin_encoder: bool
    failures: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


# ---------------------------------------------------------------------------- worker side
class ImageRows(Dataset):
    """Row j -> (row, uint8 (3, R, R) or None, noise (T, C, h, w) float32 or None, sha256, error, view,
    native features or None, provenance or None).

    A training-view row (view_index[row] > 0) re-reads its source file and goes through a view
    drawn from `policy`, seeded by the file's SHA-256, the view index and the config seed (after
    the store-wide `cfg.view`, when there is one); `view` names what was applied. With `provenance`,
    the first row of each file (crop 0) also reads what the file's metadata claims, from the same
    bytes (featurize.provenance), whether or not its pixels decode."""

    def __init__(
        self,
        paths: tuple[str, ...],
        rows: list[int],
        cfg: FeaturizeConfig,
        max_pixels: int,
        view_index: np.ndarray | None = None,
        policy: str = "",
        crop_index: np.ndarray | None = None,
        provenance: bool = False,
        collapsed: frozenset[int] = frozenset(),
    ):
        self.paths, self.rows, self.cfg, self.max_pixels = paths, rows, cfg, max_pixels
        self.provenance = provenance
        self.collapsed = collapsed  # rows whose image's crops were found one window (repeated_crops)
        self.crop_index = crop_index  # (N,) crop of each row (featurize --crops), None: the image whole
        self.steps = parse_view(cfg.view)
        self.view_index = view_index
        self.policy = parse_policy(policy) if view_index is not None else None
        self.noise_shape = (len(cfg.timesteps),) + cfg.latent_shape
        self.native = [f for f in features_for(cfg) if f.native is not None]
        self._last = None  # ((path, view index), what _read gave): the file the previous row read

    def __len__(self) -> int:
        return len(self.rows)

    def _read(self, row: int, path: str):
        """(its bytes when provenance is read, else None; sha256; view name; the pixels after the store's
        and the row's view, read-only, or the ImageDecodeError that stopped them): the previous call's
        when this row reads the same file through the same view. An image's K crop rows are
        consecutive, so one read, hash and decode serve them all (per DataLoader worker: a crop row in
        another worker's batch reads the file again, to the same pixels)."""
        k = int(self.view_index[row]) if self.view_index is not None else 0
        if self._last is not None and self._last[0] == (path, k):
            return self._last[1]
        self._last = None
        data, sha, view = None, "", ""
        try:
            data, sha = read_bytes(path)
            arr = decode_image(data, path, max_pixels=self.max_pixels, min_side=self.cfg.min_side)
            steps = self.steps + (draw_view(self.policy, sha, k, self.cfg.seed) if k else ())
            if steps:
                view = view_name(steps)
                arr = apply_view(arr, steps, seed=int(sha[:8], 16) ^ self.cfg.seed ^ k)
            arr.setflags(write=False)  # the image's other crop rows read it too
        except ImageDecodeError as e:
            arr = e
        got = (data if self.provenance else None, sha, view, arr)
        self._last = ((path, k), got)
        return got

    def __getitem__(self, j: int):
        row = self.rows[j]
        path, sha, view, prov = self.paths[row], "", "", None
        try:
            data, sha, view, arr = self._read(row, path)
            if data is not None and (self.crop_index is None or self.crop_index[row] == 0):
                prov = read_provenance(data)
            if isinstance(arr, ImageDecodeError):
                raise arr
            if row in self.collapsed and not crops_coincide(*arr.shape[:2], self.cfg.resolution):
                raise ImageDecodeError(
                    path, f"decoded as {arr.shape[1]}x{arr.shape[0]} px, not the size its header gave: rerun featurize"
                )
            if self.crop_index is not None:
                arr = crop_window(arr, self.cfg.resolution, int(self.crop_index[row]), self.cfg.crops)
            try:
                native = {
                    f.name: torch.from_numpy(np.asarray(f.native(arr, self.cfg), dtype=np.float32)) for f in self.native
                }
            except ValueError as e:  # e.g. an image (or view) too small for the feature
                raise ImageDecodeError(path, str(e)) from None
            arr = prepare(arr, self.cfg.resolution, self.cfg.resize_policy, self.cfg.resample, path)
            img = torch.from_numpy(arr if arr.flags.writeable else arr.copy()).permute(2, 0, 1).contiguous()
            eps = torch.from_numpy(seeded_noise(sha, self.cfg.seed, self.noise_shape))
            return row, img, eps, sha, "", view, native, prov
        # a failed row keeps no hash: the store records nothing about a file that is not a usable image
        except ImageDecodeError as e:
            return row, None, None, "", e.reason, view, None, prov
        except Exception as e:  # an unexpected failure is still one row's failure, with its reason
            return row, None, None, "", f"unexpected {type(e).__name__}: {e}", view, None, prov


def collate(items):
    ok = [it for it in items if it[1] is not None]
    return {
        "rows": [it[0] for it in items],
        "ok_rows": [it[0] for it in ok],
        "images": torch.stack([it[1] for it in ok]) if ok else None,
        "noise": torch.stack([it[2] for it in ok]) if ok else None,
        "sha": {it[0]: it[3] for it in items},
        "error": {it[0]: it[4] for it in items if it[1] is None},
        "view": {it[0]: it[5] for it in items},
        "native": {k: torch.stack([it[6][k] for it in ok]) for k in ok[0][6]} if ok else None,
        "provenance": {it[0]: it[7] for it in items if it[7] is not None},
    }


def compile_encoder(module: torch.nn.Module, mode: str = "default"):
    """torch.compile for the VAE encoder. The max-autotune modes also turn on the inductor
    settings that help convolution-heavy nets (1x1 convs as matmuls, coordinate-descent tuning)."""
    if mode.startswith("max-autotune"):
        import torch._inductor.config as ic

        ic.conv_1x1_as_mm = True
        ic.coordinate_descent_tuning = True
        ic.epilogue_fusion = False
    return torch.compile(module, mode=mode)


def chunk_aligned_batches(chunk_lengths: list[int], batch: int) -> list[list[int]]:
    """Batches that start at a chunk's first row and never cross a chunk boundary, so a chunk
    is always encoded in the same batches, whichever other chunks a run (a resumed run, a
    shard) processes: results are then bit-identical to an uninterrupted run."""
    out, start = [], 0
    for n in chunk_lengths:
        out += [list(range(start + i, start + min(i + batch, n))) for i in range(0, n, batch)]
        start += n
    return out


# ---------------------------------------------------------------------------- device side
class DeviceFeaturizer:
    """Every feature the config enables (leakstore.features.FEATURES) for batches on one device.
    (B, 3, R, R) uint8 -> {name: (B, *shape)} in each feature's store dtype."""

    def __init__(
        self,
        encoder: LatentEncoder,
        cfg: FeaturizeConfig,
        device: torch.device,
        batch_size: int,
        use_compile: bool,
        compile_mode: str = "default",
        pad: bool | None = None,
    ):
        self.cfg, self.device, self.batch_size = cfg, device, batch_size
        self.features = features_for(cfg)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.precision, torch.float32)
        if device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = cfg.precision == "tf32"
            torch.backends.cudnn.allow_tf32 = cfg.precision == "tf32"
            torch.backends.cudnn.benchmark = True
        elif dtype != torch.float32:
            raise LeakstoreError(
                f"--precision {cfg.precision} on the CPU is ~100x slower than fp32 here: use --precision fp32 on CPU"
            )
        self.memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
        # `pad`: run a partial batch padded to the full batch shape. A compiled encoder is then not
        # recompiled; and a store's bytes do not depend on the thread count: on the CPU oneDNN picks its
        # kernels by shape *and* threads (a 4-image batch gave 1-ulp different latents with 1 thread, a
        # dask worker, than with 2, a plain run; full batches did not). Store featurizing pads; scoring a
        # few images in memory does not (one image would cost a whole batch). Default: pad when compiled.
        self.fixed_batch = use_compile if pad is None else pad
        decoding = needs_decoder(cfg)
        if decoding and encoder.decoder is None:
            raise LeakstoreError(
                "the config asks for a decoder feature (the residual) but the encoder came without "
                "its decoder: load it with load_encoder(..., decoder=True)"
            )
        # The residual is a difference near 1/255, which bf16 rounding would blur (docs/featurize.md):
        # decoder features run their encode-decode-encode on a float32 copy.
        res32 = (
            copy.deepcopy(encoder).to(device=device, dtype=torch.float32, memory_format=self.memory_format)
            if decoding and dtype != torch.float32
            else None
        )
        self.encoder = encoder.to(device=device, dtype=dtype, memory_format=self.memory_format).eval()
        wrap = (lambda m: compile_encoder(m, compile_mode)) if use_compile else (lambda m: m)
        self.run = wrap(self.encoder)
        self.res_encoder = self.res_decoder = None
        if decoding:
            self.res_encoder = self.run if res32 is None else wrap(res32.eval())
            self.res_decoder = wrap((self.encoder if res32 is None else res32).decoder)
        a, s = noise_coefficients(cfg.schedule, cfg.timesteps)
        self.alpha = torch.tensor(a, dtype=torch.float32, device=device)
        self.sigma = torch.tensor(s, dtype=torch.float32, device=device)

    @torch.inference_mode()
    def __call__(
        self, images: torch.Tensor, noise: torch.Tensor, native: dict | None = None
    ) -> dict[str, torch.Tensor]:
        """images (B, 3, R, R) uint8, noise (B, T, C, h, w) float32, native: the loader's per-image
        features (collate's "native") -> tensors on the CPU (copies in flight: wait on the returned
        'event' before reading them).

        Unpadded (scoring in memory), a row whose inputs repeat the row's before it is computed once
        and copied: the crops of an image no larger than one crop are one window with one noise draw
        (a half-size copy of a 256 px image, judged on four 128 px crops, is four equal rows). A padded
        batch is computed whole either way, so store featurizing leaves them as they come."""
        copies = None
        if not self.fixed_batch:
            first, copies = distinct_rows(images, noise, native)
            if first is not None:
                images, noise = images[first], noise[first]
                native = {k: v[first] for k, v in (native or {}).items()}
        b = images.shape[0]
        x = images.to(self.device, non_blocking=True)
        if self.fixed_batch and b < self.batch_size:
            x = torch.cat([x, x[:1].expand(self.batch_size - b, -1, -1, -1)])
        x = x.contiguous(memory_format=self.memory_format)
        z = self.run(x).float()
        ctx = Context(
            self.cfg,
            b,
            z,
            noise.to(self.device, non_blocking=True),
            self.alpha,
            self.sigma,
            pixels=x,
            native={k: v.to(self.device) for k, v in (native or {}).items()},
        )
        if self.res_encoder is not None:  # on the padded batch too: one shape for a compiled decoder
            ctx.z32 = z if self.res_encoder is self.run else self.res_encoder(x).float()
            ctx.encode, ctx.decode = (lambda px: self.res_encoder(px * 255.0)), self.res_decoder
        computed = compute(ctx, [f.name for f in self.features])
        out = {f.name: computed[f.name].to(torch_dtype(f.dtype)) for f in self.features}
        if copies is not None:  # every row of the batch, the repeated ones copied
            index = torch.from_numpy(copies).to(self.device)
            out = {k: v[index] for k, v in out.items()}
        if self.device.type != "cuda":
            return out
        host = {k: torch.empty(v.shape, dtype=v.dtype, pin_memory=True) for k, v in out.items()}
        for k, v in out.items():
            host[k].copy_(v, non_blocking=True)
        ev = torch.cuda.Event()
        ev.record()
        host["event"] = ev
        return host


def distinct_rows(images: torch.Tensor, noise: torch.Tensor, native: dict | None = None):
    """Rows of a batch whose inputs (pixels, noise and native features) equal the row's before them
    (an image's crops that are one window come one after another) -> (the first row of each run,
    (B,) the position of each row's run among them), or (None, None) when no row repeats the one
    before it, or when the batch is already on a device."""
    if images.device.type != "cpu" or images.shape[0] < 2:
        return None, None
    parts = [images, noise, *(native or {}).values()]
    first, inverse = [0], np.zeros(images.shape[0], dtype=np.int64)
    for i in range(1, images.shape[0]):
        if not all(torch.equal(t[i], t[i - 1]) for t in parts):
            first.append(i)
        inverse[i] = len(first) - 1
    if len(first) == images.shape[0]:
        return None, None
    return torch.tensor(first, dtype=torch.long), inverse


# ---------------------------------------------------------------------------- chunk assembly
class ChunkAssembler:
    """Collects per-row results into whole-chunk buffers and hands full chunks to writers."""

    def __init__(self, store: FeatureStore, chunks: list[int], executor: ThreadPoolExecutor, max_pending: int = 4):
        self.store, self.executor, self.max_pending = store, executor, max_pending
        cfg = store.config
        self.shapes = {f.name: (f.shape(cfg), np.dtype(f.dtype)) for f in features_for(cfg)}
        self.buffers: dict[int, dict] = {}
        self.remaining = {ck: len(store.chunk_rows(ck)) for ck in chunks}
        self.futures: deque[Future] = deque()
        self.failures: list[tuple[int, str]] = []
        self.done = self.failed = 0

    def _buffer(self, ck: int) -> dict:
        if ck not in self.buffers:
            n = len(self.store.chunk_rows(ck))
            buf = {name: np.full((n,) + shape, np.nan, dtype=dt) for name, (shape, dt) in self.shapes.items()}
            buf.update(
                sha256=np.full(n, "", dtype=object),
                error=np.full(n, "", dtype=object),
                status=np.zeros(n, dtype=np.uint8),
            )
            if self.store.has_views:
                buf["view"] = np.full(n, "", dtype=object)
            self.buffers[ck] = buf
        return self.buffers[ck]

    def add(
        self,
        rows: list[int],
        sha: dict,
        errors: dict,
        results: dict[str, np.ndarray] | None,
        ok_rows: list[int],
        views: dict | None = None,
    ) -> None:
        """Place one batch. Batches never cross a chunk (chunk_aligned_batches), so the ok rows
        are copied into the chunk buffer with one fancy-indexed assignment per array."""
        cs = self.store.chunk_size
        ck = rows[0] // cs
        if any(r // cs != ck for r in rows):
            raise AssertionError("internal: a batch crosses a chunk boundary")
        buf = self._buffer(ck)
        offs = np.asarray(rows) - ck * cs
        buf["sha256"][offs] = [sha.get(r, "") for r in rows]
        if "view" in buf:
            buf["view"][offs] = [(views or {}).get(r, "") for r in rows]
        if ok_rows:
            ok = np.asarray(ok_rows) - ck * cs
            for name in self.shapes:
                buf[name][ok] = results[name]
            buf["status"][ok] = DONE
            self.done += len(ok_rows)
        for r, msg in errors.items():
            buf["error"][r - ck * cs], buf["status"][r - ck * cs] = msg, FAILED
            self.failures.append((r, msg))
            self.failed += 1
        self.remaining[ck] -= len(rows)
        if self.remaining[ck] == 0:
            self._flush(ck)

    def _flush(self, ck: int) -> None:
        buf = self.buffers.pop(ck)
        while len(self.futures) >= self.max_pending:
            self.futures.popleft().result()
        data = {k: (v.astype(str) if v.dtype == object else v) for k, v in buf.items() if k != "status"}
        self.futures.append(self.executor.submit(self.store.write_chunk, ck, data, buf["status"]))

    def wait(self) -> None:
        while self.futures:
            self.futures.popleft().result()


# ---------------------------------------------------------------------------- the run
def disk_row_bytes(cfg: FeaturizeConfig) -> int:
    """Bytes one row takes on disk at most: every stored feature uncompressed (noisy latents barely
    compress) plus a little for its path, hash and status."""
    return sum(int(np.prod(f.shape(cfg))) * np.dtype(f.dtype).itemsize for f in features_for(cfg)) + 512


def repeated_crops(catalog: Catalog, rows: list[int], cfg: FeaturizeConfig, threads: int = 8) -> dict[int, list[int]]:
    """{crop 0's row: the rows of the image's other crops} for the images of `rows` whose crop
    windows are one and the same (no larger than one crop, after the store-wide view): their rows
    would be the same computation K times. Sizes come from the files' headers; training-view rows,
    whose size is drawn, are left out. Empty without crops."""
    k, ci, vi = cfg.crops, catalog.crop_index, catalog.view_index
    if k == 1 or ci is None:
        return {}
    pending = set(rows)
    heads = [
        r
        for r in rows
        if ci[r] == 0
        and (vi is None or vi[r] == 0)
        and all(r + c in pending and ci[r + c] == c and catalog.paths[r + c] == catalog.paths[r] for c in range(1, k))
    ]
    steps = parse_view(cfg.view)
    with ThreadPoolExecutor(threads) as ex:
        sizes = list(ex.map(lambda r: header_size(catalog.paths[r]), heads))
    return {
        r: list(range(r + 1, r + k))
        for r, hw in zip(heads, sizes)
        if hw is not None and crops_coincide(*view_size(*hw, steps), cfg.resolution)
    }


def with_copies(b: dict, results: dict | None, copies: dict[int, list[int]]) -> tuple[dict, dict | None]:
    """A loader batch and its results, with the rows that repeat a computed row (`copies`: {row:
    its repeats}) added as that row's copies: its hash, view, error or features."""
    extra = [(r, d) for r in b["rows"] for d in copies.get(r, ())]
    if not extra:
        return b, results
    b = dict(b)
    b["rows"] = b["rows"] + [d for _, d in extra]
    b["sha"] = {**b["sha"], **{d: b["sha"][r] for r, d in extra}}
    b["view"] = {**b["view"], **{d: b["view"][r] for r, d in extra}}
    b["error"] = {**b["error"], **{d: b["error"][r] for r, d in extra if r in b["error"]}}
    at = {r: i for i, r in enumerate(b["ok_rows"])}
    ok = [(at[r], d) for r, d in extra if r in at]
    b["ok_rows"] = b["ok_rows"] + [d for _, d in ok]
    if results is not None and ok:
        idx = np.array([i for i, _ in ok])
        results = {name: np.concatenate([v, v[idx]]) for name, v in results.items()}
    return b, results


def featurize_store(
    catalog: Catalog,
    store_path: str | Path,
    cfg: FeaturizeConfig,
    encoder: LatentEncoder,
    opts: RunOptions | None = None,
    runner: DeviceFeaturizer | None = None,
) -> FeaturizeReport:
    """Featurize `catalog` into the store at `store_path` (created, or resumed when it matches).
    `runner`: a DeviceFeaturizer built once and reused (a dask worker featurizing chunk after chunk)."""
    opts = opts or RunOptions()
    device = resolve_device(opts.device)
    if encoder.identity != cfg.vae:
        raise LeakstoreError("internal: the encoder's identity differs from the config's VAE")
    for name, low in (("batch_size", 0), ("chunk_size", 1), ("workers", -1), ("max_pixels", 1)):
        if getattr(opts, name) < low:
            raise LeakstoreError(f"--{name.replace('_', '-')} {getattr(opts, name)} must be at least {low}")
    i, n = opts.shard
    if not 0 <= i < n:
        raise LeakstoreError(f"--shard {i}/{n}: the shard index must lie in [0, {n - 1}]")
    store = FeatureStore.create(
        store_path,
        cfg,
        catalog,
        chunk_size=opts.chunk_size,
        codec=opts.codec,
        overwrite=opts.overwrite and i == 0 and n == 1,
    )
    chunks = store.todo_chunks(opts.shard)
    if opts.chunks is not None:
        mine = set(opts.chunks)
        chunks = [k for k in chunks if k in mine]
    rows = [r for ck in chunks for r in store.chunk_rows(ck)]
    mine = sum(len(store.chunk_rows(k)) for k in range(store.n_chunks) if k % n == i)
    if rows and (
        note := free_space_note(store_path, len(rows) * disk_row_bytes(cfg), f"featurizing {len(rows):,} images")
    ):
        print(note, file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    batch = opts.batch_size or (BATCH_CUDA if device.type == "cuda" else BATCH_CPU)
    workers = opts.workers if opts.workers >= 0 else (max(1, (os.cpu_count() or 2) - 1) if device.type == "cuda" else 1)
    assembler = None
    if rows:
        # an image no larger than one crop is computed once and its other crop rows copied: a padded
        # batch costs the same whatever it holds, so they are left out of the batches themselves
        copies = repeated_crops(catalog, rows, cfg)
        repeats = {d for ds in copies.values() for d in ds}
        computed = [r for r in rows if r not in repeats]
        runner = runner or DeviceFeaturizer(
            encoder,
            cfg,
            device,
            batch,
            device.type == "cuda" if opts.compile is None else opts.compile,
            opts.compile_mode,
            pad=True,
        )
        per_chunk = np.bincount(np.asarray(computed) // store.chunk_size, minlength=store.n_chunks)
        loader = DataLoader(
            ImageRows(
                catalog.paths,
                computed,
                cfg,
                opts.max_pixels,
                catalog.view_index,
                catalog.view_policy,
                catalog.crop_index,
                collapsed=frozenset(copies),
            ),
            batch_sampler=chunk_aligned_batches([int(per_chunk[k]) for k in chunks], batch),
            num_workers=workers,
            collate_fn=collate,
            pin_memory=device.type == "cuda",
            prefetch_factor=4 if workers else None,
            persistent_workers=False,
        )
        with ThreadPoolExecutor(opts.writer_threads) as ex:
            assembler = ChunkAssembler(store, chunks, ex)
            _drive(loader, runner, assembler, len(rows), opts.progress, f"featurize {Path(store_path).name}", copies)
            assembler.wait()
    seconds = time.perf_counter() - t0
    paths = catalog.paths
    st = store.status()
    failed_in_store = sum(
        int((st[store.chunk_rows(k).start : store.chunk_rows(k).stop] == FAILED).sum())
        for k in range(store.n_chunks)
        if k % n == i
    )
    return FeaturizeReport(
        store=str(store_path),
        config_hash=cfg.hash,
        shard=f"{i}/{n}",
        n_images=len(catalog),
        already_done=mine - len(rows),
        processed=len(rows),
        done=assembler.done if assembler else 0,
        failed=assembler.failed if assembler else 0,
        failed_in_store=failed_in_store,
        seconds=round(seconds, 3),
        images_per_s=round(len(rows) / seconds, 1) if rows and seconds > 0 else 0.0,
        device=str(device),
        builtin_encoder=cfg.vae.builtin,
        failures=[{"path": paths[r], "error": e} for r, e in (assembler.failures if assembler else [])],
    )


def _drive(
    loader,
    runner: DeviceFeaturizer,
    assembler: ChunkAssembler,
    total: int,
    progress: bool,
    desc: str,
    copies: dict[int, list[int]] | None = None,
):
    """Keep one batch in flight on the device while the previous one is copied out and assembled
    (with the rows that repeat its rows: `copies`, repeated_crops)."""
    from tqdm.auto import tqdm

    bar = tqdm(total=total, unit="img", desc=desc, disable=not progress, dynamic_ncols=True, smoothing=0.1)
    pending = None
    with contextlib.closing(bar):
        for b in loader:
            out = runner(b["images"], b["noise"], b["native"]) if b["images"] is not None else None
            if pending is not None:
                _finish(pending, assembler, bar, copies)
            pending = (b, out)
        if pending is not None:
            _finish(pending, assembler, bar, copies)


def _finish(pending, assembler: ChunkAssembler, bar, copies: dict[int, list[int]] | None = None) -> None:
    b, out = pending
    results = None
    if out is not None:
        if "event" in out:
            out.pop("event").synchronize()
        results = {k: v.numpy() for k, v in out.items()}
    if copies:
        b, results = with_copies(b, results, copies)
    assembler.add(b["rows"], b["sha"], b["error"], results, b["ok_rows"], b["view"])
    bar.update(len(b["rows"]))
    if assembler.failed:
        bar.set_postfix(failed=assembler.failed, refresh=False)
