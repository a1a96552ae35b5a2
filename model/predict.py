"""Apply a trained bundle to features: embeddings, attribution, unknown-generator flag, explanations.
Inference only: nothing here imports training."""

from __future__ import annotations

import numpy as np
import torch
from scipy.special import softmax

from leakstore.device import resolve_device
from leakstore.features import FeatureBatch
from leakstore.model.checkpoint import Bundle
from leakstore.model.net import ProtoLeakNet, read_input


def gated(out: dict[str, torch.Tensor]) -> np.ndarray:
    """The embedding every scorer sees: z * sqrt(g), so that squared Euclidean distances
    equal the prototype head's gate-weighted distances. (B, D) float64."""
    return (out["z"] * out["g"].sqrt()).double().cpu().numpy()


def batch_dict(feats: FeatureBatch, idx, names, device) -> dict[str, torch.Tensor]:
    """{name: feats[name][idx]} on `device` for the named features (idx: a slice or an index tensor)."""
    out = {}
    for n in names:
        x = feats.get(n)
        if x is None:
            continue
        i = idx.to(x.device) if torch.is_tensor(idx) else idx
        out[n] = x[i].to(device, non_blocking=True)
    return out


@torch.inference_mode()
def embed_all(net: ProtoLeakNet, feats: FeatureBatch, device, batch: int = 256) -> dict[str, np.ndarray]:
    """Embeddings, gates, attention and prototype logits for every row, in eval mode, on the
    store's stored (seeded) noise: the same computation for known and unknown images."""
    net.eval()
    outs: dict[str, list] = {"e": [], "z": [], "g": [], "a": [], "logits": []}
    for s in range(0, len(feats), batch):
        o = net(batch_dict(feats, slice(s, s + batch), net.inputs, device))
        outs["e"].append(gated(o))
        for k in ("z", "g", "a", "logits"):
            outs[k].append(o[k].float().cpu().numpy())
    return {k: np.concatenate(v) if v else np.zeros((0,)) for k, v in outs.items()}


@torch.inference_mode()
def embed_rows(net: ProtoLeakNet, source, idx: np.ndarray, device, batch: int = 256) -> tuple[dict, dict]:
    """`embed_all` for positions `idx` of a row source (model/rows.py: in memory or streamed from the
    store), with each row's feature-derived open-set blocks (`feature_blocks`): (embeddings, blocks),
    in the order of `idx`. Only these per-row summaries are kept, never the features."""
    net.eval()
    outs: dict[str, list] = {"e": [], "z": [], "g": [], "a": [], "logits": []}
    blocks: list[dict] = []
    seen = []
    for pos, feats, local in source.batches(torch.as_tensor(np.asarray(idx, dtype=np.int64)), batch):
        o = net(batch_dict(feats, local, net.inputs, device))
        outs["e"].append(gated(o))
        for k in ("z", "g", "a", "logits"):
            outs[k].append(o[k].float().cpu().numpy())
        blocks.append(feature_blocks(net, feats.subset(local.cpu().numpy()).to("cpu")))
        seen.append(pos.numpy())
    if not seen:
        return {k: np.zeros((0,)) for k in outs}, {}
    # rows as they came (a streamed store gives them chunk by chunk) -> the order of idx
    rank = np.argsort(np.argsort(np.asarray(idx), kind="stable"), kind="stable")
    perm = np.argsort(np.concatenate(seen), kind="stable")[rank]
    emb = {k: np.concatenate(v)[perm] for k, v in outs.items()}
    fb = {k: (None if blocks[0][k] is None else np.concatenate([b[k] for b in blocks])[perm]) for k in blocks[0]}
    return emb, fb


def feature_blocks(net: ProtoLeakNet, feats: FeatureBatch) -> dict[str, np.ndarray | None]:
    """The open-set blocks read from the features themselves (channel statistics of the least noised
    latent, and the stored features the scorers read), for every row of `feats` (on the CPU)."""
    return stored_feature_blocks(net.cfg, feats)


def stored_feature_blocks(cfg, feats: FeatureBatch) -> dict[str, np.ndarray | None]:
    """`feature_blocks` for a model config `cfg` (ModelConfig) before or without a network: the
    blocks depend on the stored features and the config only."""
    from leakstore.model.openset import FEATURE_PARTS, STORED_BLOCKS, channel_stats

    out = {
        "stats": channel_stats(feats["latents"]),
        **{
            k: read_input(cfg, k, feats[k].double()).numpy() if feats.get(k) is not None else None
            for k in STORED_BLOCKS
        },
    }
    # the parts the model reads (not e.g. the residual of a --no-residual model, which its scoring never loads)
    parts = [
        out[k].reshape(len(out[k]), -1)
        for k in FEATURE_PARTS
        if out.get(k) is not None and (k == "stats" or cfg.uses(k))
    ]
    out["features"] = np.concatenate(parts, axis=1)
    return out


def prototype_distances(net: ProtoLeakNet, emb: dict) -> torch.Tensor:
    """(N, K, M) gate-weighted squared distances to every prototype, on the net's device."""
    dev = net.prototypes.device
    with torch.no_grad():
        return net.distances(torch.as_tensor(emb["z"], device=dev), torch.as_tensor(emb["g"], device=dev))


def open_blocks(
    net: ProtoLeakNet,
    emb: dict,
    proba: np.ndarray,
    feats: FeatureBatch | None = None,
    dist: torch.Tensor | None = None,
    fblocks: dict | None = None,
) -> dict[str, np.ndarray]:
    """The inputs of the open-set scorers (model/openset.py), for every row of `feats` (or of the
    precomputed `fblocks`, from `embed_rows`)."""
    d = prototype_distances(net, emb) if dist is None else dist
    mask = net.proto_mask.bool()
    return {
        "embedding": emb["e"],
        "proba": proba,
        "prototypes": d[:, mask].double().cpu().numpy(),
        **(fblocks if fblocks is not None else feature_blocks(net, feats)),
    }


@torch.inference_mode()
def predict(bundle: Bundle, feats: FeatureBatch, device: str | torch.device = "cpu", top: int = 3) -> dict:
    """Per row: probabilities over the model's classes (`attribution`: the closed-set scorer, calibrated,
    with the discriminant where the model has one; `network_proba` without it), the predicted class,
    the open-set score (higher: more like a known generator) and unknown flag, the `top` nearest
    prototypes, attention over timesteps and the strongest gate dimensions."""
    device = resolve_device(str(device))
    net = bundle.net.to(device)
    emb = embed_all(net, feats, device)
    net_proba = bundle.closed.predict_proba(emb["e"]) if bundle.closed is not None else softmax(emb["logits"], axis=1)
    d = prototype_distances(net, emb)  # (N, K, M)
    blocks = open_blocks(net, emb, net_proba, feats, d)  # the open-set scorers read the networks' probabilities
    proba = attribution(bundle, net_proba, blocks["features"])
    if bundle.open is None:
        score, thr = np.full(len(feats), np.nan), -np.inf
    else:
        score, thr = bundle.open.score_samples(blocks), bundle.open.threshold_
    flat = d.masked_fill(net.proto_mask[None] == 0, float("inf")).flatten(1)
    k = min(top, int(net.proto_mask.sum()))
    nd, ni = flat.topk(k, dim=1, largest=False)
    m = d.shape[2]
    names = bundle.class_names
    nearest = [
        [f"{names[int(i) // m]}#{int(i) % m}:{float(v):.3g}" for v, i in zip(dr, ir)]
        for dr, ir in zip(nd.cpu(), ni.cpu())
    ]
    gates = np.argsort(-emb["g"], axis=1)[:, :5]
    pred = proba.argmax(1)
    small = {}
    if bundle.small is not None:  # beside the model for images no larger than one crop (aggregate_images)
        small = companion_proba(bundle.small, feats, device)
    return {
        **small,
        "proba": proba,
        "network_proba": net_proba,
        "pred": pred,
        "pred_name": np.array([names[i] for i in pred], dtype=object),
        "confidence": proba.max(1),
        "open_score": score,
        "is_unknown": score < thr,
        "nearest_prototypes": nearest,
        "attention": emb["a"],
        "top_gates": gates,
        "embedding": emb["e"],
        "z": emb["z"],
        "g": emb["g"],
        "logits": emb["logits"],
        "blocks": blocks,
    }


def companion_proba(small: Bundle, feats: FeatureBatch, device) -> dict:
    """The companion's probabilities (`small_proba`, NaN elsewhere) of the rows that repeat a neighbour (an
    image's crops that are one window are consecutive equal rows: only they can be such an image's), and
    every row's digest (`row_digest`); the other rows are never shown to the companion."""
    digest = row_digests(feats)
    repeats = np.zeros(len(feats), dtype=bool)
    eq = digest[1:] == digest[:-1]
    repeats[1:] |= eq
    repeats[:-1] |= eq
    proba = np.full((len(feats), len(small.class_names)), np.nan)
    if repeats.any():
        proba[repeats] = predict(small, feats.subset(np.flatnonzero(repeats)), device)["proba"]
    return {"small_proba": proba, "row_digest": digest}


def row_digests(feats: FeatureBatch) -> np.ndarray:
    """(N,) a digest of each row's features: equal for the crop rows of an image that is one window."""
    import hashlib

    arrays = [np.ascontiguousarray(np.asarray(feats[n])) for n in sorted(feats.arrays)]
    out = np.empty(len(feats), dtype=object)
    for i in range(len(feats)):
        h = hashlib.blake2b(digest_size=16)
        for a in arrays:
            h.update(a[i].tobytes())
        out[i] = h.digest()
    return out


def attribution(bundle: Bundle, net_proba: np.ndarray, features: np.ndarray) -> np.ndarray:
    """(N, K) the probabilities an image is attributed by: the networks' calibrated ones, or, for a model
    with a discriminant (cfg.discriminant = w > 0), the softmax of (1 - w) log p_networks + w log p_discriminant,
    the discriminant being a linear one on the stored statistics (`features`), fitted on the known classes.
    The two err on different images (docs/results): fused, they attribute better than either alone."""
    if not bundle.fuses:
        return net_proba
    disc = bundle.discriminant.log_posterior(features)
    return softmax(fused_log_proba(net_proba, disc, bundle.cfg.discriminant), axis=1)


def fused_log_proba(net_proba: np.ndarray, disc_log_posterior: np.ndarray, w: float) -> np.ndarray:
    """(N, K) unnormalised log-probabilities of attribution at discriminant weight w."""
    return (1 - float(w)) * np.log(np.clip(net_proba, 1e-12, 1.0)) + float(w) * disc_log_posterior


def image_threshold(bundle: Bundle) -> float:
    """The open-score threshold for a whole image: set on validation images' mean crop scores when the
    model was trained on crops (`image_threshold_`), else the row threshold."""
    o = bundle.open
    if o is None:
        return -np.inf
    return float(getattr(o, "image_threshold_", o.threshold_))


def validation_flagged(bundle: Bundle) -> float | None:
    """The share of known validation images the threshold flagged: of whole images for a model trained
    on crops (`val_images_flagged_`), of rows otherwise; None for a model without one, or whose
    threshold `leakstore calibrate` moved since (the figure was the training threshold's)."""
    o = bundle.open
    if bundle.meta.get("calibration"):
        return None
    return getattr(o, "val_images_flagged_", getattr(o, "val_flagged_", None))


def asked_rate(bundle: Bundle) -> float:
    """The share of known images the threshold was set to flag: training's --false-unknown-rate, or the
    rate `leakstore calibrate` set it at on the user's images."""
    return float((bundle.meta.get("calibration") or {}).get("rate", bundle.cfg.false_unknown_rate))


def threshold_expects(bundle: Bundle) -> dict | None:
    """What training's out-of-fold threshold expects of new prompts' known images: the asked rate,
    `pooled` (its 95 % interval over many prompts) and `per_prompt` (the 10th-90th percentile of one
    prompt's rate; None for models that did not record it), to read a few prompts' flag rate against.
    None for a threshold set otherwise (on validation images), or moved since by calibrate."""
    t = (bundle.meta.get("training", {}).get("open_scorer") or {}).get("threshold_from") or {}
    if t.get("source") != "out-of-fold" or bundle.meta.get("calibration"):
        return None
    return {
        "asked": asked_rate(bundle),
        "prompts": t["groups"],
        "pooled": t["flag_rate_ci"],
        "per_prompt": t.get("flag_rate_per_group"),
    }


def aggregate_images(p: dict, image: np.ndarray, names, threshold: float) -> tuple[np.ndarray, dict]:
    """Per-row predictions of crop rows -> one prediction per image.

    `image` (N,) says which image each row is a crop of. An image's probabilities are the softmax of
    its crops' mean log-probability, its open score the crops' mean (their standard deviation is
    `open_spread`), flagged unknown below `threshold`; attention, embedding and gates are crop means,
    the nearest prototypes its first crop's; `first_row` is the position of its first crop, `companion`
    whether the model's companion (RUN/small) attributed it beside the model.
    -> (the image ids in first-seen order, the dict)."""
    from leakstore.model.images import ImageGroups

    groups = ImageGroups(image)
    mean, first = groups.mean, groups.first

    def image_proba(rows):
        return softmax(mean(np.log(np.clip(rows, 1e-12, 1.0))), axis=1)

    proba = image_proba(p["proba"])
    one = np.zeros(len(first), dtype=bool)  # the images the companion attributed beside the model
    if "small_proba" in p:  # an image whose crops are one window: half the model's, half its companion's
        digest = np.asarray(p["row_digest"], dtype=object)
        one = mean((digest == digest[first][groups.inv]).astype(float)) == 1.0
        one &= ~np.isnan(p["small_proba"][first]).any(axis=1)  # one row alone is no repeated window
        if one.any():
            own = mean(np.log(np.clip(p["proba"], 1e-12, 1.0)))[one]
            log = (own + np.log(np.clip(p["small_proba"][first[one]], 1e-12, 1.0))) / 2
            proba[one] = softmax(log, axis=1)
    score = mean(p["open_score"])
    spread = np.sqrt(np.maximum(mean(np.asarray(p["open_score"], dtype=float) ** 2) - score**2, 0.0))
    pred = proba.argmax(1)
    return groups.ids, {
        "proba": proba,
        "network_proba": image_proba(p["network_proba"]) if "network_proba" in p else proba,
        "pred": pred,
        "pred_name": np.array([names[i] for i in pred], dtype=object),
        "confidence": proba.max(1),
        "open_score": score,
        "open_spread": spread,
        "is_unknown": score < threshold,
        "crops": groups.count.astype(int),
        "first_row": first,
        "companion": one,
        "nearest_prototypes": [p["nearest_prototypes"][i] for i in first],
        "attention": mean(p["attention"]),
        "embedding": mean(p["embedding"]),
        "g": mean(p["g"]),
    }
