"""The `leakstore` command line: thin typer commands, each calling one library function."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from leakstore.api.predictor import STABILITY_VIEWS
from leakstore.config import (
    BATCH_CPU,
    BATCH_CUDA,
    BETA_SCHEDULES,
    CODECS,
    DEFAULT_DECODER_STEPS,
    DEFAULT_DEMO_SCENES,
    DEFAULT_DEMO_WORKERS,
    DEFAULT_OUTLIER_DECODERS,
    DEFAULT_OUTLIER_PER_PHOTO,
    DEFAULT_OUTLIER_SEED,
    DEFAULT_OUTLIER_SIZE,
    DEFAULT_REAL_LABEL,
    DEFAULT_STREAM,
    DEFAULT_STREAM_BUFFER,
    DEFAULT_STUDY_EPOCHS,
    DEFAULT_SWEEP_VIEWS,
    DEFAULT_VAE,
    DEFAULT_VIEW_POLICY,
    PRECISIONS,
    RESIZE_POLICIES,
    STREAM_MODES,
    FeaturizeConfig,
    RunOptions,
    ScheduleConfig,
    defaults,
)
from leakstore.errors import ConfigFieldError, InputError, Interrupted, LeakstoreError
from leakstore.model.config import (
    BACKBONES,
    OPEN_SCORERS,
    OUTLIER_OPEN_SCORER,
    SCORER_ROWS,
    SCORERS,
    TEMPORAL,
    ModelConfig,
    default_open_scorer,
)

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Attribute AI-generated images to their generator from diffusion signal leaks.",
)


def _choices(name: str, values, extra=()) -> type[Enum]:
    """A typer choice enum built from a config tuple (one list of names, never a copy)."""
    return Enum(name, {v.replace("-", "_").replace("+", "_"): v for v in (*extra, *values)}, type=str)


ResizePolicy = _choices("ResizePolicy", RESIZE_POLICIES)
Schedule = _choices("Schedule", BETA_SCHEDULES)
Precision = _choices("Precision", PRECISIONS, extra=("auto",))
Codec = _choices("Codec", CODECS)
Backbone = _choices("Backbone", BACKBONES)
Temporal = _choices("Temporal", TEMPORAL)
OpenScorer = _choices("OpenScorer", OPEN_SCORERS)
OUTLIERS_HELP = (
    "A store of images no known generator made (leakstore make-outliers, then featurize with this store's "
    "options; training views are optional there): 'other' classes for the lda open-set scorers, "
    "--outlier-components per kind of outlier (docs: Open set)."
)
Scorer = _choices("Scorer", SCORERS)
ScorerRows = _choices("ScorerRows", SCORER_ROWS)
Split = _choices("Split", ("test", "val", "val+test", "train", "all"))
Stream = _choices("Stream", STREAM_MODES)

FD = defaults(FeaturizeConfig)  # featurize defaults: FeaturizeConfig's fields
RD = defaults(RunOptions)  # how a featurize run goes
MD = defaults(ModelConfig)  # training defaults: ModelConfig's fields
SD = defaults(ScheduleConfig)
SHARD_DEFAULT = "/".join(map(str, RD["shard"]))
# config fields whose command-line flag has another name (every other field's flag is --field-name)
FLAGS = {
    "spectrum_bins": "--pixel-spectrum",
    "noise_bins": "--noise-spectrum",
    "use_residual": "--residual",
    "use_periodicity": "--periodicity",
    "drop_jpeg_grid": "--drop-jpeg-grid",
    "beta_start": "--beta-start",
}
# train and openset-study options named otherwise than the ModelConfig field they set
MODEL_OPTIONS = {"residual": "use_residual", "periodicity": "use_periodicity", "jpeg_grid": "drop_jpeg_grid"}


def flag_of(field: str) -> str:
    """The command-line flag that sets config field `field`."""
    return FLAGS.get(field, "--" + field.replace("_", "-"))


def _model_config(options: dict, **override) -> ModelConfig:
    """ModelConfig from a command's options (its locals()): every option named like a field, or
    renamed in MODEL_OPTIONS, sets that field; choices give their value. Nothing is copied by hand."""
    fields = {f.name for f in dataclasses.fields(ModelConfig)}
    kw = {}
    for name, value in options.items():
        field = MODEL_OPTIONS.get(name, name)
        if field in fields and field != "extra":
            kw[field] = value.value if isinstance(value, Enum) else value
    return ModelConfig(**{**kw, **override})


DEVICE_HELP = "auto (CUDA when visible, else the CPU), cpu, cuda, cuda:N."
THREADS_HELP = (
    "CPU threads for torch in this process (env LEAKSTORE_THREADS; default: one per core, idle threads "
    "sleeping, so a busy machine slows them without stalling them; docs: Speed)."
)
# help panels, so that --help reads in groups
P_IN, P_FEAT, P_VIEW, P_RUN, P_OUT = "Inputs", "Features", "Post-processing views", "Execution", "Output"
P_MODEL, P_TRAIN, P_OPEN = "Network", "Training", "Scorers and the unknown flag"


def _fail(e: Exception | str, code: int = 2):
    typer.echo(f"error: {e}", err=True)
    raise typer.Exit(code)


@contextmanager
def _guard(on_interrupt: str, kept=None, rerun: str = "rerun the same command"):
    """One line, no traceback: a LeakstoreError exits 2; an OS error (a full disk, a read-only folder,
    a vanished mount) exits 1 saying what could not be written and what is kept (`kept()`, a
    sentence); Ctrl-C exits 130 saying what was kept."""
    try:
        yield
    except Interrupted as e:
        typer.echo(f"{e}", err=True)
        raise typer.Exit(130) from None
    except ConfigFieldError as e:  # a config's field, in the words of the command line: its flag
        _fail(e.flagged(flag_of(e.field)))
    except LeakstoreError as e:
        _fail(e)
    except KeyboardInterrupt:
        typer.echo(f"interrupted: {on_interrupt}", err=True)
        raise typer.Exit(130) from None
    except OSError as e:
        from leakstore.fsio import is_write_error, write_error

        if not is_write_error(e):
            _fail(f"{e.filename or ''}{': ' if e.filename else ''}{e.strerror or e}", 1)
        try:
            note = kept() if kept else ""
        except Exception:  # the store or folder itself may be what failed
            note = ""
        _fail(write_error(e, note, rerun), 1)


C2PA_TRUST_HELP = (
    "A PEM file of the C2PA signing roots you trust (a trust list you downloaded): a manifest signed under one "
    "of them reads 'signer trusted'; without it every signer is named as not on a trust list (env "
    "LEAKSTORE_C2PA_TRUST, which dask workers on another machine need set)."
)


def _c2pa_trust(path: Path | None) -> None:
    """Check the trust-anchor file and hand it to every process that reads metadata (local workers inherit it)."""
    if path is None:
        return
    from leakstore.featurize.provenance import C2PA_TRUST_ENV, c2pa_trust_anchors

    c2pa_trust_anchors(path)
    os.environ[C2PA_TRUST_ENV] = str(path.resolve())


def _store_kept(store: Path):
    """What a featurize run left in STORE, as a sentence (for the one-line error)."""

    def kept() -> str:
        from leakstore.store import DONE, FAILED, FeatureStore

        st = FeatureStore.open(store).status()
        return f"{int(((st == DONE) | (st == FAILED)).sum()):,} of {len(st):,} images are in the store {store}."

    return kept


def _parse_shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise InputError(f"--shard {text!r}: write it as i/n, e.g. 0/4 for the first of four shards") from None
    return i, n


def _print_report(rep, as_json: bool, crops: int = 1) -> None:
    d = rep.to_dict()
    if as_json:
        typer.echo(json.dumps(d, indent=2))
        return
    typer.echo(f"store {d['store']}  (config {d['config_hash']}, shard {d['shard']}, {d['device']})")
    what = "images" if crops == 1 else f"rows ({d['processed'] // crops} images x {crops} crops)"
    typer.echo(
        f"  {d['processed']} {what} processed in {d['seconds']:.1f} s ({d['images_per_s']} "
        f"{'img' if crops == 1 else 'rows'}/s); "
        f"{d['done']} done, {d['failed']} failed, {d['already_done']} already done before this run"
    )
    if d["builtin_encoder"]:
        typer.echo("  NOTE: built with the BUILT-IN DEMO ENCODER (random weights, not a real VAE)")
    if d["failed_in_store"] > d["failed"]:
        typer.echo(f"  {d['failed_in_store']} rows of this store failed in all (see leakstore inspect {d['store']})")
    for f in d["failures"][:10]:
        typer.echo(f"  failed: {f['path']}: {f['error']}")
    if len(d["failures"]) > 10:
        typer.echo(f"  ... and {len(d['failures']) - 10} more (leakstore inspect {d['store']} --failures)")


@app.command()
def featurize(
    data: Annotated[
        Path,
        typer.Argument(
            metavar="DATA", help="Class folders, a manifest (.csv/.parquet) or a WILD folder with Split.json."
        ),
    ],
    store: Annotated[Path, typer.Argument(metavar="STORE", help="Output Zarr store (a folder).")],
    vae: Annotated[
        str,
        typer.Option(
            rich_help_panel=P_IN,
            help="Preset (sd15, sd21, sdxl, sd3, flux1, flux2, taesd, taesdxl, taesd3, taef1, taef2), 'demo' "
            "(built-in random encoder), a hub id, a local diffusers folder or a weights file.",
        ),
    ] = DEFAULT_VAE,
    vae_subfolder: Annotated[
        str, typer.Option(rich_help_panel=P_IN, help="Subfolder of a hub id or folder holding the VAE.")
    ] = "",
    scaling_factor: Annotated[
        float | None, typer.Option(rich_help_panel=P_IN, help="Override the VAE's latent scaling factor.")
    ] = None,
    shift_factor: Annotated[
        float | None, typer.Option(rich_help_panel=P_IN, help="Override the VAE's latent shift factor.")
    ] = None,
    real_label: Annotated[
        str, typer.Option(rich_help_panel=P_IN, help="Name of the real class's folder or label.")
    ] = DEFAULT_REAL_LABEL,
    min_side: Annotated[
        int, typer.Option(min=1, rich_help_panel=P_IN, help="Images with a shorter side below this fail.")
    ] = FD["min_side"],
    max_pixels: Annotated[
        int,
        typer.Option(
            min=1,
            rich_help_panel=P_IN,
            help="Images with more pixels fail before decoding (the decompression-bomb guard; PIL's own limit is off).",
        ),
    ] = RD["max_pixels"],
    timesteps: Annotated[
        str, typer.Option(rich_help_panel=P_FEAT, help="Forward-diffusion timesteps, comma-separated.")
    ] = ",".join(map(str, FD["timesteps"])),
    resolution: Annotated[int, typer.Option(min=16, rich_help_panel=P_FEAT, help="Square input side in pixels.")] = FD[
        "resolution"
    ],
    resize_policy: Annotated[
        ResizePolicy, typer.Option(rich_help_panel=P_FEAT, help="How images reach the resolution.")
    ] = FD["resize_policy"],
    schedule: Annotated[
        Schedule,
        typer.Option(rich_help_panel=P_FEAT, help="Beta schedule (SD: scaled_linear; the reference code: linear)."),
    ] = SD["beta_schedule"],
    beta_start: Annotated[
        float, typer.Option(min=0.0, max=1.0, rich_help_panel=P_FEAT, help="First beta of the noise schedule.")
    ] = SD["beta_start"],
    beta_end: Annotated[
        float, typer.Option(min=0.0, max=1.0, rich_help_panel=P_FEAT, help="Last beta of the noise schedule.")
    ] = SD["beta_end"],
    sigma_normalize: Annotated[
        bool, typer.Option(metavar="", rich_help_panel=P_FEAT, help="Divide z_t by sigma_t, as the reference's option.")
    ] = FD["sigma_normalize"],
    fft_size: Annotated[
        int, typer.Option(min=1, rich_help_panel=P_FEAT, help="Keep the lowest k x k FFT frequencies.")
    ] = FD["fft_size"],
    residual: Annotated[
        bool,
        typer.Option(
            metavar="",
            rich_help_panel=P_FEAT,
            help="Also store the reconstruction residual x - D(E(x)) (needs the VAE's decoder; a decoder and a "
            "second encoder pass per image). --no-residual: latents only.",
        ),
    ] = FD["residual_bins"] > 0,
    residual_bins: Annotated[
        int,
        typer.Option(
            min=1, max=64, rich_help_panel=P_FEAT, help="Radial frequency bins of the residual's power spectrum."
        ),
    ] = FD["residual_bins"],
    period: Annotated[
        int,
        typer.Option(
            min=0,
            max=64,
            rich_help_panel=P_FEAT,
            help="Also store the pixel periodicity profile: where in a P-pixel period pixel gradients are strong "
            "(upsampling and block traces). 0: off.",
        ),
    ] = FD["period"],
    pixel_spectrum: Annotated[
        int,
        typer.Option(
            min=0,
            max=64,
            rich_help_panel=P_FEAT,
            help="Also store the pixel spectrum's shape along each axis in this many bands (resampling kernels, "
            "upsampling decoders; read by the open-set scorers). 0: off.",
        ),
    ] = FD["spectrum_bins"],
    noise_spectrum: Annotated[
        int,
        typer.Option(
            min=0,
            max=32,
            rich_help_panel=P_FEAT,
            help="Also store the noise residual's 2-D power spectrum (image minus its 3x3 mean) in this many bands a "
            "side, 4, 8, 16 or 32 (upsampling and decoder fingerprints; read by the network and the lda "
            "open-set scorer). 0: off.",
        ),
    ] = FD["noise_bins"],
    cooccurrence: Annotated[
        int,
        typer.Option(
            min=0,
            max=8,
            rich_help_panel=P_FEAT,
            help="Also store residual co-occurrences: neighbouring pixel differences rounded and clipped to [-T, T] "
            "(1: down, flat or up), counted in pairs, with colour and texture statistics (decoder and upsampler "
            "traces; read by the statistics' discriminant, not the network). 0: off.",
        ),
    ] = FD["cooccurrence"],
    crops: Annotated[
        int,
        typer.Option(
            min=1,
            max=64,
            rich_help_panel=P_FEAT,
            help="Crops per image (1, 4, 9, 16, ...: a g x g grid of native-pixel windows of --resolution), one row "
            "each; evaluation and scoring judge each image on all of its crops.",
        ),
    ] = FD["crops"],
    seed: Annotated[
        int,
        typer.Option(rich_help_panel=P_FEAT, help="Noise seed (combined with each image's SHA-256) and split seed."),
    ] = FD["seed"],
    view: Annotated[
        list[str] | None,
        typer.Option(
            metavar="VIEW",
            rich_help_panel=P_VIEW,
            help="Post-processing before the VAE: jpeg:75, jpeg444:90 (no colour subsampling), webp:80, resize:0.5, "
            "crop:0.8, blur:1.5, noise:0.02, grayscale; repeat or join with '+'.",
        ),
    ] = None,
    train_views: Annotated[
        int,
        typer.Option(
            min=0,
            max=64,
            rich_help_panel=P_VIEW,
            help="Also store this many post-processed views of every training and validation image (extra rows; test "
            "rows stay clean). Training samples them (train --view-prob).",
        ),
    ] = 0,
    view_policy: Annotated[
        str,
        typer.Option(
            rich_help_panel=P_VIEW,
            help="Ranges the training views are drawn from, applied in real-life order (resize, blur, noise, then "
            "one compression).",
        ),
    ] = DEFAULT_VIEW_POLICY,
    device: Annotated[str, typer.Option(rich_help_panel=P_RUN, help=DEVICE_HELP)] = RD["device"],
    threads: Annotated[int | None, typer.Option(min=1, rich_help_panel=P_RUN, help=THREADS_HELP)] = None,
    precision: Annotated[
        Precision, typer.Option(rich_help_panel=P_RUN, help="Encoder precision; auto: bf16 on CUDA, fp32 on CPU.")
    ] = "auto",
    batch_size: Annotated[
        int,
        typer.Option(
            min=0,
            rich_help_panel=P_RUN,
            help=f"Images per device batch (0: {BATCH_CUDA} on CUDA, {BATCH_CPU} on a CPU).",
        ),
    ] = RD["batch_size"],
    workers: Annotated[
        int,
        typer.Option(
            min=-1,
            rich_help_panel=P_RUN,
            help="Decode processes of this featurizing process (-1: auto, 0: decode in the main process).",
        ),
    ] = RD["workers"],
    cluster: Annotated[
        int | None,
        typer.Option(
            min=1,
            rich_help_panel=P_RUN,
            help="Featurize on a local dask cluster of this many worker processes (one task per chunk).",
        ),
    ] = None,
    scheduler: Annotated[
        str | None,
        typer.Option(
            rich_help_panel=P_RUN,
            help="Featurize on an existing dask cluster, e.g. tcp://host:8786 (workers: `dask worker`, one per GPU).",
        ),
    ] = None,
    compile: Annotated[
        bool | None,
        typer.Option(
            "--compile/--no-compile",
            metavar="",
            rich_help_panel=P_RUN,
            help="torch.compile the encoder (default: on CUDA).",
        ),
    ] = RD["compile"],
    compile_mode: Annotated[
        str,
        typer.Option(
            rich_help_panel=P_RUN,
            help="torch.compile mode (max-autotune-no-cudagraphs compiles for minutes, cached on disk afterwards; "
            "see docs, Speed).",
        ),
    ] = RD["compile_mode"],
    shard: Annotated[
        str, typer.Option(rich_help_panel=P_RUN, help="i/n: this process fills chunks k with k % n == i.")
    ] = SHARD_DEFAULT,
    chunk_size: Annotated[
        int,
        typer.Option(min=1, rich_help_panel=P_OUT, help="Images per Zarr chunk (the unit of writing and resuming)."),
    ] = RD["chunk_size"],
    codec: Annotated[Codec, typer.Option(rich_help_panel=P_OUT, help="Blosc codec for the float arrays.")] = RD[
        "codec"
    ],
    overwrite: Annotated[
        bool,
        typer.Option(
            metavar="",
            rich_help_panel=P_OUT,
            help="Replace an existing store made with another config (only a leakstore store is ever removed).",
        ),
    ] = RD["overwrite"],
    strict: Annotated[
        bool, typer.Option(metavar="", rich_help_panel=P_OUT, help="Exit with code 1 when any image failed.")
    ] = False,
    as_json: Annotated[
        bool, typer.Option("--json", metavar="", rich_help_panel=P_OUT, help="Print the run report as JSON.")
    ] = False,
    progress: Annotated[bool, typer.Option(metavar="", rich_help_panel=P_OUT, help="Show a progress bar.")] = RD[
        "progress"
    ],
):
    """Featurize images once: VAE latents, forward diffusion, FFT spectra, the reconstruction residual
    (unless --no-residual) and pixel cues -> a chunked Zarr store.

    Rerun the same command to resume an interrupted run."""
    with _guard("finished chunks are in the store; rerun the same command to resume", _store_kept(store)):
        from leakstore.device import set_threads
        from leakstore.featurize.api import featurize as run
        from leakstore.featurize.api import parse_timesteps, prepare

        set_threads(threads)
        opts = RunOptions(
            device=device,
            batch_size=batch_size,
            workers=workers,
            compile=compile,
            compile_mode=compile_mode,
            chunk_size=chunk_size,
            codec=codec.value,
            shard=_parse_shard(shard),
            max_pixels=max_pixels,
            overwrite=overwrite,
            progress=progress and not as_json,
        )
        if (cluster or scheduler) and shard != SHARD_DEFAULT:
            raise InputError(
                "--shard splits work between processes you start yourself; with --cluster or "
                "--scheduler dask does that: drop --shard"
            )
        go = run
        if cluster or scheduler:
            from leakstore.pipelines.featurize_dask import featurize_on_dask

            def go(data, store, opts, **kw):
                catalog, encoder, cfg = prepare(data, **kw)
                return featurize_on_dask(catalog, store, cfg, encoder, opts, cluster=cluster, scheduler=scheduler)

        rep = go(
            data,
            store,
            vae=vae,
            vae_subfolder=vae_subfolder,
            scaling_factor=scaling_factor,
            shift_factor=shift_factor,
            real_label=real_label,
            split_seed=seed,
            opts=opts,
            train_views=train_views,
            view_policy=view_policy,
            resolution=resolution,
            timesteps=parse_timesteps(timesteps),
            resize_policy=resize_policy.value,
            schedule=ScheduleConfig(schedule.value, beta_start, beta_end),
            sigma_normalize=sigma_normalize,
            fft_size=fft_size,
            seed=seed,
            view=view,
            min_side=min_side,
            precision=None if precision.value == "auto" else precision.value,
            residual_bins=residual_bins if residual else 0,
            period=period,
            spectrum_bins=pixel_spectrum,
            noise_bins=noise_spectrum,
            cooccurrence=cooccurrence,
            crops=crops,
            device=device,
        )
    _print_report(rep, as_json, crops)
    if strict and rep.failed_in_store:
        raise typer.Exit(1)


@app.command()
def explain(
    image: Annotated[Path, typer.Argument(metavar="IMAGE", help="One image file.")],
    run_dir: Annotated[Path, typer.Argument(metavar="RUN_DIR", help="A trained model directory.")],
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = RD["device"],
    c2pa_trust: Annotated[Path | None, typer.Option(metavar="PEM", help=C2PA_TRUST_HELP)] = None,
    as_json: Annotated[bool, typer.Option("--json", metavar="", help="Machine-readable output.")] = False,
):
    """One image for case notes: the verdict with each crop's scores, and what the file's own metadata
    claims (C2PA, IPTC/XMP, PNG text, EXIF) beside it."""
    with _guard("nothing was written"):
        from leakstore.api.predictor import Predictor

        _c2pa_trust(c2pa_trust)

        e = Predictor.load(run_dir, device).explain(str(image))
    if as_json:
        typer.echo(json.dumps(e, indent=2, default=str))
        return
    v = e["verdict"]
    typer.echo(f"{e['path']}  (sha256 {v.get('sha256') or 'n/a'})")
    if v["status"] != "ok":
        typer.echo(f"  signal: not scored: {v['error']}")
    else:
        typer.echo(
            f"  signal: {v['pred']}  (nearest generator {v['nearest_generator']}, confidence {v['confidence']:.3f}; "
            f"open score {v['open_score']:.3f} against the unknown threshold {e['unknown_threshold']:.3f}, "
            f"{e['open_scorer']})"
        )
        crops = e["crops"]
        if e.get("companion"):  # one window: its crops are one computation, shown once
            crops = crops[:1]
        for c in crops:
            top = ", ".join(f"{k} {p:.2f}" for k, p in c["top_classes"].items())
            name = f"crop {c['crop']}" if len(crops) > 1 or len(e["crops"]) == 1 else f"crops 0-{len(e['crops']) - 1}"
            typer.echo(f"    {name}: {c['nearest_generator']:<24} open {c['open_score']:8.3f}   {top}")
        if e.get("companion"):
            top = ", ".join(f"{k} {p:.2f}" for k, p in e["companion"].items())
            typer.echo(
                f"    companion (RUN/small): {top}   (the image is no larger than one crop: its probabilities "
                "average the crops' and the companion's)"
            )
    m = e["provenance"]
    if m is None:
        typer.echo("  metadata: the file could not be read")
        return
    claim = f"{m['claim']} ({m['source']}, {m['kind'] or 'no kind'})" if m["source"] else "none"
    typer.echo(f"  metadata claim: {claim}")
    if m["c2pa_valid"] is not None:
        typer.echo(f"  C2PA signature: {'valid' if m['c2pa_valid'] else 'does NOT validate'}")
    if m["detail"]:
        typer.echo(f"  metadata detail: {m['detail']}")
    if m["error"]:
        typer.echo(f"  metadata error: {m['error']}")
    agrees = v.get("meta_agrees")
    if agrees is not None:
        typer.echo(f"  claim vs signal: {'agree' if agrees else 'CONFLICT: look at this file'}")
    typer.echo("  (metadata other than a valid C2PA manifest is trivially forged or stripped: docs/model-card.md)")


@app.command()
def inspect(
    store: Annotated[Path, typer.Argument(metavar="STORE", help="A featurized store.")],
    as_json: Annotated[bool, typer.Option("--json", metavar="", help="Machine-readable output.")] = False,
    failures: Annotated[bool, typer.Option(metavar="", help="List every failed row.")] = False,
):
    """Summarise a store: config, counts per class and split, failures."""
    with _guard("nothing was changed"):
        from leakstore.store import FAILED, FeatureStore

        s = FeatureStore.open(store)
        d = s.summary()
        if failures:
            st = s.status()
            rows = [int(r) for r in (st == FAILED).nonzero()[0]]
            errs, paths = s.read("error"), s.read("path")
            d["failures"] = [{"row": r, "path": str(paths[r]), "error": str(errs[r])} for r in rows]
    if as_json:
        typer.echo(json.dumps(d, indent=2))
        return
    cfg = d["featurize_config"]
    vae = cfg["vae"]
    typer.echo(
        f"{d['path']}: leakstore feature store, schema v{d['schema_version']} (leakstore {d['package_version']})"
    )
    if d["builtin_encoder"]:
        typer.echo("  NOTE: BUILT-IN DEMO ENCODER (random weights, not a real VAE)")
    typer.echo(
        f"  config {d['config_hash']}: VAE {vae['name']} ({vae['kind']}, {vae['latent_channels']} ch, "
        f"x{vae['scaling_factor']} -{vae['shift_factor']}, {vae['revision']})"
    )
    sch = cfg["schedule"]
    typer.echo(
        f"  {cfg['resolution']} px {cfg['resize_policy']}/{cfg['resample']}, timesteps {cfg['timesteps']} "
        f"({sch['beta_schedule']} {sch['beta_start']}-{sch['beta_end']}), sigma-normalise "
        f"{cfg['sigma_normalize']}, FFT {cfg['fft_size']}x{cfg['fft_size']}, seed {cfg['seed']}, view {cfg['view']}, "
        f"precision {cfg['precision']}"
    )
    if cfg.get("residual_bins"):
        typer.echo(f"  reconstruction residual: {cfg['residual_bins']} radial bins, decoder {cfg['decoder']}")
    if cfg.get("period"):
        typer.echo(f"  pixel periodicity: gradient phase profile modulo {cfg['period']}")
    if cfg.get("spectrum_bins"):
        typer.echo(f"  pixel spectrum: {cfg['spectrum_bins']} bands per axis")
    if cfg.get("noise_bins"):
        typer.echo(f"  noise spectrum: {cfg['noise_bins']} x {cfg['noise_bins']} bands")
    if cfg.get("cooccurrence"):
        t = cfg["cooccurrence"]
        typer.echo(f"  residual co-occurrences: differences clipped to [-{t}, {t}], colour and texture statistics")
    st = d["status"]
    if cfg.get("crops", 1) > 1:
        typer.echo(f"  {cfg['crops']} native-pixel crops per image, one row each (counts below are rows)")
        counted = f"{d['n_rows']} rows ({d['n_images']} images x {cfg['crops']} crops)"
    else:
        counted = f"{d['n_images']} images"
    typer.echo(
        f"  {counted}: {st['done']} done, {st['failed']} failed, {st['pending']} pending (splits: {d['split_source']})"
    )
    if d.get("train_views"):
        typer.echo(
            f"  training views: {d['view_rows']} rows, {d['train_views']['n']} per training/validation image, "
            f"drawn from {d['train_views']['policy']} (counts below include them)"
        )
    w = max([24] + [len(n) + 2 for n in d["per_class"]])
    typer.echo(f"  {'class':<{w}}{'train':>7}{'val':>7}{'test':>7}{'failed':>8}")
    for name, c in d["per_class"].items():
        typer.echo(f"  {name:<{w}}{c['train']:>7}{c['val']:>7}{c['test']:>7}{c['failed']:>8}")
    for f in d.get("failures", d["first_failures"]):
        typer.echo(f"  failed: {f['path']}: {f['error']}")
    if st["pending"]:
        typer.echo("  the store is incomplete: rerun the featurize command to finish it")


@app.command()
def train(
    store: Annotated[Path, typer.Argument(metavar="STORE", help="A featurized store.")],
    out: Annotated[Path, typer.Option("--out", help="Run directory for the model.")],
    unknown_labels: Annotated[
        list[str] | None,
        typer.Option(
            metavar="NAME[,NAME]",
            rich_help_panel=P_IN,
            help="Classes held out of training (unseen generators for the open-set test); repeat or comma-separate.",
        ),
    ] = None,
    residual: Annotated[
        bool,
        typer.Option(metavar="", rich_help_panel=P_IN, help="Use the store's reconstruction residual when it has one."),
    ] = MD["use_residual"],
    periodicity: Annotated[
        bool,
        typer.Option(
            metavar="", rich_help_panel=P_IN, help="Use the store's pixel periodicity profile when it has one."
        ),
    ] = MD["use_periodicity"],
    jpeg_grid: Annotated[
        bool,
        typer.Option(
            "--drop-jpeg-grid/--keep-jpeg-grid",
            rich_help_panel=P_IN,
            help="Read the periodicity profile without the phases JPEG's 8x8 block grid prints on.",
        ),
    ] = MD["drop_jpeg_grid"],
    backbone: Annotated[
        Backbone,
        typer.Option(
            rich_help_panel=P_MODEL,
            help="Per-timestep backbone: small CNN, ResNet-18 layout, or latent-patch transformer.",
        ),
    ] = MD["backbone"],
    temporal: Annotated[
        Temporal,
        typer.Option(
            rich_help_panel=P_MODEL,
            help="Pooling over timesteps: attention pooling (the reference) or a transformer block first.",
        ),
    ] = MD["temporal"],
    embed_dim: Annotated[
        int, typer.Option(min=4, rich_help_panel=P_MODEL, help="Embedding size (a multiple of 4).")
    ] = MD["embed_dim"],
    width: Annotated[int, typer.Option(min=1, rich_help_panel=P_MODEL, help="Backbone width.")] = MD["width"],
    protos_per_class: Annotated[
        int, typer.Option(min=1, rich_help_panel=P_MODEL, help="Prototypes per class in the head.")
    ] = MD["protos_per_class"],
    members: Annotated[
        int,
        typer.Option(
            min=1,
            rich_help_panel=P_MODEL,
            help="Train this many networks (seeds SEED, SEED+1, ...) and join their embeddings: about that many "
            "times the training time, better unknown-generator flags (docs: Open set).",
        ),
    ] = MD["members"],
    epochs: Annotated[
        int,
        typer.Option(
            min=1,
            rich_help_panel=P_TRAIN,
            help="Most training epochs (training stops earlier after --patience epochs without validation gain).",
        ),
    ] = MD["epochs"],
    patience: Annotated[
        int,
        typer.Option(
            min=1,
            rich_help_panel=P_TRAIN,
            help="Early stopping: stop after this many epochs without a better validation macro AUC.",
        ),
    ] = MD["patience"],
    batch_size: Annotated[int, typer.Option(min=1, rich_help_panel=P_TRAIN, help="Training batch size.")] = MD[
        "batch_size"
    ],
    epoch_samples: Annotated[
        int,
        typer.Option(
            min=0,
            rich_help_panel=P_TRAIN,
            help="Samples per epoch (validation, early stopping and the saved state come once per epoch): 0 for "
            "every training row; for stores of millions of rows, e.g. 200000.",
        ),
    ] = MD["epoch_samples"],
    lr: Annotated[float, typer.Option(min=0.0, rich_help_panel=P_TRAIN, help="AdamW learning rate.")] = MD["lr"],
    renoise: Annotated[
        bool,
        typer.Option(
            metavar="",
            rich_help_panel=P_TRAIN,
            help="Fresh noise from latent0 every batch (as the reference redraws it).",
        ),
    ] = MD["renoise"],
    view_prob: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=1.0,
            rich_help_panel=P_TRAIN,
            help="Per image and epoch, the chance of training on one of its post-processed views (stores featurized "
            "with --train-views); 0 trains as if the store had none (scorers and threshold included).",
        ),
    ] = MD["view_prob"],
    consistency: Annotated[
        float,
        typer.Option(
            min=0.0,
            rich_help_panel=P_TRAIN,
            help="> 0: each training image trains as itself and, beside it, as one of its post-processed views, "
            "whose class distribution is pulled toward the clean one's (this weight); 0 draws one or the other "
            "(--view-prob).",
        ),
    ] = MD["consistency"],
    final: Annotated[
        bool,
        typer.Option(
            "--final",
            metavar="",
            rich_help_panel=P_TRAIN,
            help="Train on the store's test split too: the model to deploy, once a model trained without it has "
            "been evaluated. More prompts and images to learn from; no held-out figures: evaluate refuses this "
            "store's test split.",
        ),
    ] = MD["final"],
    seed: Annotated[int, typer.Option(rich_help_panel=P_TRAIN, help="Training seed (weights, batches, noise).")] = MD[
        "seed"
    ],
    scorer: Annotated[Scorer, typer.Option(rich_help_panel=P_OPEN, help="Closed-set scorer on embeddings.")] = MD[
        "scorer"
    ],
    discriminant: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=1.0,
            rich_help_panel=P_OPEN,
            help="Attribution: this weight on a linear discriminant of the stored statistics, the rest on the "
            "networks (log-probabilities); 0: the networks alone. --resume on a finished run refits it.",
        ),
    ] = MD["discriminant"],
    open_scorer: Annotated[
        OpenScorer | None,
        typer.Option(
            rich_help_panel=P_OPEN,
            show_default=False,
            help="Open-set scorer for 'unknown generator' (docs: Open set; compare them with leakstore "
            f"openset-study). Default: {MD['open_scorer']}; {OUTLIER_OPEN_SCORER} with --outliers.",
        ),
    ] = None,
    scorer_rows: Annotated[
        ScorerRows,
        typer.Option(
            rich_help_panel=P_OPEN,
            help="Rows the closed- and open-set scorers are fitted and calibrated on, for stores with training "
            "views: all; clean only; or clean-fit: fitted on clean rows, the open-set scales and threshold "
            "calibrated on all validation rows, views included (docs: Robustness).",
        ),
    ] = MD["scorer_rows"],
    false_unknown_rate: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=0.5,
            rich_help_panel=P_OPEN,
            help="Share of known validation images the unknown threshold may reject.",
        ),
    ] = MD["false_unknown_rate"],
    open_temperature: Annotated[
        float,
        typer.Option(
            min=0.0,
            rich_help_panel=P_OPEN,
            help="Fused open-set scorers combine their components by a soft minimum of this temperature, in tail "
            "units; 0 is the plain minimum.",
        ),
    ] = MD["open_temperature"],
    outlier_components: Annotated[
        int,
        typer.Option(
            min=1,
            rich_help_panel=P_OPEN,
            help="With --outliers: each kind of outlier is fitted as this many classes of the lda scorer (k-means "
            "on its rows); 1: one class per kind.",
        ),
    ] = MD["outlier_components"],
    outliers: Annotated[Path | None, typer.Option(metavar="STORE", rich_help_panel=P_OPEN, help=OUTLIERS_HELP)] = None,
    device: Annotated[str, typer.Option(rich_help_panel=P_RUN, help=DEVICE_HELP)] = RD["device"],
    threads: Annotated[int | None, typer.Option(min=1, rich_help_panel=P_RUN, help=THREADS_HELP)] = None,
    stream: Annotated[
        Stream,
        typer.Option(
            rich_help_panel=P_RUN,
            help="Read the store chunk by chunk through a shuffle buffer (on), load it into memory (off), or stream "
            "when its features would take more than a quarter of the RAM (auto).",
        ),
    ] = DEFAULT_STREAM,
    stream_buffer: Annotated[
        int,
        typer.Option(
            min=1,
            rich_help_panel=P_RUN,
            help="Rows of whole chunks shuffled together when streaming: memory against shuffling.",
        ),
    ] = DEFAULT_STREAM_BUFFER,
    resume: Annotated[
        bool,
        typer.Option(
            metavar="",
            rich_help_panel=P_RUN,
            help="Continue an interrupted run in --out; on a finished one, refit its scorers "
            "(another --discriminant or --open-scorer).",
        ),
    ] = False,
    overwrite: Annotated[
        bool, typer.Option(metavar="", rich_help_panel=P_OUT, help="Replace a model already in --out.")
    ] = False,
    progress: Annotated[bool, typer.Option(metavar="", rich_help_panel=P_OUT, help="Show a progress bar.")] = True,
    as_json: Annotated[
        bool, typer.Option("--json", metavar="", rich_help_panel=P_OUT, help="Print the training summary as JSON.")
    ] = False,
):
    """Train the attention encoder, prototypes and density scorers from a store alone."""
    with _guard(
        "the last finished epoch is saved; rerun the same command with --resume to continue",
        _train_kept(out),
        "rerun the same command with --resume",
    ):
        from leakstore.device import set_threads
        from leakstore.model.train import train as run

        set_threads(threads)
        cfg = _model_config(
            locals(), open_scorer=open_scorer.value if open_scorer else default_open_scorer(outliers is not None)
        )
        unk = [u for x in (unknown_labels or []) for u in x.split(",") if u]
        summary = run(
            store,
            out,
            cfg,
            unknown_labels=unk,
            device=device,
            resume=resume,
            overwrite=overwrite,
            progress=progress and not as_json,
            stream=Stream(stream).value,
            buffer=stream_buffer,
            outliers=outliers,
        )
    if note := _companion_mismatch(out):
        typer.echo(f"warning: {note}", err=True)
    if as_json:
        typer.echo(json.dumps(summary, indent=2, default=float))
        return
    b = summary["best_val"]
    first = f"network 1 (seed {summary['members'][0]['seed']}): " if summary.get("members") else ""
    typer.echo(
        f"{first}trained {summary['epochs_run']} epochs ({summary['samples_per_s']} samples/s on {summary['device']}); "
        f"best epoch {summary['best_epoch']}: val loss {b.get('val_loss', float('nan')):.4f}, top-1 "
        f"{b.get('val_top1', float('nan')):.3f}, macro AUC {b.get('val_auc', float('nan')):.3f}"
        + _val_rows_note(store, summary)
    )
    if summary.get("final"):
        typer.echo(
            f"--final: the test split of {store} trained too; judge this model on other images (on that "
            "split, the same training without --final gives its figures)"
        )
    for i, m in enumerate(summary.get("members", [])[1:], 2):
        typer.echo(
            f"network {i} (seed {m['seed']}): {m['epochs_run']} epochs, best epoch {m['best_epoch']}: "
            f"macro AUC {m['best_val'].get('val_auc', float('nan')):.3f}"
        )
    if summary["post_hoc_prototypes"]:
        typer.echo(f"extra prototypes for weak classes: {', '.join(summary['post_hoc_prototypes'])}")
    if (o := summary.get("outliers")) and not o["used"]:
        typer.echo(
            f"note: the open scorer {cfg.open_scorer} takes no outliers: the {o['rows']} rows of {o['store']} "
            "were not used (lda and fused-lda take them)"
        )
    elif o:
        cut = f" ({o['kinds']} kinds of outlier, each cut in up to {cfg.outlier_components})"
        typer.echo(
            f"open scorer {cfg.open_scorer}: {o['used']} outlier rows of {o['store']} as {o['classes']} 'other' classes"
            + (cut if o["kinds"] != o["classes"] else "")
        )
    if fb := summary["open_scorer"].get("fallback"):
        typer.echo(f"note: {fb}")
    if d := summary.get("discriminant"):
        typer.echo(
            f"attribution: the networks (weight {1 - d['weight']:.2g}) with a linear discriminant of "
            f"{d['features']} stored statistics (weight {d['weight']:.2g})"
        )
    t = summary["open_scorer"].get("threshold_from") or {}
    if t.get("source") == "out-of-fold":
        lo, hi = t["flag_rate_ci"]
        per = t.get("flag_rate_per_group")  # older models did not record it
        folds = "each left out in turn" if t["folds"] == t["groups"] else f"{t['folds']} folds"
        typer.echo(
            f"unknown threshold: out-of-fold scores over {t['groups']} prompts/groups ({folds}): "
            f"expect {cfg.false_unknown_rate:.0%} of known images of new prompts flagged "
            f"(95 % CI {lo:.1%}-{hi:.1%}"
            + (f"; one prompt at a time {per[0]:.1%}-{per[1]:.1%}, 10th-90th percentile" if per else "")
            + ")"
            + (
                f"; {t['flagged_as_given']:.1%} of images as given, {t['flagged_views']:.1%} of their training views"
                if "flagged_views" in t
                else ""
            )
        )
    # a companion is used through its model, judged on the model's store
    run, judged = (Path(out).parent, "STORE") if _is_companion(out) else (out, store)
    nxt = f"leakstore score {run} IMAGES" if summary.get("final") else f"leakstore evaluate {run} {judged}"
    typer.echo(f"model saved in {out}  (next: {nxt})")


def _is_companion(out) -> bool:
    """Whether OUT is RUN/small beside a trained model RUN."""
    from leakstore.model.checkpoint import SMALL

    return Path(out).name == SMALL and (Path(out).parent / "model.json").is_file()


def _companion_mismatch(out) -> str | None:
    """After training into OUT: why the model and its companion for small images (OUT/small, or OUT
    itself when it is RUN/small) no longer load together, said now rather than when the model is next
    loaded; None when they do, or when there is no pair."""
    from leakstore.model.checkpoint import SMALL, load_bundle

    out = Path(out)
    if _is_companion(out):
        run = out.parent
    elif (out / SMALL / "model.json").is_file():
        run = out
    else:
        return None
    try:
        load_bundle(run)
    except LeakstoreError as e:
        return str(e)
    return None


def _val_rows_note(store, summary: dict) -> str:
    """' (the network alone, per crop, training views included)': what the validation figures of the
    training line are over, where they differ from what evaluate reports (whole images as given)."""
    from leakstore.store import FeatureStore

    parts = []
    if FeatureStore.open(store).config.crops > 1:
        parts.append("per crop")
    if summary.get("view_prob"):
        parts.append("training views included")
    return f" (the network alone, {', '.join(parts)}; evaluate judges whole images)" if parts else ""


@app.command("make-outliers")
def make_outliers(
    data: Annotated[
        Path,
        typer.Argument(
            metavar="DATA", help="The training images: a folder per class or a manifest, as given to featurize."
        ),
    ],
    out: Annotated[Path, typer.Argument(metavar="OUT", help="Folder for the outlier images and their manifest.csv.")],
    photos: Annotated[
        list[Path] | None,
        typer.Option(
            metavar="DIR",
            help="Camera photographs (a folder or a file; repeatable): native-pixel crops of them join as label "
            "'photo'; each further source is its own outlier class ('photo-2', ...): give photographs of "
            "different origins (a camera's own JPEGs, downscaled web photos) as separate --photos.",
        ),
    ] = None,
    vae: Annotated[
        str | None,
        typer.Option(
            metavar="VAE",
            help="Also pass images through this autoencoder and its decoder (e.g. taef2): another generator's "
            "decoder traces, one more outlier class.",
        ),
    ] = None,
    decoders: Annotated[
        int,
        typer.Option(
            min=0,
            max=64,
            help="Simulated decoders (small upsampling networks of several families, trained briefly on the training "
            "images), each an outlier class.",
        ),
    ] = DEFAULT_OUTLIER_DECODERS,
    decoder_steps: Annotated[
        int, typer.Option(min=1, help="Training steps of each simulated decoder (about 0.1 s each on a CPU core).")
    ] = DEFAULT_DECODER_STEPS,
    per_photo: Annotated[int, typer.Option(min=1, help="Crops per photograph.")] = DEFAULT_OUTLIER_PER_PHOTO,
    size: Annotated[int, typer.Option(min=16, help="Side of a photograph crop, in pixels.")] = DEFAULT_OUTLIER_SIZE,
    seed: Annotated[int, typer.Option(help="Seed of the choices (with each file's SHA-256).")] = DEFAULT_OUTLIER_SEED,
    progress: Annotated[bool, typer.Option(metavar="", help="Show a progress bar.")] = True,
    as_json: Annotated[bool, typer.Option("--json", metavar="", help="Print the summary as JSON.")] = False,
):
    """Write images that no known generator made (copies of the training images through simulated
    decoders or another autoencoder, crops of photographs) for train --outliers: the unknown flag
    learns what 'none of these' looks like."""
    with _guard(
        f"finished images are kept in {out}; rerun the same command to go on",
        lambda: f"Finished images are kept in {out}.",
    ):
        from leakstore.featurize.outliers import make_outliers as run

        s = run(
            data,
            out,
            photos=photos or (),
            vae=vae,
            decoders=decoders,
            decoder_steps=decoder_steps,
            per_photo=per_photo,
            size=size,
            seed=seed,
            progress=progress and not as_json,
        )
    if as_json:
        typer.echo(json.dumps(s, indent=2))
        return
    typer.echo(
        f"{s['images']} outlier images in {out} ("
        + ", ".join(f"{k} {v}" for k, v in s["made"].items())
        + ")"
        + (
            f"; {s['failed']} inputs failed (failed.csv), e.g. {s['first_failures'][0][0]}: {s['first_failures'][0][1]}"
            if s["failed"]
            else ""
        )
    )
    if s["real_class"] and s["photos"]:
        typer.echo(
            f"note: {data} has a real class ({s['real_class']}): photograph crops as outliers teach the "
            "flag that real photographs are 'other'; leave --photos out for such data (docs: Open set)"
        )
    typer.echo(
        f"next: leakstore featurize {s['manifest']} OUTLIERS.zarr <the training store's options>, "
        "then leakstore train STORE --outliers OUTLIERS.zarr"
    )


@app.command("openset-study")
def openset_study(
    store: Annotated[
        Path, typer.Argument(metavar="STORE", help="A featurized store with at least three known classes.")
    ],
    out: Annotated[Path, typer.Option("--out", help="Output folder (folds are kept there: a rerun resumes).")],
    epochs: Annotated[
        int, typer.Option(min=1, help="Training epochs per fold (a short schedule).")
    ] = DEFAULT_STUDY_EPOCHS,
    generators: Annotated[
        list[str] | None,
        typer.Option(
            metavar="NAME[,NAME]",
            help="Generators to hold out in turn (default: every non-real class); repeat or comma-separate.",
        ),
    ] = None,
    unknown_labels: Annotated[
        list[str] | None, typer.Option(metavar="NAME[,NAME]", help="Classes held out of every fold as well.")
    ] = None,
    residual: Annotated[
        bool, typer.Option(metavar="", help="Use the store's reconstruction residual when it has one.")
    ] = MD["use_residual"],
    periodicity: Annotated[
        bool, typer.Option(metavar="", help="Use the store's pixel periodicity profile when it has one.")
    ] = MD["use_periodicity"],
    jpeg_grid: Annotated[
        bool,
        typer.Option(
            "--drop-jpeg-grid/--keep-jpeg-grid",
            help="Read the periodicity profile without the phases JPEG's 8x8 block grid prints on.",
        ),
    ] = MD["drop_jpeg_grid"],
    false_unknown_rate: Annotated[
        float, typer.Option(min=0.0, max=0.5, help="Share of known validation images each threshold may reject.")
    ] = MD["false_unknown_rate"],
    open_temperature: Annotated[
        float,
        typer.Option(
            min=0.0,
            help="Fused open-set scorers combine their components by a soft minimum of this temperature, in tail "
            "units; 0 is the plain minimum.",
        ),
    ] = MD["open_temperature"],
    seed: Annotated[int, typer.Option(help="Training seed.")] = MD["seed"],
    members: Annotated[int, typer.Option(min=1, help="As train --members: networks per fold.")] = MD["members"],
    view_prob: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=1.0,
            help="As train --view-prob, for stores featurized with --train-views (0: as if the store had none).",
        ),
    ] = MD["view_prob"],
    consistency: Annotated[
        float, typer.Option(min=0.0, help="As train --consistency: pair each image with a view (0: draw one).")
    ] = MD["consistency"],
    ceiling: Annotated[
        bool,
        typer.Option(
            metavar="",
            help="Also train one model with every generator known: the supervised AUROC each open-set figure is read "
            "against.",
        ),
    ] = True,
    unseen: Annotated[
        list[Path] | None,
        typer.Option(
            metavar="STORE",
            help="A store of generators outside STORE (same featurize settings): every fold's scorers flag its "
            "labels' test rows; reported, never chosen on; repeatable.",
        ),
    ] = None,
    outliers: Annotated[
        Path | None,
        typer.Option(
            metavar="STORE", help=OUTLIERS_HELP + " Each fold leaves out the rows made from its held-out generator."
        ),
    ] = None,
    outlier_components: Annotated[
        int, typer.Option(min=1, help="As train --outlier-components: classes per kind of outlier.")
    ] = MD["outlier_components"],
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = RD["device"],
    threads: Annotated[int | None, typer.Option(min=1, help=THREADS_HELP)] = None,
    as_json: Annotated[bool, typer.Option("--json", metavar="", help="Print the summary as JSON.")] = False,
):
    """Leave-one-generator-out: train without each generator in turn and measure how well every
    open-set scorer flags it; the choice is made on validation rows, test rows report."""
    with _guard(
        "finished folds are kept in --out; rerun the same command to resume",
        lambda: f"Finished folds are kept in {out}.",
    ):
        from leakstore.device import set_threads
        from leakstore.pipelines.openset_study import openset_study as run

        set_threads(threads)
        split = lambda xs: [u for x in (xs or []) for u in x.split(",") if u]  # noqa: E731
        cfg = _model_config({k: v for k, v in locals().items() if k != "epochs"})  # epochs: per fold, below
        s = run(
            store,
            out,
            cfg,
            epochs=epochs,
            generators=split(generators) or None,
            unknown_labels=split(unknown_labels),
            device=device,
            progress=not as_json,
            ceiling=ceiling,
            unseen=unseen or (),
            outliers=outliers,
        )
    if as_json:
        typer.echo(json.dumps(s, indent=2, default=float))
        return
    typer.echo(f"{'scorer':<14}{'mean val':>10}{'min val':>9}{'mean test':>11}{'min test':>10}{'FPR@95':>8}")
    for r in s["scorers"]:
        mark = "  <- chosen on validation" if r["scorer"] == s["chosen"] else ""
        typer.echo(
            f"{r['scorer']:<14}{r['mean_val_auroc']:>10.3f}{r['min_val_auroc']:>9.3f}{r['mean_test_auroc']:>11.3f}"
            f"{r['min_test_auroc']:>10.3f}{r['mean_test_fpr95']:>8.3f}{mark}"
        )
    from leakstore.pipelines.openset_study import support_line

    if line := support_line(s):
        typer.echo(line)
    ct, sup = s["chosen_test"], s["supervised_ceiling"]
    lo, hi = ct["mean_test_ci95"]
    typer.echo(
        f"{s['chosen']}: mean test AUROC {ct['mean_test_auroc']:.3f} (95 % CI {lo:.3f}-{hi:.3f}, bootstrap over test "
        "photos)"
    )
    if sup:
        lo, hi = sup["mean_test_ci95"]
        per = ", ".join(f"{g} {v['test_auroc']:.3f}" for g, v in sup["per_generator"].items())
        typer.echo(
            f"supervised ceiling (trained with each generator): mean test {sup['mean_test_auroc']:.3f} "
            f"(95 % CI {lo:.3f}-{hi:.3f}); {per}"
        )
    if s.get("unseen"):
        per = s["unseen"]["per_scorer"]
        typer.echo(
            f"outside generators (--unseen, not chosen on), {s['chosen']}, mean AUROC over folds: "
            + ", ".join(f"{lab} {v:.3f}" for lab, v in per[s["chosen"]].items())
            + " (every scorer: study.json, report.html)"
        )
        for store, n in (s["unseen"].get("outlier_photos") or {}).items():
            typer.echo(
                f"WARNING: {store} holds {n} photograph{'s' if n != 1 else ''} the unknown flag was fitted on as "
                "outliers (--outliers): its AUROC is in-sample"
            )
    typer.echo(f"{len(s['generators'])} folds in {s['seconds']} s; report: {s['report']}")


@app.command()
def evaluate(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN_DIR", help="A trained model directory.")],
    stores: Annotated[
        list[Path], typer.Argument(metavar="STORES", help="One or more stores (e.g. post-processing views).")
    ],
    out: Annotated[Path | None, typer.Option(help="Output folder (default RUN_DIR/eval).")] = None,
    split: Annotated[Split, typer.Option(help="Which split to evaluate (its images, never training views).")] = "test",
    unseen: Annotated[
        list[Path] | None,
        typer.Option(
            metavar="STORE",
            help="A store of images from generators outside the training store (featurized with the model's config): "
            "each label is scored, on all its rows, against the known test rows; repeatable.",
        ),
    ] = None,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = RD["device"],
    threads: Annotated[int | None, typer.Option(min=1, help=THREADS_HELP)] = None,
    as_json: Annotated[bool, typer.Option("--json", metavar="", help="Machine-readable output.")] = False,
):
    """Closed-set and open-set metrics, robustness across views, plots and an HTML report."""
    with _guard("rerun the command (the stores are unchanged)"):
        from leakstore.device import set_threads
        from leakstore.pipelines.evaluate import evaluate as run

        set_threads(threads)
        s = run(
            run_dir,
            [str(x) for x in stores],
            out,
            device=device,
            split=split.value,
            unseen=[str(u) for u in unseen or ()],
        )
    if as_json:
        typer.echo(json.dumps(s, indent=2, default=float))
        return
    _print_robustness(s)


def _aurocs(by_view: dict) -> str:
    """'jpeg:75 0.952, resize:0.5 0.951': the AUROCs measured (None: not measurable), for one line."""
    return ", ".join(f"{k} {a:.3f}" for k, a in by_view.items() if a is not None)


def _ci(ci, unit: str = "") -> str:
    """' (0.890-0.951)' or ' (0.0-3.9%)'; '' without an interval."""
    if not ci:
        return ""
    return f" ({ci[0]:.1%}-{ci[1]:.1%})".replace("%-", "-") if unit == "%" else f" ({ci[0]:.3f}-{ci[1]:.3f})"


def _expects(t: dict) -> str:
    """What the out-of-fold threshold expects of new prompts (model.predict.threshold_expects), in words."""
    lo, hi = t["pooled"]
    per = f", {t['per_prompt'][0]:.1%}-{t['per_prompt'][1]:.1%} one prompt at a time" if t["per_prompt"] else ""
    return f"95 % CI {lo:.1%}-{hi:.1%}{per} (out of fold over the {t['prompts']} training prompts)"


def _group_spread(per) -> str:
    """How far one group's flag rate strays under a calibrated threshold (calibrate's `flag_rate_per_group`), in
    words: one wording for calibrate's line and score's summary."""
    return f"{per[0]:.1%}-{per[1]:.1%} one group at a time (10th-90th percentile)"


def _print_robustness(s: dict) -> None:
    if s["builtin_encoder"]:
        typer.echo("NOTE: features from the BUILT-IN DEMO ENCODER (random weights, not a real VAE)")
    crops = max((v.get("crops", 1) for v in s.get("views", [])), default=1)
    if crops > 1:
        typer.echo(f"figures per image, each judged on its {crops} crops")
    for store, n in (s.get("in_sample") or {}).items():
        typer.echo(
            f"WARNING: {n} judged images of {store} trained this model (copies keep their source's SHA-256): "
            "its figures there are in-sample; judge images it did not learn"
        )
    for store, n in (s.get("outlier_sample") or {}).items():
        typer.echo(
            f"WARNING: {store} holds {n} photograph{'s' if n != 1 else ''} the unknown flag was fitted on as "
            "outliers (make-outliers --photos): its AUROC is in-sample; split the photographs into those for "
            "make-outliers and those to judge"
        )
    if s.get("final"):
        typer.echo(
            "model trained on its store's test split too (train --final): figures hold only for images it did not learn"
        )
    if c := s.get("calibration"):
        typer.echo(
            f"unknown threshold set by `leakstore calibrate` to flag {c['rate']:.1%} of {c['images']} known images "
            f"of {', '.join(c['stores'])}"
        )
    for store in s.get("calibrated_on_judged") or ():
        typer.echo(
            f"NOTE: {store} set the unknown threshold (calibrate): the threshold was chosen on its known images, "
            "so their flag rate is no measurement of it"
        )
    w = max(22, *(len(r["view"]) + 2 for r in s["robustness"]))
    typer.echo(f"{'view':<{w}}{'macro AUC (95 % CI)':>22}{'top-1':>8}{'open AUROC':>12}{'known flagged (95 % CI)':>25}")
    for r in s["robustness"]:
        oa = "-" if r["open_auroc"] is None else f"{r['open_auroc']:.4f}"
        kf = "-" if r.get("known_flagged") is None else f"{r['known_flagged']:.1%}"
        kf += _ci(r.get("known_flagged_ci"), "%") if r.get("known_flagged") is not None else ""
        auc = f"{r['macro_auc']:.4f}" + _ci(r.get("macro_auc_ci"))
        typer.echo(f"{r['view']:<{w}}{auc:>22}{r['top1']:>8.4f}{oa:>12}{kf:>25}")
    if s.get("ci"):
        typer.echo(f"({s['ci']})")
    if t := s.get("threshold_expects"):
        typer.echo(
            f"known flagged: {t['asked']:.1%} asked of new prompts, {_expects(t)}: a few prompts' rate strays that far"
        )
    if s.get("discriminant"):
        alone = " / ".join(f"{r['networks_macro_auc']:.4f}" for r in s["robustness"])
        typer.echo(
            f"attribution: the networks with the stored statistics' discriminant (weight {s['discriminant']:.2g}); "
            f"the networks alone: macro AUC {alone}"
        )
    if s.get("companion"):
        typer.echo(f"images no larger than one crop: attributed half by the model, half by {s['companion']}")
    if s.get("unseen"):
        typer.echo(f"images from outside the training store, against the {s['unseen']['known_rows']}:")
        for g, v in s["unseen"]["per_generator"].items():
            by_view = _aurocs(v.get("auroc_by_view", {}))
            what = (
                f"called correctly {v['called_correctly']:.1%}"
                if v["known_class"]
                else f"AUROC {v['auroc']:.3f}"
                + _ci(v.get("auroc_ci"))
                + (f" (against {by_view})" if by_view else "")
                + f", FPR@95 {v['fpr_at_95tpr']:.3f}"
            )
            typer.echo(
                f"  {g:<22} n={v['n']:<5} {what}, flagged unknown {v['flagged']:.1%}, "
                f"called {v['called_most']} ({v['called_most_share']:.0%})"
            )
    if s.get("unseen", {}).get("mean_auroc_by_view"):
        m = s["unseen"]
        typer.echo(
            f"  mean AUROC against known images as given {m['mean_auroc']:.3f}; against "
            + _aurocs(m["mean_auroc_by_view"])
        )
    typer.echo(f"report: {s['report']}")


@app.command()
def sweep(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN_DIR", help="A trained model directory.")],
    data: Annotated[
        Path | None,
        typer.Argument(
            metavar="DATA",
            help="Test images: a store (its test split), a folder or a manifest. Default: the model's training store.",
        ),
    ] = None,
    views: Annotated[
        str, typer.Option(help="Post-processing views to measure, comma-separated (each may chain steps with '+').")
    ] = ",".join(DEFAULT_SWEEP_VIEWS),
    out: Annotated[
        Path | None,
        typer.Option(help="Output folder (default RUN_DIR/sweep); view stores are kept there, so a rerun resumes."),
    ] = None,
    device: Annotated[str, typer.Option(help=DEVICE_HELP + " For featurizing and the model.")] = RD["device"],
    workers: Annotated[int, typer.Option(min=-1, help="Decode processes (-1: auto).")] = RD["workers"],
    progress: Annotated[bool, typer.Option(metavar="", help="Show progress bars.")] = True,
    as_json: Annotated[bool, typer.Option("--json", metavar="", help="Print the summary as JSON.")] = False,
):
    """Robustness in one command: featurize the test split under each view with the model's own
    featurize config, evaluate, and write the robustness table, curve and report."""
    with _guard(
        "featurized views are kept in --out; rerun the same command to resume", lambda: "Finished view stores are kept."
    ):
        from leakstore.pipelines.sweep import sweep as run

        s = run(
            run_dir,
            data,
            [v for v in views.split(",") if v.strip()],
            out,
            device=device,
            workers=workers,
            progress=progress and not as_json,
        )
    if as_json:
        typer.echo(json.dumps(s, indent=2, default=float))
        return
    _print_robustness(s)


@app.command()
def calibrate(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN_DIR", help="A trained model directory.")],
    stores: Annotated[
        list[Path],
        typer.Argument(
            metavar="STORES",
            help="Stores of known images the model did not train on, featurized with its config: as given and "
            "with --view as your images arrive (re-encoded, resized).",
        ),
    ],
    rate: Annotated[
        float | None,
        typer.Option(min=0.0, max=0.5, help="Share of these images to flag unknown (default: the model's own rate)."),
    ] = None,
    split: Annotated[Split, typer.Option(help="Which split of the stores to use.")] = "all",
    out: Annotated[
        Path | None, typer.Option(help="Write the calibrated model to this new folder (default: in RUN_DIR itself).")
    ] = None,
    device: Annotated[str, typer.Option(help=DEVICE_HELP)] = RD["device"],
    threads: Annotated[int | None, typer.Option(min=1, help=THREADS_HELP)] = None,
    as_json: Annotated[bool, typer.Option("--json", metavar="", help="Machine-readable output.")] = False,
):
    """Set the unknown threshold on your own known images, so that it flags the asked share of them."""
    with _guard("rerun the command (the model is written only at the end)"):
        from leakstore.device import set_threads
        from leakstore.pipelines.calibrate import calibrate as run

        set_threads(threads)
        s = run(run_dir, [str(x) for x in stores], rate, out, device=device, split=split.value)
    if as_json:
        typer.echo(json.dumps(s, indent=2, default=float))
        return
    lo, hi = s["flag_rate_ci"]
    per = s.get("flag_rate_per_group")
    left = f"; {s['left_out_trained']} images the networks trained on left out" if s["left_out_trained"] else ""
    typer.echo(
        f"unknown threshold of {s['run']}: {s['previous']:.3f} -> {s['threshold']:.3f}, flagging {s['rate']:.1%} of "
        f"{s['images']} known images, where it flagged {s['flagged_before']:.1%}{left}; 95 % CI {lo:.1%}-{hi:.1%} "
        f"over {s['ci_over']}" + (f", {_group_spread(per)}" if per else "")
    )
    typer.echo(
        f"saved in {s['run']}/model.json (calibration: the threshold training set was {s['training_threshold']:.3f}); "
        "the open scores are unchanged, so are AUROCs: only which images are called unknown moves"
    )


@app.command()
def score(
    run_dir: Annotated[Path, typer.Argument(metavar="RUN_DIR", help="A trained model directory.")],
    inputs: Annotated[
        str, typer.Argument(metavar="INPUTS", help="A featurized store, a folder, a manifest, a glob or an image.")
    ],
    out: Annotated[Path, typer.Option(help="Parquet file for the predictions.")] = Path("predictions.parquet"),
    report: Annotated[
        bool,
        typer.Option(
            metavar="",
            help="Also write OUT with .html: the verdicts and what the files' own metadata claims, conflicts first.",
        ),
    ] = True,
    cluster: Annotated[
        int | None, typer.Option(min=1, help="Local dask worker processes (default: one per core).")
    ] = None,
    scheduler: Annotated[
        str | None, typer.Option(help="Address of an existing dask scheduler, e.g. tcp://host:8786.")
    ] = None,
    device: Annotated[str, typer.Option(help=DEVICE_HELP + " On each dask worker.")] = RD["device"],
    threads: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="CPU threads for torch in each dask worker (env LEAKSTORE_THREADS; default 1: the workers share the "
            "cores).",
        ),
    ] = None,
    strict: Annotated[
        bool,
        typer.Option(
            metavar="", help="Exit with code 1 when any input failed (an unreadable image, a failed store row)."
        ),
    ] = False,
    stability: Annotated[
        int,
        typer.Option(
            min=0,
            max=len(STABILITY_VIEWS),
            metavar="K",
            help=f"Also score each image re-encoded K ways ({', '.join(STABILITY_VIEWS)}, in that order; K+1 times "
            "the work): column 'stability' is the share that keep the verdict, 'unsure' is true when one "
            "changes it. Raw images only.",
        ),
    ] = 0,
    c2pa_trust: Annotated[Path | None, typer.Option(metavar="PEM", help=C2PA_TRUST_HELP)] = None,
    progress: Annotated[bool, typer.Option(metavar="", help="Show progress.")] = True,
    as_json: Annotated[bool, typer.Option("--json", metavar="", help="Machine-readable output.")] = False,
):
    """Score a store or raw images in batches on dask.distributed; one Parquet row per input."""
    with (
        _guard("finished parts are kept; rerun the same command to finish", _parts_kept(out)),
        _quiet_dask_on_interrupt(),
    ):
        from leakstore.pipelines.score import score as run
        from leakstore.pipelines.score import summarise

        _c2pa_trust(c2pa_trust)

        counts = run(
            run_dir,
            inputs,
            out,
            workers=cluster,
            scheduler=scheduler,
            device=device,
            progress=progress and not as_json,
            threads=threads,
            stability=stability,
        )
    from leakstore.model.checkpoint import load_bundle

    s = summarise(counts, load_bundle(run_dir)) | {"out": str(out), "model": str(run_dir)}
    if report:
        with _guard("the predictions are written; rerun with --no-report to skip the report"):
            from leakstore.pipelines.report import write_score_report

            s["report"] = str(write_score_report(out, out.with_suffix(".html"), s))
    if as_json:
        typer.echo(json.dumps(s, indent=2))
    else:
        _print_score_summary(s, out)
    if s["rows"] and s["failed"] == s["rows"]:
        typer.echo(
            f"error: every one of the {s['rows']} inputs failed (the 'error' column of {out} says why)", err=True
        )
        raise typer.Exit(1)
    if strict and s["failed"]:
        raise typer.Exit(1)


def _train_kept(out: Path):
    def kept() -> str:
        if not (out / "train_state.safetensors").is_file():
            return "No epoch had finished."
        from leakstore.model.checkpoint import read_train_state_meta

        epoch = read_train_state_meta(out).get("epoch")
        return f"Epoch {epoch} is saved in {out}."

    return kept


def _parts_kept(out: Path):
    def kept() -> str:
        parts = out.with_name(out.name + ".parts")
        n = len(list(parts.glob("part-*.parquet"))) if parts.is_dir() else 0
        return f"{n} finished partition{'s are' if n != 1 else ' is'} kept in {parts}." if n else ""

    return kept


def _print_score_summary(s: dict, out: Path) -> None:
    typer.echo(
        f"{s['rows']} rows -> {out}: {s['scored']} scored, {s['failed']} failed, {s['unknown']} unknown generator"
    )
    r = s.get("false_unknown_rate")
    if r and (c := r.get("calibrated")):
        lo, hi = c["flag_rate_ci"]
        per = c.get("flag_rate_per_group")
        typer.echo(
            f"  unknown = open-set score '{s['open_scorer']}' below the threshold `leakstore calibrate` set to flag "
            f"{r['asked']:.1%} of {c['images']} known images of yours (95 % CI {lo:.1%}-{hi:.1%} over {c['ci_over']}"
            + (f", {_group_spread(per)})" if per else ")")
        )
    elif r:
        val = "" if r["validation"] is None else f" ({r['validation']:.1%} of the known validation images were flagged)"
        typer.echo(
            f"  unknown = open-set score '{s['open_scorer']}' below the threshold set to flag "
            f"{r['asked']:.1%} of known images{val}"
            + (f"; of new prompts' known images, {_expects(r['expects'])}" if r.get("expects") else "")
        )
    if "unsure" in s:
        typer.echo(f"  {s['unsure']} of {s['scored']} verdicts changed under a re-encoding (column 'unsure')")
    width = max([24] + [len(k) + 2 for k in s["predicted"]])
    for k, v in s["predicted"].items():
        typer.echo(f"  {k:<{width}}{v:>8}")
    failures = s.get("failures") or []
    for f in failures[:3]:
        alike = f" (and {f['count'] - 1} more alike)" if f["count"] > 1 else ""
        typer.echo(f"  failed: {f['example']}: {f['error']}{alike}")
    if len(failures) > 3:
        rest = sum(f["count"] for f in failures[3:])
        typer.echo(f"  failed: {rest} more, of {len(failures) - 3} other kinds (column 'error')")
    if s.get("meta_claims") or s.get("meta_conflicts") or s.get("meta_errors"):
        claims = ", ".join(f"{k} {v}" for k, v in s["meta_claims"].items()) or "none"
        bad = f", {s['meta_errors']} with a malformed block (column meta_error)" if s.get("meta_errors") else ""
        typer.echo(
            f"  metadata claims: {claims}; {s['meta_conflicts']} conflict with the verdict or fail C2PA validation{bad}"
        )
    if s.get("report"):
        typer.echo(f"  report: {s['report']}")


@contextmanager
def _quiet_dask_on_interrupt():
    """Ctrl-C while dask runs: the workers' and the scheduler's shutdown tracebacks are noise next to
    the one line that says what was kept, so their loggers go quiet once the interrupt arrives."""
    try:
        yield
    except KeyboardInterrupt:
        import logging

        for name in ("distributed", "tornado", "asyncio", "bokeh"):
            logging.getLogger(name).setLevel(logging.CRITICAL + 1)
        raise


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Working folder.")] = Path("leakstore-demo"),
    photos: Annotated[
        int, typer.Option(min=20, help="Synthetic scenes (each rendered by every generator).")
    ] = DEFAULT_DEMO_SCENES,
    epochs: Annotated[
        int, typer.Option(min=1, help="Most training epochs (stops early once validation stops improving).")
    ] = MD["epochs"],
    cluster: Annotated[
        int, typer.Option(min=1, help="Local dask worker processes for the scoring step.")
    ] = DEFAULT_DEMO_WORKERS,
):
    """Offline end to end on synthetic data: featurize, train, evaluate, score; prints where the report is."""
    with _guard("rerun leakstore demo"):
        from leakstore.pipelines.demo import run_demo

        r = run_demo(out, n_photos=photos, epochs=epochs, workers=cluster)
    typer.echo(f"\ndemo done in {r['seconds']} s, encoder: {r['encoder']}")
    typer.echo(
        f"  closed-set macro AUC {r['closed_macro_auc']:.3f}, top-1 {r['closed_top1']:.3f}; "
        f"open-set AUROC (unseen generator) {r['open_auroc']:.3f}"
    )
    typer.echo(f"  scored {r['scored']['rows']} images with dask: {r['scored']['predicted']}")
    typer.echo(f"  report: {r['report']}\n  predictions: {r['predictions']}")
    typer.echo(
        f"next: open the report in a browser; score images of your own with\n"
        f"  leakstore score {out / 'model'} FOLDER --out predictions.parquet\n"
        "or featurize your data set (leakstore featurize DATA STORE.zarr --vae sd21; the residual and pixel cues "
        "are on by default)."
    )


@app.command()
def env(as_json: Annotated[bool, typer.Option("--json", metavar="", help="Machine-readable output.")] = False):
    """Versions, devices and xformers status, for bug reports."""
    from leakstore.envinfo import collect

    info = collect()
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    typer.echo(
        f"python {info['python']} on {info['platform']}, {info['cpu_count']} CPUs, "
        f"{info['torch_threads']} torch threads"
    )
    for k, v in info["packages"].items():
        typer.echo(f"  {k:<16}{v}")
    built = f"torch built for CUDA {info['torch_cuda']}" if info["torch_cuda"] else "a CPU-only torch build"
    typer.echo(
        f"CUDA: {'yes' if info['cuda_available'] else 'no'} ({built}); devices: {', '.join(info['devices']) or 'none'}"
    )
    typer.echo(f"xformers: {'yes' if info['xformers']['usable'] else 'no'} - {info['xformers']['detail']}")


def main():  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
