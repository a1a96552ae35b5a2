"""Plots and one self-contained HTML report a reviewer can open."""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np
import torch

from leakstore.fsio import atomic_path, write_text
from leakstore.pipelines.evaluate import known_scores
from leakstore.pipelines.html import img, page


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(path, cm, names, title):
    plt = _plt()
    cm = np.asarray(cm, dtype=float)
    norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.1 * len(names) + 2, 1.0 * len(names) + 1.5))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, f"{int(cm[i, j])}", ha="center", va="center", color="white" if norm[i, j] > 0.5 else "black")
    ax.set_xticks(range(len(names)), names, rotation=35, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.tight_layout()
    _save(fig, path, 110)
    plt.close(fig)


def plot_roc(path, y, proba, names, known_score=None, unknown_score=None):
    from sklearn.metrics import roc_curve

    plt = _plt()
    fig, axes = plt.subplots(
        1, 2 if unknown_score is not None and len(unknown_score) else 1, figsize=(11, 4.6), squeeze=False
    )
    ax = axes[0, 0]
    for c, n in enumerate(names):
        if (y == c).any() and (y != c).any():
            f, t, _ = roc_curve(y == c, proba[:, c])
            ax.plot(f, t, label=n)
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="closed set, one vs rest")
    ax.legend(fontsize=8)
    if axes.shape[1] > 1:
        ax = axes[0, 1]
        lo = min(known_score.min(), unknown_score.min())
        hi = max(known_score.max(), unknown_score.max())
        bins = np.linspace(lo, hi, 40)
        ax.hist(known_score, bins, alpha=0.6, density=True, label="known generators")
        ax.hist(unknown_score, bins, alpha=0.6, density=True, label="unknown generators")
        ax.set(
            xlabel="open-set score (higher: more like a known generator)",
            ylabel="density",
            title="open set: known vs unseen",
        )
        ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path, 110)
    plt.close(fig)


REACH = 3.0  # a histogram shows at most this many known spreads below the known images' 1st percentile


def score_range(known, unseen) -> tuple[float, float]:
    """(lo, hi) of an open-score histogram: the bulk, not the tail. Below the 2nd percentile of all
    scores, and below the known images' 1st percentile by more than REACH times their 1st-99th
    percentile spread, scores pile into the first bin (the caller says how many): an unseen
    generator a thousand times further out than the known images' spread would otherwise squeeze
    them into one bar."""
    known, both = np.asarray(known, float), np.r_[known, unseen].astype(float)
    lo, hi = np.percentile(both, [2, 99.8])
    if len(known):
        k_lo, k_hi = np.percentile(known, [1, 99])
        lo = max(lo, k_lo - REACH * max(k_hi - k_lo, 1e-12))
    if not hi > lo:
        hi = lo + 1.0
    return float(lo), float(hi)


def plot_open_scores(path, panels: dict, scorer: str, threshold=None, known_label: str = "known generators"):
    """One panel per unseen generator: panels {title: (known scores, its scores)}, higher = more like
    a known generator; with `threshold`, the line under which images are called unknown."""
    plt = _plt()
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(max(6.5, 4.2 * cols), 3.4 * rows), squeeze=False)
    for ax, (title, (known, unseen)) in zip(axes.flat, panels.items()):
        both = np.r_[known, unseen]
        lo, hi = score_range(known, unseen)
        bins = np.linspace(lo, hi, 35)
        ax.hist(np.clip(known, lo, hi), bins, alpha=0.6, density=True, label=known_label)
        ax.hist(np.clip(unseen, lo, hi), bins, alpha=0.6, density=True, label="unseen generator")
        if (both < lo).any():
            ax.set_xlabel(f"first bin also holds {int((both < lo).sum())} lower scores", fontsize=7)
        if threshold is not None:
            ax.axvline(threshold, color="k", ls="--", lw=1, label="unknown below")
        ax.set_title(title, fontsize=9)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.suptitle(f"open-set score '{scorer}' per unseen generator\n(higher: more like a known generator)", fontsize=9)
    fig.tight_layout()
    _save(fig, path, 100)
    plt.close(fig)


def plot_embedding(path, emb, y, unknown, names, protos=None, proto_class=None):
    """PCA map of the gated embeddings; each class's prototypes as stars in the class's colour."""
    plt = _plt()
    mu = emb.mean(0)
    _, _, vt = np.linalg.svd(emb - mu, full_matrices=False)
    p2 = (emb - mu) @ vt[:2].T
    fig, ax = plt.subplots(figsize=(7, 6))
    colour = lambda c: f"C{c % 10}"  # noqa: E731
    for c, n in enumerate(names):
        m = y == c
        ax.scatter(p2[m, 0], p2[m, 1], s=8, alpha=0.6, label=n, color=colour(c))
    if unknown.any():
        ax.scatter(p2[unknown, 0], p2[unknown, 1], s=10, marker="x", c="k", alpha=0.5, label="unknown")
    if protos is not None:
        q = (protos - mu) @ vt[:2].T
        cls = np.zeros(len(q), int) if proto_class is None else np.asarray(proto_class)
        ax.scatter(
            q[:, 0],
            q[:, 1],
            s=110,
            marker="*",
            c=[colour(c) for c in cls],
            edgecolor="k",
            linewidths=0.8,
            label="prototypes (class colour)",
        )
    ax.set(title="embedding map (PCA of gated embeddings)", xlabel="PC 1", ylabel="PC 2")
    ax.legend(fontsize=7, markerscale=2)
    fig.tight_layout()
    _save(fig, path, 110)
    plt.close(fig)


def plot_attention(path, att, y, names, timesteps):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4))
    for c, n in enumerate(names):
        if (y == c).any():
            ax.plot(range(len(timesteps)), att[y == c].mean(0), marker="o", label=n)
    ax.set_xticks(range(len(timesteps)), [str(t) for t in timesteps])
    ax.set(xlabel="timestep", ylabel="mean attention", title="temporal attention per class")
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path, 110)
    plt.close(fig)


def plot_robustness(path, rows):
    """Metrics across post-processing views: lines over the views, or bars for a single view."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(rows)), 4))
    x = np.arange(len(rows))
    metrics = (("macro_auc", "closed-set macro AUC"), ("top1", "top-1"), ("open_auroc", "open-set AUROC"))
    for i, (key, label) in enumerate(metrics):
        vals = [np.nan if r[key] is None else r[key] for r in rows]
        if len(rows) == 1:
            ax.bar(x + (i - 1) * 0.25, vals, width=0.24, label=label)
        else:
            ax.plot(x, vals, marker="o", label=label)
    ax.set_xticks(x, [r["view"] for r in rows], rotation=30, ha="right")
    ax.set(ylim=(0, 1.02), title="robustness to post-processing")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path, 110)
    plt.close(fig)


def _prototype_note(emb, y, protos, proto_class) -> str:
    """What the map cannot show: how far the prototypes lie from their class's images, in the
    full embedding, against how far the images lie from their own class centre."""
    have = [c for c in np.unique(proto_class) if (y == c).any()]
    if not have:
        return ""
    centre = {c: emb[y == c].mean(0) for c in have}
    spread = np.mean([np.linalg.norm(emb[y == c] - centre[c], axis=1).mean() for c in have])
    away = np.mean([np.linalg.norm(protos[proto_class == c] - centre[c], axis=1).mean() for c in have])
    return (
        f"Prototypes (stars) lie {away:.1f} on average from the centre of their class's test images in the full "
        f"embedding, where images lie {spread:.1f} from theirs: the head ranks classes by relative, gate-weighted "
        "distances, so prototypes need not sit inside their clusters, and the map's two axes, fitted to the "
        "images, draw them where they project, not where they are."
    )


def _fusion(summary: dict) -> str:
    """How the components are combined, for a scorer of several."""
    if len(summary.get("open_components", ())) < 2:
        return ""
    t = summary.get("open_temperature") or 0.0
    return f"; soft minimum, temperature {t:g}" if t > 0 else "; minimum"


def _sweep_hint(model: str) -> str:
    return (
        "<p>One view evaluated. How the model holds up under JPEG, resizing and blur: "
        f"<code>leakstore sweep {html.escape(model)}</code> featurizes the test split under each and "
        "evaluates them together (leakstore docs: Robustness to post-processing).</p>"
    )


def _networks(n: int) -> str:
    return f"{n} networks joined (train --members); " if n > 1 else "one network; "


def _in_sample(summary: dict) -> str:
    """A warning paragraph for judged stores whose images trained the model."""
    rows = (summary.get("in_sample") or {}).items()
    return "".join(
        f"<p class='warn'><b>In-sample:</b> {n} judged images of <code>{html.escape(st)}</code> trained this "
        "model (a re-saved or resized copy keeps its source's SHA-256): its figures there overstate what it "
        "does on new images.</p>"
        for st, n in rows
    )


def _outlier_sample(summary: dict) -> str:
    """A warning paragraph for outside stores holding the photographs the unknown flag fitted as outliers."""
    return "".join(
        f"<p class='warn'><b>In-sample outside images:</b> <code>{html.escape(st)}</code> holds {n} "
        f"photograph{'s' if n != 1 else ''} the unknown flag was fitted on as outliers "
        "(<code>make-outliers --photos</code>): its open-set figures overstate how the flag meets new "
        "photographs.</p>"
        for st, n in (summary.get("outlier_sample") or {}).items()
    )


def _calibration(summary: dict) -> str:
    """A sentence on a threshold set by `leakstore calibrate`, and a warning for judged stores that set it."""
    c = summary.get("calibration")
    if not c:
        return ""
    stores = ", ".join(f"<code>{html.escape(s)}</code>" for s in c["stores"])
    out = (
        f"<p>Unknown threshold set by <code>leakstore calibrate</code> to flag {c['rate']:.1%} of {c['images']} "
        f"known images of {stores} (it was {c['training_threshold']:.3f} after training).</p>"
    )
    return out + "".join(
        f"<p class='warn'><b>Calibrated here:</b> <code>{html.escape(st)}</code> set the unknown threshold: it "
        "was chosen on its known images, so their flag rate is no measurement of it.</p>"
        for st in summary.get("calibrated_on_judged") or ()
    )


def _final(summary: dict) -> str:
    return "; trained on its store's test split too (train --final)" if summary.get("final") else ""


def _attribution(summary: dict) -> str:
    """A sentence on what attributes images, with the networks' own macro AUC per view, for a model whose
    attribution fuses the stored statistics' discriminant with its networks."""
    w = summary.get("discriminant")
    if not w:
        return ""
    alone = ", ".join(
        f"{html.escape(str(r['view']))} {r['networks_macro_auc']:.4f}"
        for r in summary["robustness"]
        if r.get("networks_macro_auc") is not None
    )
    return (
        f"<p>Attribution: the networks' log-probabilities (weight {1 - w:.2g}) with a linear discriminant of the "
        f"stored statistics (weight {w:.2g}, train --discriminant). The networks alone: macro AUC {alone}.</p>"
    )


def write_report(out: Path, summary: dict, bundle, ex: dict) -> Path:
    names = bundle.class_names
    first = summary["views"][0]
    y, unk = ex["y"], ex["unknown"]
    plot_confusion(out / "confusion.png", first["closed"]["confusion"], names, f"confusion ({first['view']})")
    plot_roc(out / "roc.png", y[y >= 0], ex["proba"][y >= 0], names, known_scores(ex), ex["open_score"][unk])
    # prototypes live in z space; the map shows z * sqrt(g): scale them by the mean sqrt(gate)
    scale = torch.as_tensor(np.sqrt(ex["g"].mean(0)), dtype=torch.float32)
    protos = (bundle.net.prototypes.detach() * scale).reshape(-1, ex["embedding"].shape[1])
    mask = bundle.net.proto_mask.reshape(-1).bool()
    proto_class = np.repeat(np.arange(len(names)), bundle.net.proto_mask.shape[1])[mask.numpy()]
    plot_embedding(out / "embedding.png", ex["embedding"], y, unk, names, protos[mask].numpy(), proto_class)
    emb_note = _prototype_note(ex["embedding"], y, protos[mask].numpy(), proto_class)
    plot_attention(out / "attention.png", ex["attention"], y, names, bundle.featurize.timesteps)
    several = len(summary["robustness"]) > 1
    if several:  # one view: the table says it all; a chart of one point says nothing more
        plot_robustness(out / "robustness.png", summary["robustness"])
    unseen = sorted(set(ex["true"][unk]))
    if unseen:
        known = known_scores(ex)
        plot_open_scores(
            out / "open_scores.png",
            {g: (known, ex["open_score"][ex["true"] == g]) for g in unseen},
            summary["open_scorer"],
            ex["threshold"],
        )
    unseen_html = _unseen_section(out, summary, ex)
    rob = "".join(
        f"<tr><td>{html.escape(r['view'])}</td><td>{r['macro_auc']:.4f}{_ci(r.get('macro_auc_ci'))}</td>"
        f"<td>{r['top1']:.4f}</td><td>{_fmt(r['open_auroc'])}</td>"
        f"<td>{_pct(r.get('known_flagged'))}{_ci(r.get('known_flagged_ci'), pct=True)}</td></tr>"
        for r in summary["robustness"]
    )
    per = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{v:.4f}</td></tr>" for k, v in first["closed"]["per_class_auc"].items()
    )
    o = first["open"]
    if o.get("n_unknown"):
        label = {
            "auroc": "AUROC",
            "eer": "EER",
            "fpr_at_95tpr": "FPR@95%TPR",
            "overlap": "histogram overlap",
            "oscr": "OSCR",
            "unknown_flagged": "unseen flagged",
            "known_flagged": "known flagged",
        }
        ostr = (
            f"{o['n_known']} known and {o['n_unknown']} unseen images: "
            + ", ".join(f"{label[k]} {o[k]:.4f}" for k in label if isinstance(o.get(k), float))
            + "; per unseen generator: "
            + ", ".join(f"{g} {_fmt(v)}" for g, v in o.get("per_generator_auroc", {}).items())
        )
    else:
        ostr = f"{o.get('n_known', 0)} known images; no generator held out of training in this split."
    warn = (
        '<p class="warn">Features from the BUILT-IN DEMO ENCODER (random weights, not a real VAE): these numbers '
        "show the pipeline runs, not how well any generator can be attributed.</p>"
        if summary["builtin_encoder"]
        else ""
    )
    body = f"""{warn}{_in_sample(summary)}{_outlier_sample(summary)}
<p>Model <code>{html.escape(summary["model"])}</code>; encoder {html.escape(summary["encoder"])};
{_networks(summary.get("networks", 1))}inputs: {html.escape(", ".join(summary.get("inputs", [])))};
known classes: {html.escape(", ".join(names))};
held out as unknown: {html.escape(", ".join(summary["unknown_labels"]) or "none")}{_final(summary)}.</p>
{_attribution(summary)}{_calibration(summary)}
<h2>Robustness</h2><table><tr><th>view</th><th>macro AUC</th><th>top-1</th><th>open-set AUROC</th>
<th>known flagged unknown</th></tr>{rob}</table>
<p>A known image re-encoded should stay known: its row's "known flagged unknown" should stay near the asked
{first["open"]["false_unknown_rate"]["asked"]:.0%}.{_expects(summary)}{_ci_note(summary)}</p>
{img(out / "robustness.png") if several else _sweep_hint(summary["model"])}
<h2>Closed set ({html.escape(first["view"])}, {first["closed"]["n"]} test images)</h2>
<p>macro AUC {first["closed"]["macro_auc"]:.4f}, top-1 {first["closed"]["top1"]:.4f},
balanced accuracy {first["closed"]["balanced_accuracy"]:.4f}</p>
<table><tr><th>class</th><th>AUC</th></tr>{per}</table>{img(out / "confusion.png")}{img(out / "roc.png")}
<h2>Open set: unseen generators</h2>
<p>Scorer <b>{html.escape(summary["open_scorer"])}</b>
({html.escape(" + ".join(summary["open_components"]))}{_fusion(summary)}).
{_rate_line(o.get("false_unknown_rate"))}</p>
<p>{html.escape(ostr)}</p>
{img(out / "open_scores.png") if unseen else "<p>No held-out generator in this store: nothing to flag.</p>"}
{unseen_html}<h2>Embedding and attention</h2>{img(out / "embedding.png")}<p>{html.escape(emb_note)}</p>
{img(out / "attention.png")}
"""
    write_text(out / "report.html", page("leakstore evaluation", body))
    return out / "report.html"


def _unseen_section(out: Path, summary: dict, ex: dict) -> str:
    """Images of generators from outside the training store (evaluate --unseen)."""
    u = summary.get("unseen")
    if not u:
        return ""
    known = known_scores(ex)
    new = {g: v for g, v in u["per_generator"].items() if not v["known_class"]}
    if new:
        plot_open_scores(
            out / "unseen_scores.png",
            {f"{g}: AUROC {_fmt(v['auroc'])}": (known, ex["unseen_scores"][g]) for g, v in new.items()},
            summary["open_scorer"],
            ex["threshold"],
            known_label="known (this split)",
        )
    views = list(u.get("mean_auroc_by_view") or {})
    rows = "".join(
        f"<tr><td>{html.escape(g)}</td><td>{html.escape(Path(v['store']).name)}</td><td>{v['n']}</td>"
        f"<td>{_fmt(v.get('auroc'))}{_ci(v.get('auroc_ci'))}</td>"
        + "".join(f"<td>{_fmt(v.get('auroc_by_view', {}).get(k))}</td>" for k in views)
        + f"<td>{_fmt(v.get('fpr_at_95tpr'))}</td><td>{v['flagged']:.1%}</td>"
        f"<td>{html.escape(v['called_most'])} ({v['called_most_share']:.0%})</td>"
        f"<td>{'' if v.get('called_correctly') is None else format(v['called_correctly'], '.1%')}</td></tr>"
        for g, v in u["per_generator"].items()
    )
    mean = "" if u["mean_auroc"] is None else f" Mean AUROC {u['mean_auroc']:.4f}, minimum {u['min_auroc']:.4f}."
    if views:
        mean += (
            " The AUROC columns after the first set each label against the known images of a further store "
            "(the same images re-saved or resized): outside images that are JPEGs, judged against clean known "
            "images, are partly told apart by their format."
        )
    return (
        "<h3>Images from outside the training store</h3><p>Each label's rows scored against the "
        f"{html.escape(u['known_rows'])}."
        f"{mean} A label the model knows reports how often it is still called so.</p>"
        "<table><tr><th>label</th><th>store</th><th>images</th><th>AUROC</th>"
        + "".join(f"<th>AUROC against {html.escape(k)}</th>" for k in views)
        + "<th>FPR@95%TPR</th><th>flagged unknown</th>"
        f"<th>called most</th><th>called correctly</th></tr>{rows}</table>"
        + (img(out / "unseen_scores.png") if new else "")
    )


def _rate_line(r) -> str:
    if not r:
        return ""
    got = [f"{k} {v:.1%}" for k, v in r.items() if k not in ("asked", "validation") and v is not None]
    val = "" if r.get("validation") is None else f", on validation {r['validation']:.1%}"
    return f"Known images called unknown: asked {r['asked']:.1%}{val}" + (f", on {', '.join(got)}" if got else "") + "."


def _expects(summary: dict) -> str:
    """' Out of fold over the N training prompts ...' when training's threshold says what to expect."""
    t = summary.get("threshold_expects")
    if not t:
        return ""
    lo, hi = t["pooled"]
    per = f", {t['per_prompt'][0]:.1%}-{t['per_prompt'][1]:.1%} one prompt at a time" if t["per_prompt"] else ""
    return (
        f" Out of fold over the {t['prompts']} training prompts, the rate to expect on new prompts:"
        f" {lo:.1%}-{hi:.1%} (95 % interval){per}: the rate of a few prompts strays that far."
    )


def _ci_note(summary: dict) -> str:
    """' Small figures: 95 % bootstrap intervals over images ...' when the summary has intervals."""
    if not summary.get("ci"):
        return ""
    return f" Small figures: {html.escape(summary['ci'])}."


def _ci(ci, pct: bool = False) -> str:
    """A 95 % interval under its figure, small; '' without one."""
    if not ci:
        return ""
    lo, hi = (f"{x:.1%}" for x in ci) if pct else (f"{x:.3f}" for x in ci)
    return f'<br><small class="ci">{lo}-{hi}</small>'


def _pct(v) -> str:
    return "—" if v is None else f"{v:.1%}"


def _fmt(v) -> str:
    return "—" if v is None else f"{v:.4f}"


def _save(fig, path, dpi: int) -> None:
    """A figure as a PNG, whole or absent (written under a temporary name, then renamed)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")


# ---------------------------------------------------------------------------- score: verdicts and provenance
PROVENANCE_NOTE = (
    "What the files' own metadata claims, beside the signal's verdict. A valid C2PA manifest binds its claim to "
    "whoever signed it (a signer not on a trust list is named as such); IPTC/XMP, PNG text chunks and EXIF are "
    "written by whoever last saved the file and are trivially forged or stripped, so a missing claim is no evidence. "
    "A conflict (a camera claim on an image the signal attributes to a generator, a generator's claim on one it "
    "calls real, or a C2PA manifest that fails validation) is what to look at first."
)
LISTED = 200  # rows listed per table of the score report


def plot_agreement(path, df) -> None:
    """Verdicts per predicted class, split by what the metadata says: agrees, conflicts, no claim."""
    plt = _plt()
    classes = list(df.pred.value_counts().index)
    parts = {
        "metadata agrees": (df.meta_agrees == True).fillna(False),  # noqa: E712
        "metadata conflicts": (df.meta_agrees == False).fillna(False),  # noqa: E712
        "no comparable claim": df.meta_agrees.isna(),
    }
    colours = {"metadata agrees": "#4c9a5b", "metadata conflicts": "#d1495b", "no comparable claim": "#bbbbbb"}
    fig, ax = plt.subplots(figsize=(max(5.0, 0.7 * len(classes) + 3), 3.6))
    bottom = np.zeros(len(classes))
    for name, mask in parts.items():
        n = np.array([int((mask & (df.pred == c)).sum()) for c in classes])
        ax.bar(range(len(classes)), n, bottom=bottom, color=colours[name], label=name)
        bottom += n
    ax.set_xticks(range(len(classes)), classes, rotation=30, ha="right")
    ax.set_ylabel("images")
    ax.set_title("Verdicts, and what the files' metadata says")
    ax.legend(frameon=False, fontsize=8)
    _save(fig, path, 110)


def _cell(v) -> str:
    import pandas as pd

    return "" if v is None or v is pd.NA or (isinstance(v, float) and v != v) else str(v)


def _rows_table(df, cols: list[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_cell(v))}</td>" for v in r) + "</tr>"
        for r in df[cols].head(LISTED).itertuples(index=False)
    )
    more = f"<p>{len(df) - LISTED} more in the Parquet file.</p>" if len(df) > LISTED else ""
    return f"<table><tr>{head}</tr>{body}</table>{more}"


def write_score_report(parquet: Path, out: Path, summary: dict) -> Path:
    """One HTML page for a score output: counts, verdicts by class against the metadata, the files whose
    metadata conflicts with the verdict (first), the claims by source, malformed metadata blocks."""
    import pandas as pd

    from leakstore.api.predictor import STORE_PROVENANCE
    from leakstore.pipelines.score import conflicts

    cols = [
        "path",
        "status",
        "pred",
        "confidence",
        "is_unknown",
        "meta_claim",
        "meta_source",
        "c2pa_valid",
        "meta_agrees",
        "meta_error",
        "meta_detail",
    ]
    df = pd.read_parquet(parquet, columns=cols)
    ok = df[df.status == "ok"]
    predicted = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{v}</td></tr>" for k, v in summary["predicted"].items())
    body = (
        f"<p>Model <code>{html.escape(str(summary.get('model', '')))}</code>; predictions "
        f"<code>{html.escape(str(parquet))}</code>: {summary['rows']} inputs, {summary['scored']} scored, "
        f"{summary['failed']} failed, {summary['unknown']} called an unknown generator.</p>"
        f"<table><tr><th>verdict</th><th>images</th></tr>{predicted}</table>"
    )
    stored = (df.meta_detail == STORE_PROVENANCE).all() if len(df) else True
    body += "<h2>Provenance: what the files' metadata claims</h2>"
    if stored:
        body += "<p>Scored from a feature store: the files' metadata was not read (score the image files).</p>"
    else:
        bad = df[conflicts(df)]
        body += f"<p>{html.escape(PROVENANCE_NOTE)}</p>"
        body += f"<h3>Conflicts ({len(bad)})</h3>"
        body += (
            _rows_table(bad, ["path", "pred", "meta_claim", "meta_source", "c2pa_valid", "meta_error"])
            if len(bad)
            else "<p>None: no claim contradicts its verdict and every C2PA manifest present validates.</p>"
        )
        if len(ok):
            plot_agreement(out.with_suffix(".agreement.png"), ok)
            body += img(out.with_suffix(".agreement.png"))
        claimed = df[df.meta_source != ""]
        by_source = claimed.groupby("meta_source").meta_claim.agg(
            ["size", lambda s: ", ".join(s.value_counts().index[:5])]
        )
        rows = "".join(
            f"<tr><td>{html.escape(s)}</td><td>{n}</td><td>{html.escape(top)}</td></tr>"
            for s, (n, top) in by_source.iterrows()
        )
        body += (
            f"<h3>Claims by source ({len(claimed)} of {len(df)} files carry one)</h3>"
            f"<table><tr><th>source</th><th>files</th><th>most common claims</th></tr>{rows}</table>"
        )
        errors = df[df.meta_error != ""]
        if len(errors):
            body += f"<h3>Malformed or unverifiable metadata ({len(errors)})</h3>"
            body += _rows_table(errors, ["path", "meta_source", "meta_error"])
    write_text(out, page("leakstore scores", body))
    return out
