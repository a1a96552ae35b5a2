"""Set a model's unknown threshold on the user's own known images, as they reach the user.

    calibrate("runs/final", ["mine.zarr", "mine-jpeg75.zarr"], rate=0.05)

Training sets the threshold out of fold over its training prompts: it holds for images like the
training images. Images that reach an analyst re-encoded, resized or of other subjects are flagged
more or less often than asked (on RealGen-dev's validation prompts, 21 % of the known images re-saved
as JPEG 75 where 5 % was asked: docs/results). Here stores of known images the model did not train on,
featurized with the model's config (as given, and with `--view` as they arrive), are scored, and the
threshold moves to the asked quantile of their open scores: whole images for a crop model, every
store's images pooled. What it was set on, its interval over the stores' groups (prompts: an image
and its re-saved copy are one group; over images where there are too few groups) and the threshold
it replaced are recorded in model.json (`calibration`); `score` and `evaluate` say so. Images the
networks trained on are left out (their scores are in-sample); so are training views (training
material) and other classes' images.

The open scores themselves do not change, so every AUROC stays as it was: only which images are called
"unknown" does.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from leakstore.api.predictor import Predictor
from leakstore.config import DEFAULT_DEVICE
from leakstore.errors import InputError
from leakstore.model.checkpoint import image_key_of, save_bundle
from leakstore.model.metrics import group_rate_interval, group_rate_spread, resampling_units
from leakstore.model.predict import image_threshold
from leakstore.pipelines.evaluate import per_image
from leakstore.store import FeatureStore, in_split

MIN_PER_RATE = 2  # at least 2 / rate images: the asked quantile then lies above the lowest score


def known_image_scores(predictor: Predictor, store_path, split: str = "all") -> dict:
    """The open scores of a store's images of the model's classes (of `split`, or every split; training
    views left out; whole images for a crop model): {"score", "group", "sha256"}, one entry an image."""
    bundle = predictor.bundle
    store = FeatureStore.open(store_path)
    predictor.check_store(store)
    feats = store.load(())  # labels only: the features of the rows kept are read below
    known = np.array([n in bundle.class_names for n in store.class_names] + [False])[feats.labels]
    keep = known & (feats.labels >= 0) & (store.view_index()[feats.rows] == 0)
    keep &= in_split(feats.splits, split)
    if not keep.any():
        return {"score": np.zeros(0), "group": np.zeros(0, dtype=object), "sha256": np.zeros(0, dtype=object)}
    sub = store.load(predictor.inputs, rows=feats.rows[keep])
    p = predictor.predict(sub)
    if store.has_crops:  # whole images, as evaluate judges them
        sub, p, _ = per_image(predictor, store, sub, p)
    rows, score = sub.rows, p["open_score"]
    as_text = lambda a: np.array([str(x) for x in a], dtype=object)  # noqa: E731 (zarr's string dtypes)
    return {
        "score": np.asarray(score, float),
        "group": as_text(store.read("group")[rows]),
        "sha256": as_text(store.read("sha256")[rows]),
    }


def calibrate(
    run_dir, stores: list, rate: float | None = None, out=None, device: str = DEFAULT_DEVICE, split: str = "all"
) -> dict:
    """Move the model's unknown threshold (in RUN, or in a copy of it at `out`) to the `rate` quantile
    (default: the model's --false-unknown-rate) of the open scores of the known images in `stores` (of
    `split`, or all). Returns what was done, as recorded in model.json's `calibration`."""
    run_dir = Path(run_dir)
    if not stores:
        raise InputError("calibrate needs at least one store of known images")
    if out is not None and Path(out).exists() and any(Path(out).iterdir()):
        raise InputError(f"{out} exists and is not empty: name a new folder for the calibrated copy")
    predictor = Predictor.load(run_dir, device)
    bundle = predictor.bundle
    if bundle.open is None:
        raise InputError(f"{run_dir} has no unknown flag (open-set scorer) to calibrate")
    rate = bundle.cfg.false_unknown_rate if rate is None else float(rate)
    if not 0 < rate <= 0.5:
        raise InputError(f"--rate must lie in (0, 0.5], got {rate}")
    got = [known_image_scores(predictor, s, split) for s in stores]
    z, groups, sha = (np.concatenate([g[k] for g in got]) for k in ("score", "group", "sha256"))
    learned = (
        np.isin(image_key_of(sha), bundle.trained_images)
        if bundle.trained_images is not None
        else np.zeros(len(z), bool)
    )
    z, groups = z[~learned], groups[~learned]
    need = int(np.ceil(MIN_PER_RATE / rate))
    if len(z) < need:
        learned_note = f" ({int(learned.sum())} more were training images, left out)" if learned.any() else ""
        raise InputError(
            f"{len(z)} known images in {', '.join(map(str, stores))}{learned_note} are too few to set a threshold "
            f"that flags {rate:.1%} of them (at least {need}): add images of the model's classes, or a higher --rate"
        )
    previous = image_threshold(bundle)
    threshold = float(np.quantile(z, rate))
    units, over = resampling_units(groups)  # prompts where there are enough, else images
    lo, hi = group_rate_interval(z < threshold, units)
    if hasattr(bundle.open, "image_threshold_"):  # a crop model: the whole image's threshold
        bundle.open.image_threshold_ = threshold
    else:
        bundle.open.offset_ = threshold
    earlier = bundle.meta.get("calibration") or {}
    info = {
        "stores": [str(s) for s in stores],
        "split": split,
        "images": int(len(z)),
        "ci_over": over,
        "left_out_trained": int(learned.sum()),
        "rate": rate,
        "threshold": threshold,
        "previous": previous,
        "training_threshold": earlier.get("training_threshold", previous),
        "flagged_before": float((z < previous).mean()),
        "flag_rate_ci": [lo, hi],
        # prompt by prompt, where the interval is over prompts (with fewer, one image's flag is 0 or 1)
        "flag_rate_per_group": list(group_rate_spread(z < threshold, units)) if len(set(units)) < len(z) else None,
    }
    bundle.meta["calibration"] = info
    target = run_dir if out is None else Path(out)
    if out is not None:  # the run as it is (networks, companion, training state), then the new threshold
        shutil.copytree(run_dir, target, dirs_exist_ok=True)
    save_bundle(target, bundle)
    return {**info, "run": str(target)}
