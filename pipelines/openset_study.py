"""Leave-one-generator-out: how well would a model flag a generator it never saw?

    leakstore openset-study STORE.zarr --out runs/logo

For each known non-real generator g: train without g (a short schedule, `--epochs`), then score
g's rows as unknown against the other classes' rows with every open-set scorer (model/openset.py),
each fitted on the fold's training rows and standardised and thresholded on its known validation
rows. The validation AUROC (g's validation rows vs known validation rows) chooses the scorer; the
test AUROC (test rows, never used for a choice) is what it is worth. Writes study.json,
study.parquet (one row per generator and scorer), histograms and report.html in --out.
Folds are kept in --out/folds/<g>: a rerun reuses every finished fold.
"""
from __future__ import annotations

import html
import json
import time
from pathlib import Path

import numpy as np

from leakstore.errors import InputError
from leakstore.store import FeatureStore
from model.checkpoint import load_bundle
from model.config import ModelConfig
from model.metrics import open_set
from model.openset import BASE_SCORERS, BLOCKS, FUSED, OpenSetScorer, components, select_rows
from model.predict import predict
from model.train import train


def _fold(store: FeatureStore, run: Path, cfg: ModelConfig, held: list[str], device: str, progress: bool) -> Path:
    """Train the fold's model unless a finished one with the same settings is there."""
    meta = run / "model.json"
    if meta.exists():
        m = json.loads(meta.read_text())
        if (m.get("training", {}).get("unknown_labels") == held and m.get("model_config") == cfg.to_dict()
                and m.get("featurize_hash") == store.config.hash):
            return run
    train(store.path, run, cfg, unknown_labels=held, device=device, overwrite=True, progress=progress)
    return run


def _scorers_for(blocks: dict) -> list[str]:
    have = [b for b in BLOCKS if blocks.get(b) is not None]
    names = [n for n, (blk, _, _) in BASE_SCORERS.items() if blk in have]
    return names + [n for n in FUSED if len(components(n, have)) > 1]


def study_fold(store: FeatureStore, run: Path, g: str, extra_unknown: list[str], device: str = "cpu") -> list[dict]:
    """Every open-set scorer on one fold: AUROC etc. on validation and test rows."""
    b = load_bundle(run, device)
    feats = store.load(b.feature_names)
    p = predict(b, feats, device)
    names = store.class_names
    to_model = np.array([b.class_names.index(n) if n in b.class_names else -1 for n in names])
    y = to_model[feats.labels]
    held = feats.labels == names.index(g)
    other_unknown = np.isin(feats.labels, [names.index(u) for u in extra_unknown])
    known = (y >= 0) & ~other_unknown
    rows, blocks = [], p["blocks"]
    tr, va, te = (known & (feats.splits == s) for s in (0, 1, 2))
    for name in _scorers_for(blocks):
        sc = OpenSetScorer(method=name, false_unknown_rate=b.cfg.false_unknown_rate).fit(
            select_rows(blocks, tr), y[tr], select_rows(blocks, va))
        s = sc.score_samples(blocks)
        row = {"generator": g, "scorer": name, "components": "+".join(sc.components_)}
        for split, code in (("val", 1), ("test", 2)):
            k, u = known & (feats.splits == code), held & (feats.splits == code)
            o = open_set(s[k], s[u])
            row.update({f"{split}_auroc": o.get("auroc", np.nan), f"{split}_fpr95": o.get("fpr_at_95tpr", np.nan),
                        f"{split}_known_flagged": float((s[k] < sc.threshold_).mean()) if k.any() else np.nan,
                        f"{split}_unknown_flagged": float((s[u] < sc.threshold_).mean()) if u.any() else np.nan,
                        f"n_{split}_unknown": int(u.sum())})
        row["_scores"] = (s[te], s[held & (feats.splits == 2)])
        rows.append(row)
    return rows


def openset_study(store_path, out, cfg: ModelConfig | None = None, *, epochs: int = 10, generators=None,
                  unknown_labels=(), device: str = "cpu", progress: bool = True) -> dict:
    import pandas as pd

    from leakstore.device import resolve_device
    device = str(resolve_device(device))
    store = FeatureStore.open(store_path)
    cfg = (cfg or ModelConfig()).replace(epochs=epochs)
    real = store.attrs.get("real_class")
    extra = list(unknown_labels)
    gens = list(generators) if generators else [n for n in store.class_names if n != real and n not in extra]
    bad = [g for g in gens if g not in store.class_names or g == real]
    if bad or len(gens) < 1:
        raise InputError(f"--generators {bad or gens}: give non-real classes of {store.path} "
                         f"({', '.join(n for n in store.class_names if n != real)})")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0, rows = time.perf_counter(), []
    for i, g in enumerate(gens):
        if progress:
            print(f"[{i + 1}/{len(gens)}] without {g}", flush=True)
        run = _fold(store, out / "folds" / g, cfg, [g] + extra, device, progress)
        rows += study_fold(store, run, g, extra, device)
    scores = {(r["generator"], r["scorer"]): r.pop("_scores") for r in rows}
    df = pd.DataFrame(rows)
    table = (df.groupby("scorer", sort=False)
               .agg(mean_val_auroc=("val_auroc", "mean"), min_val_auroc=("val_auroc", "min"),
                    mean_test_auroc=("test_auroc", "mean"), min_test_auroc=("test_auroc", "min"),
                    mean_test_fpr95=("test_fpr95", "mean"), test_known_flagged=("test_known_flagged", "mean"))
               .reset_index())
    # the choice: best mean validation AUROC, ties broken by the minimum; never the test split
    best = table.sort_values(["mean_val_auroc", "min_val_auroc"], ascending=False).iloc[0]["scorer"]
    summary = {"store": str(store.path), "generators": gens, "also_held_out": extra, "epochs": epochs,
               "model_config": cfg.to_dict(), "chosen_on": "mean validation AUROC", "chosen": best,
               "scorers": table.to_dict(orient="records"), "seconds": round(time.perf_counter() - t0, 1),
               "builtin_encoder": bool(store.config.vae.builtin)}
    df.to_parquet(out / "study.parquet", index=False)
    (out / "study.json").write_text(json.dumps(summary, indent=2, default=float))
    _report(out, summary, df, scores, best)
    summary["report"] = str(out / "report.html")
    return summary


def _report(out: Path, summary: dict, df, scores: dict, best: str) -> None:
    from pipelines.report import _img, plot_open_scores
    gens = summary["generators"]
    auc = {g: df[(df.generator == g) & (df.scorer == best)].test_auroc.iloc[0] for g in gens}
    plot_open_scores(out / "histograms.png", {f"without {g}: AUROC {auc[g]:.3f}": scores[(g, best)] for g in gens},
                     best, known_label="known (test)")
    head = "".join(f"<th>{html.escape(g)}</th>" for g in gens)
    body = ""
    for r in summary["scorers"]:
        per = "".join(f"<td>{df[(df.generator == g) & (df.scorer == r['scorer'])].test_auroc.iloc[0]:.3f}</td>" for g in gens)
        mark = ' style="font-weight:bold"' if r["scorer"] == best else ""
        body += (f"<tr{mark}><td>{html.escape(r['scorer'])}</td><td>{r['mean_val_auroc']:.3f}</td><td>{r['min_val_auroc']:.3f}</td>"
                 f"<td>{r['mean_test_auroc']:.3f}</td><td>{r['min_test_auroc']:.3f}</td><td>{r['mean_test_fpr95']:.3f}</td>"
                 f"<td>{r['test_known_flagged']:.3f}</td>{per}</tr>")
    warn = ('<p class="warn">BUILT-IN DEMO ENCODER (random weights, not a real VAE): these numbers show the pipeline '
            'runs, not how well generators are told apart.</p>' if summary["builtin_encoder"] else "")
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>leakstore open-set study</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;color:#222}}
table{{border-collapse:collapse;margin:1em 0;font-size:90%}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}
td:first-child,th:first-child{{text-align:left}}img{{max-width:100%}}.warn{{background:#fee;padding:.6em;border:1px solid #c66}}</style>
</head><body><h1>Leave-one-generator-out open-set study</h1>{warn}
<p>Store <code>{html.escape(summary['store'])}</code>; each generator held out in turn, a model trained for
{summary['epochs']} epochs without it; its rows scored as unknown against the known classes' rows.
Chosen on the mean <b>validation</b> AUROC: <b>{html.escape(best)}</b>. Test columns are never used for a choice.</p>
<table><tr><th>scorer</th><th>mean val AUROC</th><th>min val</th><th>mean test AUROC</th><th>min test</th>
<th>test FPR@95%TPR</th><th>known test flagged</th>{head}</tr>{body}</table>
<p>Per-generator columns: test AUROC. Known test flagged: share of known test images below the unknown threshold (called unknown),
calibrated on validation data (asked: {summary['model_config']['false_unknown_rate']:.0%}).</p>
{_img(out / 'histograms.png')}</body></html>"""
    (out / "report.html").write_text(page)
