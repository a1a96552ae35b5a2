"""One call from user options to a featurized store (what `leakstore featurize` runs).

Every default here is read from `leakstore.config` (FeaturizeConfig's fields, RunOptions and the
DEFAULT_* constants), the same place the CLI reads them from: the Python API and the command line
write the same store for the same inputs.
"""

from __future__ import annotations

from pathlib import Path

from leakstore.config import (
    DEFAULT_REAL_LABEL,
    DEFAULT_SPLIT_FRACTIONS,
    DEFAULT_VAE,
    DEFAULT_VIEW_POLICY,
    FeaturizeConfig,
    RunOptions,
    ScheduleConfig,
    defaults,
)
from leakstore.device import resolve_device
from leakstore.errors import InputError
from leakstore.featurize.datasets import build_catalog, with_crops, with_train_views
from leakstore.featurize.runner import FeaturizeReport, featurize_store
from leakstore.featurize.vae import load_encoder
from leakstore.featurize.views import parse_view, view_name

# the FeaturizeConfig fields a caller may set (the rest are derived from the encoder and device)
_DERIVED = ("vae", "decoder", "precision", "view", "schedule")
CONFIG_FIELDS = tuple(k for k in defaults(FeaturizeConfig) if k not in _DERIVED)


def parse_timesteps(text: str) -> tuple[int, ...]:
    try:
        ts = tuple(int(t) for t in text.replace(" ", "").split(",") if t != "")
    except ValueError:
        raise InputError(f"--timesteps {text!r}: give integers separated by commas, e.g. 0,50,100,200,400") from None
    if len(set(ts)) != len(ts):
        raise InputError(f"--timesteps {text!r} repeats a timestep")
    return ts


def build_config(
    encoder,
    *,
    schedule: ScheduleConfig | None = None,
    view=None,
    precision: str | None = None,
    device: str = RunOptions.device,
    **fields,
) -> FeaturizeConfig:
    """A FeaturizeConfig for `encoder`. `fields` are FeaturizeConfig fields (resolution, timesteps,
    resize_policy, fft_size, seed, residual_bins, period, spectrum_bins, ...); those not given take
    FeaturizeConfig's defaults. residual_bins > 0 needs the encoder's decoder attached; precision
    None: bf16 on CUDA, fp32 on the CPU."""
    unknown = set(fields) - set(CONFIG_FIELDS)
    if unknown:
        raise TypeError(
            f"build_config() got unknown featurize settings {sorted(unknown)}; known: {', '.join(CONFIG_FIELDS)}"
        )
    dev = resolve_device(device)
    prec = precision or ("bf16" if dev.type == "cuda" else "fp32")
    decoder = ""
    if fields.get("residual_bins", defaults(FeaturizeConfig)["residual_bins"]):
        if encoder.decoder is None:
            raise InputError(
                f"the residual feature needs the VAE's decoder, and {encoder.identity.name} was loaded "
                "without one: give a VAE with its decoder, or residual_bins=0 (--no-residual)"
            )
        decoder = encoder.decoder.revision
    return FeaturizeConfig(
        vae=encoder.identity,
        schedule=schedule or ScheduleConfig(),
        precision=prec,
        view=view_name(parse_view(view)),
        decoder=decoder,
        **fields,
    )


def prepare(
    data: str | Path,
    *,
    vae: str = DEFAULT_VAE,
    vae_subfolder: str = "",
    scaling_factor: float | None = None,
    shift_factor: float | None = None,
    real_label: str = DEFAULT_REAL_LABEL,
    split_seed: int = 0,
    fractions=DEFAULT_SPLIT_FRACTIONS,
    train_views: int = 0,
    view_policy: str = DEFAULT_VIEW_POLICY,
    device: str = RunOptions.device,
    **config_kw,
):
    """(catalog, encoder, config) for featurizing DATA: what a single process or a dask cluster runs."""
    catalog = with_train_views(
        build_catalog(data, real_label=real_label, seed=split_seed, fractions=fractions), train_views, view_policy
    )
    catalog = with_crops(catalog, config_kw.get("crops", defaults(FeaturizeConfig)["crops"]))
    residual = config_kw.get("residual_bins", defaults(FeaturizeConfig)["residual_bins"])
    encoder = load_encoder(
        vae, subfolder=vae_subfolder, scaling_factor=scaling_factor, shift_factor=shift_factor, decoder=residual > 0
    )
    return catalog, encoder, build_config(encoder, device=device, **config_kw)


def featurize(data: str | Path, store: str | Path, *, opts: RunOptions | None = None, **kw) -> FeaturizeReport:
    """Featurize DATA (class folders, manifest or WILD layout) into STORE in this process. See `prepare`
    and `build_config` for the options; `train_views` > 0 adds that many post-processed views (drawn
    from `view_policy`) of every training and validation image as extra rows."""
    opts = opts or RunOptions()
    kw.setdefault("device", opts.device)
    catalog, encoder, cfg = prepare(data, **kw)
    return featurize_store(catalog, store, cfg, encoder, opts)
