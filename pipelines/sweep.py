"""Robustness sweep in one command: the test split under each post-processing view.

    leakstore sweep runs/m1 --views jpeg:95,jpeg:75,jpeg:50,jpeg444:90,resize:0.5,blur:2 --out runs/m1/sweep

The test images (by default the test split of the store the model was trained on; or a store, a
folder or a manifest given as DATA) are featurized under every view with exactly the featurize
config recorded in the model (only the view differs), one store per view in OUT/views/, then
evaluated together: metrics.json with the robustness table, predictions, the robustness curve
and report.html in OUT. Featurizing resumes: a rerun computes only what is missing.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from leakstore.config import DEFAULT_DEVICE, DEFAULT_SWEEP_VIEWS
from leakstore.errors import InputError
from leakstore.store import Catalog, FeatureStore, is_store_input


def test_catalog(data, class_names=None) -> tuple[Catalog, str | None]:
    """The labelled clean test images of a store, one row each (its crop 0 in a store of crops), and
    the store, to evaluate the clean view from; or of image data (its test split when it has one,
    else every labelled image). `sweep` gives each image the model's crops."""
    from leakstore.featurize.datasets import build_catalog

    if is_store_input(data):
        s = FeatureStore.open(data)
        head = (s.read("crop") == 0) if s.has_crops else True  # an image, not each of its crops
        keep = np.flatnonzero((s.read("split") == 2) & (s.read("label") >= 0) & (s.view_index() == 0) & head)
        if not len(keep):
            raise InputError(f"store {data} has no labelled test rows to sweep")
        paths, groups = s.read("path")[keep], s.read("group")[keep]
        cat = Catalog(
            tuple(str(p) for p in paths),
            s.read("label")[keep].astype(np.int16),
            np.full(len(keep), 2, np.int8),
            tuple(str(g) for g in groups),
            tuple(s.class_names),
            s.attrs.get("real_class"),
            f"test split of {data}",
            str(data),
        )
        return cat, str(data)
    cat = build_catalog(data)
    keep = (cat.labels >= 0) & ((cat.splits == 2) if (cat.splits == 2).any() else True)
    idx = np.flatnonzero(keep)
    return Catalog(
        tuple(cat.paths[i] for i in idx),
        cat.labels[idx],
        np.full(len(idx), 2, np.int8),
        tuple(cat.groups[i] for i in idx),
        cat.class_names,
        cat.real_class,
        "test split" if (cat.splits == 2).any() else "every labelled image",
        str(data),
    ), None


def _slug(view: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", view).strip("-") or "none"


def sweep(
    run_dir,
    data=None,
    views=DEFAULT_SWEEP_VIEWS,
    out=None,
    *,
    device: str = DEFAULT_DEVICE,
    workers: int = -1,
    progress: bool = True,
) -> dict:
    from leakstore.config import RunOptions
    from leakstore.featurize.datasets import with_crops
    from leakstore.featurize.runner import featurize_store
    from leakstore.featurize.vae import encoder_for_config
    from leakstore.featurize.views import parse_view, view_name
    from leakstore.model.checkpoint import load_bundle
    from leakstore.pipelines.evaluate import evaluate, refuse_in_sample

    run_dir = Path(run_dir)
    bundle = load_bundle(run_dir)
    data = data or bundle.meta.get("training", {}).get("store")
    if not data:
        raise InputError(f"{run_dir}: the model does not name its training store; give the test images as DATA")
    names = [view_name(parse_view(v)) for v in views]  # validates every view before any work
    if not names:
        raise InputError("--views is empty: give e.g. " + ",".join(DEFAULT_SWEEP_VIEWS))
    cat, clean_store = test_catalog(data)
    cat = with_crops(cat, bundle.featurize.crops)  # each image on the model's crops, as evaluate judges it
    if clean_store:  # before any view is featurized
        refuse_in_sample(FeatureStore.open(clean_store), bundle)
    out = Path(out) if out else run_dir / "sweep"
    from leakstore.device import resolve_device

    encoder = encoder_for_config(bundle.featurize)
    # precision is not part of a feature's identity (rounding level): the CPU path runs fp32
    cpu = resolve_device(device).type == "cpu"
    fcfg = bundle.featurize.replace(precision="fp32") if cpu else bundle.featurize
    stores = [clean_store] if clean_store else []
    todo = names if clean_store else ["none"] + [n for n in names if n != "none"]
    for v in todo:
        if v == "none" and clean_store:
            continue
        path = out / "views" / f"{_slug(v)}.zarr"
        if progress:
            print(f"featurize {len(cat)} test images, view {v}", flush=True)
        featurize_store(
            cat, path, fcfg.replace(view=v), encoder, RunOptions(device=device, workers=workers, progress=progress)
        )
        stores.append(str(path))
    return evaluate(run_dir, stores, out, device=device, split="test")
