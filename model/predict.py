"""Apply a trained bundle to features: attribution, unknown-generator flag, explanations."""
from __future__ import annotations

import numpy as np
import torch
from scipy.special import softmax

from model.checkpoint import Bundle
from model.data import Features
from model.train import embed_all


@torch.inference_mode()
def predict(bundle: Bundle, feats: Features, device: str | torch.device = "cpu", top: int = 3) -> dict:
    """Per row: probabilities over the model's classes (closed-set scorer, calibrated), the
    predicted class, open-set log density and unknown flag, the `top` nearest prototypes,
    attention over timesteps and the strongest gate dimensions. Arrays of length N."""
    net = bundle.net.to(device)
    emb = embed_all(net, feats, device)
    proba = bundle.closed.predict_proba(emb["e"]) if bundle.closed is not None else softmax(emb["logits"], axis=1)
    logd = bundle.open.score_samples(emb["e"]) if bundle.open is not None else np.full(len(feats), np.nan)
    thr = bundle.open.threshold_ if bundle.open is not None else -np.inf
    z, g = torch.as_tensor(emb["z"], device=device), torch.as_tensor(emb["g"], device=device)
    d = net.distances(z, g).masked_fill(net.proto_mask[None] == 0, float("inf"))   # (N, K, M)
    flat = d.flatten(1)
    k = min(top, int(net.proto_mask.sum()))
    nd, ni = flat.topk(k, dim=1, largest=False)
    m = d.shape[2]
    names = bundle.class_names
    nearest = [[f"{names[int(i) // m]}#{int(i) % m}:{float(v):.3g}" for v, i in zip(dr, ir)]
               for dr, ir in zip(nd.cpu(), ni.cpu())]
    gates = np.argsort(-emb["g"], axis=1)[:, :5]
    pred = proba.argmax(1)
    return {"proba": proba, "pred": pred, "pred_name": np.array([names[i] for i in pred], dtype=object),
            "confidence": proba.max(1), "log_density": logd, "is_unknown": logd < thr,
            "nearest_prototypes": nearest, "attention": emb["a"], "top_gates": gates, "embedding": emb["e"],
            "z": emb["z"], "g": emb["g"], "logits": emb["logits"]}
