"""Train Proto-LeakNet from a feature store alone, then fit its scorers.

    train(store, out_dir, ModelConfig(...), unknown_labels=["taef2-leak-c"])

Classes named in `unknown_labels` are held out of training entirely (their rows are the
unseen generators of the open-set evaluation). Early stopping on validation loss; the last
epoch is checkpointed every epoch, so an interrupted run continues with `resume=True`.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.special import softmax

from leakstore.config import DEFAULT_DEVICE, DEFAULT_STREAM, DEFAULT_STREAM_BUFFER, FeaturizeConfig, check_compatible
from leakstore.device import resolve_device
from leakstore.errors import ConfigMismatchError, InputError, LeakstoreError
from leakstore.features import BY_NAME, Context, FeatureBatch, compute
from leakstore.features.noising import noise_coefficients
from leakstore.model.checkpoint import (
    Bundle,
    build_member,
    image_keys,
    load_train_state,
    model_inputs,
    read_train_state_meta,
    save_bundle,
    save_train_state,
    scorer_features,
    train_state_name,
)
from leakstore.model.config import ModelConfig, default_open_scorer, with_absent
from leakstore.model.net import attention_entropy_penalty, joined
from leakstore.model.openset import ClassPosterior, OpenSetScorer, select_rows, takes_outliers
from leakstore.model.outliers import outlier_blocks, outlier_groups, outlier_rows, photo_keys
from leakstore.model.predict import batch_dict, embed_rows, open_blocks
from leakstore.model.rows import MemoryRows, open_rows
from leakstore.model.scorers import CLOSED_SCORERS
from leakstore.model.threshold import record_validation_flagged, set_out_of_fold_threshold
from leakstore.store import FeatureStore

MIN_TRAIN_PER_CLASS = 4
# Above these sizes a run reads a seeded sample of whole store chunks instead of every row (a chunk is
# read whole anyway, and an image's crops share one), so that a store of millions of rows costs no more:
NORM_ROWS = 20_000  # training rows the input statistics come from
VAL_ROWS = 4_096  # validation rows of the per-epoch validation (early stopping), kept in memory
FIT_ROWS = 20_000  # training rows the scorers are fitted on (kNN and KDE keep every one)
CAL_ROWS = 10_000  # validation rows they are calibrated on (the unknown threshold among them)


def _sample_groups(mask: np.ndarray, group: np.ndarray, seed: int, limit: int) -> np.ndarray:
    """`mask` (bool over rows) cut to at most `limit` rows: those of a seeded random sample of whole groups
    (store chunks, or images); unchanged when it holds no more than `limit`."""
    if mask.sum() <= limit:
        return mask
    ids, counts = np.unique(group[mask], return_counts=True)
    perm = np.random.default_rng(seed).permutation(len(ids))
    keep = ids[perm[: max(1, int(np.searchsorted(np.cumsum(counts[perm]), limit, side="right")))]]
    return mask & np.isin(group, keep)


def _sample_positions(pos: np.ndarray, group: np.ndarray, seed: int, limit: int) -> np.ndarray:
    """`_sample_groups` for an index array of positions (sorted in the answer)."""
    mask = np.zeros(len(group), bool)
    mask[pos] = True
    return np.flatnonzero(_sample_groups(mask, group, seed, limit))


def _capped(
    fit: dict[str, np.ndarray], group: np.ndarray, seed: int, limit: int = FIT_ROWS, cal_limit: int = CAL_ROWS
) -> dict[str, np.ndarray]:
    """`fit`'s masks with the training part cut to at most `limit` rows, and the validation and
    calibration parts together to at most `cal_limit`, by `_sample_groups`."""
    out = dict(fit)
    for parts, cap in ((("train",), limit), (("val", "calibration"), cal_limit)):
        union = np.logical_or.reduce([fit[p] for p in parts])
        chosen = _sample_groups(union, group, seed, cap)
        for p in parts:
            out[p] = fit[p] & chosen
    return out


def _roll(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """One random circular shift per sample over the last two axes (FFT magnitudes unchanged).
    Vectorised (two gathers), on whatever device x lives; the shifts come from `gen` (CPU)."""
    h, w = x.shape[-2:]
    b = len(x)
    dy = torch.randint(0, h, (b,), generator=gen).to(x.device)
    dx = torch.randint(0, w, (b,), generator=gen).to(x.device)
    flat = x.reshape(b, -1, h, w)
    iy = (torch.arange(h, device=x.device)[None, :] - dy[:, None]) % h  # (B, h): out row <- in row
    ix = (torch.arange(w, device=x.device)[None, :] - dx[:, None]) % w
    flat = flat.gather(2, iy[:, None, :, None].expand(b, flat.shape[1], h, w))
    flat = flat.gather(3, ix[:, None, None, :].expand(b, flat.shape[1], h, w))
    return flat.reshape(x.shape)


def _renoised(
    feats: FeatureBatch,
    idx: torch.Tensor,
    names,
    fcfg: FeaturizeConfig,
    gen: torch.Generator,
    device,
    roll: bool = False,
    noise_gen: torch.Generator | None = None,
) -> dict[str, torch.Tensor]:
    """Fresh forward diffusion of latent0 for rows idx: the noise-derived features among `names`
    (latents (B, T, C, h, w), spectra (B, T, C, k, k), ...), computed by the feature table.
    The noise is drawn on the device from `noise_gen` (on CPU that is `gen` itself)."""
    z0 = feats["latent0"][idx.to(feats["latent0"].device)].to(device).float()
    if roll:
        z0 = _roll(z0, gen)
    a, s = (
        torch.tensor(v, dtype=torch.float32, device=device) for v in noise_coefficients(fcfg.schedule, fcfg.timesteps)
    )
    eps = torch.randn((len(idx), len(fcfg.timesteps)) + tuple(z0.shape[1:]), generator=noise_gen or gen, device=device)
    return compute(Context(fcfg, len(idx), z0, eps, a, s), names)


def _view_table(store: FeatureStore, feats: FeatureBatch, tr: np.ndarray) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Training rows as (clean rows (n,), their training views (n, k) as feats indices, -1 where
    missing); (all training rows, None) for a store without training views."""
    if not store.has_views:
        return torch.from_numpy(tr), None
    vi = store.view_index()[feats.rows]
    src = store.source_rows()[feats.rows]
    clean = tr[vi[tr] == 0]
    slot = {int(feats.rows[i]): j for j, i in enumerate(clean)}  # store row of a clean row -> its position
    table = np.full((len(clean), max(1, int(vi.max()))), -1, dtype=np.int64)
    for i in tr[vi[tr] > 0]:
        j = slot.get(int(src[i]))
        if j is not None:  # a view whose clean source failed is unused
            table[j, vi[i] - 1] = i
    return torch.from_numpy(clean), torch.from_numpy(table)


def _tty() -> bool:
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


def _draw_views(clean: torch.Tensor, views: torch.Tensor | None, p: float, gen: torch.Generator) -> torch.Tensor:
    """One epoch's rows: each clean row, or with probability p one of its training views (uniformly)."""
    if views is None or p <= 0:
        return clean
    n, k = views.shape
    cand = views[torch.arange(n), torch.randint(0, k, (n,), generator=gen)]
    use = (torch.rand(n, generator=gen) < p) & (cand >= 0)
    return torch.where(use, cand, clean)


def rows_in_use(store: FeatureStore, rows: np.ndarray, cfg: ModelConfig, part: str = "network") -> np.ndarray:
    """(len(rows),) bool over store rows: those `part` of a model trained with `cfg` uses: the
    "network", the scorers' "fit" (closed-set scorer and its calibration, open-set components) or
    the open-set scorer's "calibration" (its scales and threshold). Every row, or only the clean
    ones of a store with training views: all parts under --view-prob 0; the scorers under
    --scorer-rows clean; their fit, not the open-set calibration, under clean-fit."""
    if part not in ("network", "fit", "calibration"):
        raise ValueError(f"part {part!r}")
    clean_only = store.has_views and (
        cfg.view_prob <= 0
        or (part != "network" and cfg.scorer_rows == "clean")
        or (part == "fit" and cfg.scorer_rows == "clean-fit")
    )
    return store.view_index()[rows] == 0 if clean_only else np.ones(len(rows), bool)


def _resumable(settings: dict) -> dict:
    """The model settings a resumed run must share with the run it continues (all but the schedule)."""
    # the discriminant's weight, the open-set scorer and its outlier classes are not the networks': a
    # finished run resumed with another refits its scorers
    scorers = ("discriminant", "open_scorer", "outlier_components")
    return {k: v for k, v in settings.items() if k not in ("epochs", "patience", *scorers)}


def _split_known(store: FeatureStore, feats: FeatureBatch, unknown_labels) -> tuple[list[str], np.ndarray]:
    names = store.class_names
    missing = [u for u in unknown_labels if u not in names]
    if missing:
        raise InputError(f"--unknown-labels {missing} are not classes of {store.path} ({', '.join(names)})")
    known = [n for n in names if n not in unknown_labels]
    remap = np.full(len(names) + 1, -1, dtype=np.int64)
    for i, n in enumerate(names):
        if n in known:
            remap[i] = known.index(n)
    y = remap[feats.labels]  # -1 for unlabelled and unknown rows
    return known, y


def training_splits(splits: np.ndarray, cfg: ModelConfig) -> np.ndarray:
    """The split codes training reads: the store's, with its test rows as training rows when cfg.final."""
    return np.where(splits == 2, 0, splits).astype(splits.dtype) if cfg.final else splits


def _check_enough(known, y, splits, store):
    for k, name in enumerate(known):
        n_tr, n_va = int(((y == k) & (splits == 0)).sum()), int(((y == k) & (splits == 1)).sum())
        if n_tr < MIN_TRAIN_PER_CLASS or n_va < 1:
            raise InputError(
                f"class {name!r} of {store.path} has {n_tr} training and {n_va} validation rows; "
                f"training needs at least {MIN_TRAIN_PER_CLASS} and 1: add images, or hold the class "
                "out with --unknown-labels"
            )
    if len(known) < 2:
        raise InputError("training needs at least two known classes")


def _batch(feats, idx, net, cfg, fcfg, device, gen, noise_gen=None) -> dict[str, torch.Tensor]:
    """One training batch of the model's inputs: noise-derived ones redrawn from latent0 when
    cfg.renoise, the rest read from the features; latents rolled when cfg.roll_augment."""
    fresh = [n for n in net.inputs if cfg.renoise and BY_NAME[n].noise_derived]
    out = _renoised(feats, idx, fresh, fcfg, gen, device, cfg.roll_augment, noise_gen) if fresh else {}
    out.update(batch_dict(feats, idx, [n for n in net.inputs if n not in out], device))
    if cfg.roll_augment and not fresh:
        out["latents"] = _roll(out["latents"], gen)
    return out


def _forward_loss(net, batch, n, target, cfg, device, gen) -> tuple[dict, torch.Tensor]:
    """The network on one training batch of n rows (time-dropout drawn from `gen`): its outputs and
    the training loss, cross-entropy plus the attention entropy penalty."""
    keep = net.time_dropout_mask(n, "cpu", gen).to(device) if cfg.time_dropout > 0 else None
    out = net(batch, keep)
    return out, F.cross_entropy(out["logits"], target) + cfg.entropy_reg * attention_entropy_penalty(out["a"])


def _view_of(n: int, clean: torch.Tensor, views: torch.Tensor | None) -> torch.Tensor | None:
    """(n, k) positions of each row's training views (-1 where none; only clean rows have them)."""
    if views is None:
        return None
    out = torch.full((n, views.shape[1]), -1, dtype=torch.int64)
    out[clean] = views
    return out


def _paired_loss(net, source, feats, pos, logits, view_of, y_dev, cfg, fcfg, device, gen, noise_gen):
    """The batch's rows that have a training view, each with one of them: the view's cross-entropy
    and the KL divergence of its class distribution from the clean row's (held fixed), weighted by
    cfg.consistency; (loss, rows) or None when no row of the batch has a view."""
    k = view_of.shape[1]
    cand = view_of[pos, torch.randint(0, k, (len(pos),), generator=gen)]
    have = cand >= 0
    if not bool(have.any()):
        return None
    vpos = cand[have]
    if getattr(source, "streaming", False):  # a view lives in another chunk: read it
        vfeats, vidx = source.fetch(vpos.numpy()), torch.arange(len(vpos))
    else:
        vfeats, vidx = feats, vpos
    vbatch = _batch(vfeats, vidx, net, cfg, fcfg, device, gen, noise_gen)
    vout, loss = _forward_loss(net, vbatch, len(vpos), y_dev[vpos.to(device)], cfg, device, gen)
    clean_logp = F.log_softmax(logits[have.to(device)].detach(), 1)
    kl = F.kl_div(F.log_softmax(vout["logits"], 1), clean_logp, log_target=True, reduction="batchmean")
    return loss + cfg.consistency * kl, len(vpos)


def _epoch(
    net, opt, source, y, idx_all, cfg, fcfg, device, gen, bar=None, noise_gen=None, view_of=None
) -> tuple[float, int]:
    """One pass over idx_all, in the order `source` gives (model/rows.py): (mean loss, rows forwarded).
    Features may live on the device already (`MemoryRows.to_device`); the loss is summed on the
    device, so a step never waits for the GPU. With `view_of` (cfg.consistency > 0) each row also
    trains on one of its views, and those rows count as forwarded too."""
    net.train()
    y_dev = torch.as_tensor(y, device=device)
    total, n, forwarded = torch.zeros((), device=device), 0, 0
    for pos, feats, idx in source.batches(idx_all, cfg.batch_size, gen, cfg.epoch_samples):
        batch = _batch(feats, idx, net, cfg, fcfg, device, gen, noise_gen)
        out, loss = _forward_loss(net, batch, len(idx), y_dev[pos.to(device)], cfg, device, gen)
        if view_of is not None and (
            paired := _paired_loss(
                net, source, feats, pos, out["logits"], view_of, y_dev, cfg, fcfg, device, gen, noise_gen
            )
        ):
            vloss, nv = paired
            loss = (loss * len(idx) + vloss * nv) / (len(idx) + nv)
            forwarded += nv
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), cfg.grad_clip)
        opt.step()
        total += loss.detach() * len(idx)
        n += len(idx)
        if bar is not None:
            bar.update(len(idx))
    return float(total) / max(n, 1), n + forwarded


@torch.inference_mode()
def _validate(net, source, y, idx, device, batch=256) -> tuple[float, float, float]:
    """Validation loss, top-1 and macro one-vs-rest AUC of the prototype logits."""
    from leakstore.model.metrics import closed_set

    net.eval()
    logits, seen = [], []
    for pos, feats, local in source.batches(idx, batch):
        logits.append(net(batch_dict(feats, local, net.inputs, device))["logits"].float().cpu())
        seen.append(pos)
    logits = torch.cat(logits)
    t = torch.as_tensor(y[torch.cat(seen).numpy()])
    loss = float(F.cross_entropy(logits, t))
    m = closed_set(t.numpy(), torch.softmax(logits, 1).numpy(), [str(i) for i in range(logits.shape[1])])
    return loss, m["top1"], m["macro_auc"]


def _post_hoc_prototypes(net, emb_tr, y_tr, emb_va, y_va, cfg) -> list[str]:
    """Give weak classes (validation recall < cfg.weak_recall) extra prototypes at k-means
    centres of their training embeddings; keep them only if validation accuracy does not drop."""
    from sklearn.cluster import KMeans

    if cfg.extra_protos <= 0:
        return []
    dev = net.prototypes.device

    def val_acc():
        with torch.inference_mode():
            z, g = (torch.as_tensor(emb_va[k], device=dev) for k in ("z", "g"))
            return float((net.logits(z, g).argmax(1).cpu().numpy() == y_va).mean())

    pred = emb_va["logits"].argmax(1)
    base, added = val_acc(), []
    for k in range(net.n_classes):
        m = y_va == k
        if not m.any() or (pred[m] == k).mean() >= cfg.weak_recall:
            continue
        zk = emb_tr["z"][y_tr == k]
        n = min(cfg.extra_protos, len(zk))
        if n < 1:
            continue
        saved = {
            n: v.clone() for n, v in net.state_dict().items() if n.rsplit(".", 1)[-1] in ("prototypes", "proto_mask")
        }
        centres = KMeans(n_clusters=n, n_init=4, random_state=cfg.seed).fit(zk).cluster_centers_
        net.add_prototypes(k, torch.as_tensor(centres, dtype=torch.float32))
        acc = val_acc()
        if acc >= base:
            base, added = acc, added + [int(k)]
        else:
            net.load_state_dict(saved, strict=False)
    return added


def train(
    store_path: str | Path,
    out_dir: str | Path,
    cfg: ModelConfig | None = None,
    *,
    unknown_labels=(),
    device: str = DEFAULT_DEVICE,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    expect: FeaturizeConfig | None = None,
    stream: str = DEFAULT_STREAM,
    buffer: int = DEFAULT_STREAM_BUFFER,
    outliers: str | Path | None = None,
) -> dict:
    """Train, fit scorers, save the bundle in out_dir. Returns the training summary.

    `outliers`: a store of images no known generator made (model/outliers.py), featurized like
    this one; its rows join the open-set scorers that take an "other" class.

    `stream`: "on" reads the store chunk by chunk through a shuffle buffer of `buffer` rows (memory
    bounded by the buffer, not the store), "off" loads the features into memory, "auto" streams
    when they would take more than a quarter of the RAM (model/rows.py)."""
    cfg = cfg or ModelConfig(open_scorer=default_open_scorer(outliers is not None))
    out_dir = Path(out_dir)
    store = FeatureStore.open(store_path)
    fcfg = store.config
    if expect is not None:
        check_compatible(expect, fcfg, f"store {store_path}")
    if (out_dir / "model.json").exists() and not (resume or overwrite):
        raise InputError(f"{out_dir} already holds a model: pass --resume to continue it or --overwrite to replace it")
    dev = resolve_device(device)
    # checked before the networks train: a store that cannot serve fails in a second, not after the run
    if outliers is not None:  # copies of the images training learns may fit the scorers too
        outliers = outlier_rows(outliers, store, unknown_labels, judged_splits=(1,) if cfg.final else (1, 2))
    inputs = model_inputs(cfg, fcfg)
    # the open-set scorers may read the residual too, unless the model is told to ignore it (--no-residual),
    # and the features only they read (the pixel spectrum)
    feats = open_rows(
        store,
        inputs
        + (("latent0",) if cfg.renoise else ())
        + (("residual",) if cfg.uses("residual") else ())
        + scorer_features(fcfg),
        stream,
        buffer,
    )
    try:
        return _train(store, fcfg, feats, cfg, inputs, out_dir, unknown_labels, dev, resume, progress, outliers)
    finally:
        feats.close()  # the streamed store's reader thread


def _train(
    store: FeatureStore,
    fcfg: FeaturizeConfig,
    feats,
    cfg: ModelConfig,
    inputs,
    out_dir: Path,
    unknown_labels,
    dev,
    resume: bool,
    progress: bool,
    outliers=None,
) -> dict:
    """train() once its rows are open: the networks, then the scorers (_finish)."""
    from tqdm.auto import tqdm

    known, y = _split_known(store, feats, list(unknown_labels))
    splits = training_splits(feats.splits, cfg)
    _check_enough(known, y, splits, store)
    rows = (y >= 0) & rows_in_use(store, feats.rows, cfg)  # views included unless --view-prob 0
    tr = torch.from_numpy(np.flatnonzero(rows & (splits == 0)))
    va = torch.from_numpy(np.flatnonzero(rows & (splits == 1)))
    clean, views = _view_table(store, feats, tr.numpy())
    # what a resume must match: the features, the list of images and the classes the run started on
    origin = {
        "featurize_hash": fcfg.hash,
        "catalog_fingerprint": store.attrs.get("catalog_fingerprint"),
        "classes": known,
        "model_config": _resumable(cfg.to_dict()),
    }
    if resume and (out_dir / f"{train_state_name(0)}.safetensors").exists():
        _check_resume(out_dir, origin, store)
    chunk_of = feats.rows // store.chunk_size
    norm = _normalisation(cfg, fcfg, len(known), feats, tr.numpy(), chunk_of)
    dfeats = feats.to_device(dev)
    val = _validation_rows(feats, dfeats, y, va.numpy(), chunk_of, cfg.seed)
    t0 = time.perf_counter()
    epoch_rows = min(len(clean), cfg.epoch_samples) if cfg.epoch_samples > 0 else len(clean)
    # a terminal gets a bar; a log file (not a terminal) one line per epoch instead of its carriage returns
    log_epochs = progress and not _tty()
    bar = tqdm(
        total=cfg.members * cfg.epochs * epoch_rows, unit="sample", disable=not progress or log_epochs, desc="train"
    )
    members, states = [], []
    for k in range(cfg.members):
        if cfg.members > 1:
            bar.set_description(f"train {k + 1}/{cfg.members}")
        net, state = _train_member(
            k,
            cfg,
            fcfg,
            len(known),
            norm,
            dfeats,
            y,
            clean,
            views,
            val,
            dev,
            out_dir,
            origin,
            resume,
            bar,
            epoch_rows,
            log_epochs,
        )
        members.append(net)
        states.append(state)
    bar.close()
    del dfeats
    train_seconds = time.perf_counter() - t0
    net = joined(members)
    use, cal = ((y >= 0) & rows_in_use(store, feats.rows, cfg, part) for part in ("fit", "calibration"))
    fit = {
        "train": use & (splits == 0),
        "val": use & (splits == 1),
        "calibration": cal & (splits == 1),
    }
    return _finish(
        net,
        cfg,
        fcfg,
        store,
        feats,
        known,
        y,
        fit,
        dev,
        out_dir,
        states,
        train_seconds,
        list(unknown_labels),
        epoch_rows,
        outliers,
        # the images the networks learned (a view keeps its source's digest): evaluate counts them when judged
        image_keys(store.read("sha256")[feats.rows[tr.numpy()]]),
    )


def _validation_rows(feats, dfeats, y: np.ndarray, va: np.ndarray, chunk_of: np.ndarray, seed: int):
    """(source, labels, positions) of the per-epoch validation: every validation row, or those of a seeded
    sample of whole chunks above VAL_ROWS; read once into memory when the store is streamed."""
    va = _sample_positions(va, chunk_of, seed + 1, VAL_ROWS)
    if not feats.streaming:
        return dfeats, y, torch.from_numpy(va)
    return MemoryRows(feats.fetch(va)), y[va], torch.arange(len(va))


def _normalisation(
    cfg: ModelConfig, fcfg: FeaturizeConfig, n_classes: int, source, tr: np.ndarray, chunk_of: np.ndarray
) -> dict:
    """The network's input statistics (its *_mean / *_std buffers) from the training rows: all of
    them, or those of a seeded sample of whole chunks above NORM_ROWS, read in one pass (streamed or not)."""
    from leakstore.model.net import NormStats

    tr = _sample_positions(tr, chunk_of, cfg.seed, NORM_ROWS)
    net = build_member(cfg, fcfg, n_classes)
    stats = NormStats(net)
    for _, feats, local in source.batches(torch.from_numpy(tr), 256):
        stats.update(batch_dict(feats, local, net.inputs, "cpu"))
    stats.apply()
    return {k: v for k, v in net.state_dict().items() if k.endswith(("_mean", "_std"))}


def _train_member(
    k: int,
    cfg: ModelConfig,
    fcfg: FeaturizeConfig,
    n_classes: int,
    norm: dict,
    dfeats,
    y,
    clean,
    views,
    val,
    dev,
    out_dir: Path,
    origin: dict,
    resume: bool,
    bar,
    epoch_rows: int,
    log_epochs: bool = False,
):
    """Train member k of the model (seed cfg.seed + k; the only member of a single network) and
    return it at its best epoch, with its training state. Each epoch's state is saved under its
    own name, so an interrupted ensemble resumes at the member and epoch it reached."""
    seed = cfg.seed + k
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    net = build_member(cfg, fcfg, n_classes)
    net.load_state_dict(norm, strict=False)
    net.to(dev)
    noise_gen = torch.Generator(device=dev).manual_seed(seed) if dev.type == "cuda" else None
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    state = {
        "epoch": 0,
        "best_loss": [math.inf, math.inf],  # the selection criterion, lower is better
        "best_epoch": -1,
        "bad_epochs": 0,
        "history": [],
        "origin": origin,
        "seed": seed,
    }
    best = None
    if resume and (out_dir / f"{train_state_name(k)}.safetensors").exists():
        state, best, rng = load_train_state(out_dir, net, opt, k)
        _set_rng(rng, gen, noise_gen, dev)  # the generators as they were: the run goes on as if never stopped
        bar.update(state["epoch"] * epoch_rows)
    if not best:
        best = {n: v.detach().clone() for n, v in net.state_dict().items()}
    while state["epoch"] < cfg.epochs and state["bad_epochs"] < cfg.patience:
        te = time.perf_counter()
        if cfg.consistency > 0 and cfg.view_prob > 0 and views is not None:
            tl, rows = _epoch(
                net, opt, dfeats, y, clean, cfg, fcfg, dev, gen, bar, noise_gen, _view_of(len(y), clean, views)
            )
        else:
            tl, rows = _epoch(
                net, opt, dfeats, y, _draw_views(clean, views, cfg.view_prob, gen), cfg, fcfg, dev, gen, bar, noise_gen
            )
        vl, vacc, vauc = _validate(net, *val, dev)
        state["epoch"] += 1
        state["history"].append(
            {
                "epoch": state["epoch"],
                "train_loss": tl,
                "val_loss": vl,
                "val_top1": vacc,
                "val_auc": vauc,
                "rows": rows,  # forwarded: a paired view is a row of work too
                "seconds": time.perf_counter() - te,
            }
        )
        bar.set_postfix(val_loss=f"{vl:.3f}", val_top1=f"{vacc:.3f}", val_auc=f"{vauc:.3f}", refresh=False)
        if log_epochs:
            print(
                f"train {k + 1}/{cfg.members} epoch {state['epoch']}/{cfg.epochs}: train loss {tl:.3f}, val loss "
                f"{vl:.3f}, val top-1 {vacc:.3f}, val AUC {vauc:.3f} ({time.perf_counter() - te:.1f} s)",
                file=sys.stderr,
                flush=True,
            )
        # lower is better; on "val_auc" a tie (AUC saturates at 1) is broken by the validation loss
        crit = [-round(vauc, 4), vl] if cfg.select_on == "val_auc" else [vl, 0.0]
        prev = state["best_loss"] if isinstance(state["best_loss"], list) else [math.inf, math.inf]
        if crit[0] < prev[0] - 1e-9 or (crit[0] <= prev[0] + 1e-9 and crit[1] < prev[1] - 1e-4):
            state.update(best_loss=crit, best_epoch=state["epoch"], bad_epochs=0)
            best = {n: v.detach().clone() for n, v in net.state_dict().items()}
        else:
            state["bad_epochs"] += 1
        save_train_state(out_dir, net, opt, state, best, k, rng=_rng_states(gen, noise_gen, dev))
    bar.update(max(0, (cfg.epochs - state["epoch"]) * epoch_rows))  # stopped early: the bar ends full
    net.load_state_dict(best)
    return net, state


def _rng_states(gen: torch.Generator, noise_gen: torch.Generator | None, dev: torch.device) -> dict:
    """Every random stream training draws from: batches, views, shifts and time-dropout (`gen`), the
    noise on a GPU (`noise_gen`), and torch's global generators (dropout layers)."""
    out = {"gen": gen.get_state(), "torch": torch.get_rng_state()}
    if noise_gen is not None:
        out["noise"] = noise_gen.get_state()
    if dev.type == "cuda":
        out["cuda"] = torch.cuda.get_rng_state(dev)
    return out


def _set_rng(rng: dict, gen: torch.Generator, noise_gen: torch.Generator | None, dev: torch.device) -> None:
    gen.set_state(rng["gen"])
    torch.set_rng_state(rng["torch"])
    if noise_gen is not None and "noise" in rng:
        noise_gen.set_state(rng["noise"])
    if dev.type == "cuda" and "cuda" in rng:
        torch.cuda.set_rng_state(rng["cuda"], dev)


def _check_resume(out_dir: Path, origin: dict, store: FeatureStore) -> None:
    """Refuse, in one line, to continue a run on other features, images, classes or settings."""
    try:
        prev = read_train_state_meta(out_dir).get("origin")
    except (OSError, ValueError, LeakstoreError):
        prev = None
    if prev is None:
        raise ConfigMismatchError(
            f"{out_dir}: its training state does not record which store it was trained on "
            "(written by an older leakstore or damaged): train into a new --out"
        )
    what = {
        "featurize_hash": "features (featurize config)",
        "catalog_fingerprint": "list of images",
        "classes": "known classes (--unknown-labels)",
        "model_config": "model settings",
    }
    if isinstance(prev.get("model_config"), dict):  # a run begun before a field existed reads as it trained
        prev = {**prev, "model_config": _resumable(with_absent(prev["model_config"]))}
    diff = [what[k] for k in what if prev.get(k) != origin[k]]
    if diff:
        raise ConfigMismatchError(
            f"cannot resume {out_dir} on {store.path}: its {', '.join(diff)} differ from the "
            "run's; resume with the same store and options, or train into a new --out"
        )


def _best_val(state: dict) -> dict:
    return dict(state["history"][state["best_epoch"] - 1]) if state["best_epoch"] > 0 else {}


def row_groups(store: FeatureStore, rows: np.ndarray) -> np.ndarray:
    """(len(rows),) each row's group (its prompt), or its image's SHA-256 where it has none."""
    g = np.array([str(v) for v in store.read("group")])[rows]
    sha = np.array([str(v) for v in store.read("sha256")])[rows]
    return np.where(g != "", g, np.char.add("sha:", sha))


def _finish(
    net,
    cfg,
    fcfg,
    store,
    feats,
    known,
    y,
    fit: dict[str, np.ndarray],
    dev,
    out_dir,
    states: list[dict],
    train_seconds,
    unknown,
    epoch_rows: int,
    outliers=None,
    trained_images: np.ndarray | None = None,
) -> dict:
    """Fit the scorers and save the bundle. `fit` (bool over feats rows): "train" rows fit the
    closed-set scorer and the open-set components, "val" rows calibrate the closed-set scorer
    (and choose post-hoc prototypes), "calibration" rows set the open-set scales and threshold."""
    fit = _capped(fit, feats.rows // store.chunk_size, cfg.seed)
    order = np.flatnonzero(fit["train"] | fit["val"] | fit["calibration"])  # in store order
    emb, fblocks = embed_rows(net, feats, order, dev)
    sub_rows = feats.rows[order]
    tr, va, cal = (fit[k][order] for k in ("train", "val", "calibration"))
    e_tr = {k: v[tr] for k, v in emb.items()}
    e_va = {k: v[va] for k, v in emb.items()}
    y_sub = y[order]
    y_tr, y_va = y_sub[tr], y_sub[va]
    added = _post_hoc_prototypes(net, e_tr, y_tr, e_va, y_va, cfg)
    closed = CLOSED_SCORERS.get(cfg.scorer)
    closed = closed().fit(e_tr["e"], y_tr).calibrate(e_va["e"], y_va) if closed else None
    blocks = open_blocks(
        net, emb, closed.predict_proba(emb["e"]) if closed else softmax(emb["logits"], axis=1), fblocks=fblocks
    )
    # read only for a scorer that takes them (the summary says when they went unused)
    oblocks = outlier_blocks(net, *outliers) if outliers is not None and takes_outliers(cfg.open_scorer) else None
    ogroups = None if oblocks is None else outlier_groups(*outliers)  # which prompts / photographs they came from
    opn = OpenSetScorer(
        method=cfg.open_scorer,
        false_unknown_rate=cfg.false_unknown_rate,
        random_state=cfg.seed,
        temperature=cfg.open_temperature,
        outlier_components=cfg.outlier_components,
    ).fit(select_rows(blocks, tr), y_tr, select_rows(blocks, cal), outliers=oblocks)
    image = store.image_rows()[sub_rows] if store.has_crops else None
    view = store.view_index()[sub_rows]
    if image is not None:  # images are judged on their crops' mean score: a threshold of their own
        opn.set_image_threshold(select_rows(blocks, cal), image[cal])
    # a scorer on stored features only: the threshold from out-of-fold scores over every training prompt
    oof = set_out_of_fold_threshold(
        opn,
        blocks,
        y_sub,
        tr,
        cal,
        row_groups(store, sub_rows),
        image=image,
        outliers=oblocks,
        outlier_groups=ogroups,
        seed=cfg.seed,
        views=view > 0,
    )
    # the validation share flagged at the final threshold, of the validation images as given
    record_validation_flagged(opn, blocks, cal & (view == 0), image)
    # attribution beside the networks: a linear discriminant of the stored statistics on the same rows
    disc = ClassPosterior().fit(blocks["features"][tr], y_tr) if cfg.discriminant > 0 else None
    state = states[0]
    summary = {
        "epochs_run": state["epoch"],
        "best_epoch": state["best_epoch"],
        "selected_on": cfg.select_on,
        "best_val": _best_val(state),
        "history": state["history"],
        "train_rows": int(tr.sum()),
        "final": cfg.final,  # the test split trained too: no held-out figures on this store
        "val_rows": int(va.sum()),
        "calibration_rows": int(cal.sum()),
        "train_views": store.attrs.get("train_views"),
        "view_prob": cfg.view_prob if store.has_views else None,
        "consistency": cfg.consistency if store.has_views and cfg.view_prob > 0 else None,
        "scorer_rows": cfg.scorer_rows if store.has_views else None,
        "discriminant": None
        if disc is None
        else {"weight": cfg.discriminant, "features": int(disc.n_features_in_), "rows": int(tr.sum())},
        "train_seconds": round(train_seconds, 2),
        "streamed": bool(feats.streaming),
        "fit_rows": {k: int(v.sum()) for k, v in fit.items()},
        "samples_per_s": round(  # rows forwarded (paired views included); a resumed older state: clean rows
            sum(h.get("rows", epoch_rows) for st in states for h in st["history"])
            / max(sum(h["seconds"] for st in states for h in st["history"]), 1e-9),
            1,
        ),
        "post_hoc_prototypes": [known[k] for k in added],
        "unknown_labels": unknown,
        "real_class": store.attrs.get("real_class"),
        "store": str(store.path),
        "store_id": store.attrs.get("store_id"),
        "builtin_encoder": bool(fcfg.vae.builtin),
        "device": str(dev),
        "open_scorer": {
            "method": cfg.open_scorer,
            "components": list(opn.components_),
            "temperature": cfg.open_temperature,
            "threshold": opn.threshold_,
            "false_unknown_rate": cfg.false_unknown_rate,
            "val_flagged": opn.val_flagged_,
            "image_threshold": getattr(opn, "image_threshold_", None),
            "fallback": opn.fallback_ or None,
            "threshold_from": oof or {"source": "validation"},
        },
        "outliers": None
        if outliers is None
        else {
            "store": str(outliers[0].path),
            "rows": len(outliers[1]),
            "used": int(opn.n_outliers_),
            "classes": int(opn.n_outlier_classes_),
            "kinds": int(opn.n_outlier_kinds_),
            "views": outliers[0].has_views,
        },
    }
    if len(states) > 1:  # an ensemble: the fields above are its first member's, these every member's
        summary["members"] = [
            {"seed": st["seed"], "epochs_run": st["epoch"], "best_epoch": st["best_epoch"], "best_val": _best_val(st)}
            for st in states
        ]
    # the photographs the open-set scorer fitted as outliers: evaluate says when an outside source holds them
    photos = photo_keys(ogroups) if ogroups is not None else ()
    meta = {"training": summary}
    bundle = Bundle(
        net.cpu(), cfg, fcfg, known, meta, closed, opn, trained_images, disc, photos if len(photos) else None
    )
    save_bundle(out_dir, bundle)
    return summary
