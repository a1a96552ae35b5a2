"""One call from user options to a featurized store (what `leakstore featurize` runs)."""
from __future__ import annotations

from pathlib import Path

from leakstore.featurize.datasets import DEFAULT_FRACTIONS, build_catalog, with_train_views
from leakstore.featurize.runner import FeaturizeReport, RunOptions, featurize_store
from leakstore.featurize.vae import load_encoder
from leakstore.featurize.views import DEFAULT_POLICY, parse_view, view_name
from leakstore.config import FeaturizeConfig, ScheduleConfig
from leakstore.device import resolve_device
from leakstore.errors import InputError


def parse_timesteps(text: str) -> tuple[int, ...]:
    try:
        ts = tuple(int(t) for t in text.replace(" ", "").split(",") if t != "")
    except ValueError:
        raise InputError(f"--timesteps {text!r}: give integers separated by commas, e.g. 0,50,100,200,400") from None
    if len(set(ts)) != len(ts):
        raise InputError(f"--timesteps {text!r} repeats a timestep")
    return ts


def build_config(encoder, *, resolution: int = 256, timesteps=(0, 50, 100, 200, 400),
                 resize_policy: str = "shorter-crop", resample: str = "bilinear",
                 schedule: ScheduleConfig | None = None, sigma_normalize: bool = False, fft_size: int = 8,
                 seed: int = 0, view=None, min_side: int = 32, precision: str | None = None,
                 residual_bins: int = 0, period: int = 0, spectrum_bins: int = 0,
                 device: str = "auto") -> FeaturizeConfig:
    """A FeaturizeConfig for `encoder`; residual_bins > 0 needs the encoder's decoder attached;
    period > 0 adds the pixel periodicity profile, spectrum_bins > 0 the pixel spectrum."""
    dev = resolve_device(device)
    prec = precision or ("bf16" if dev.type == "cuda" else "fp32")
    decoder = ""
    if residual_bins:
        if encoder.decoder is None:
            raise InputError("the residual feature needs the VAE's decoder: load the encoder with decoder=True")
        decoder = encoder.decoder.revision
    return FeaturizeConfig(vae=encoder.identity, resolution=resolution, resize_policy=resize_policy,
                           resample=resample, timesteps=tuple(timesteps), schedule=schedule or ScheduleConfig(),
                           sigma_normalize=sigma_normalize, fft_size=fft_size, seed=seed,
                           view=view_name(parse_view(view)), min_side=min_side, precision=prec,
                           residual_bins=residual_bins, decoder=decoder, period=period,
                           spectrum_bins=spectrum_bins)


def prepare(data: str | Path, *, vae: str = "sd21", vae_subfolder: str = "", scaling_factor: float | None = None,
            shift_factor: float | None = None, real_label: str = "real", split_seed: int = 0,
            fractions=DEFAULT_FRACTIONS, train_views: int = 0, view_policy: str = DEFAULT_POLICY, device: str = "auto",
            **config_kw):
    """(catalog, encoder, config) for featurizing DATA: what a single process or a dask cluster runs."""
    catalog = with_train_views(build_catalog(data, real_label=real_label, seed=split_seed, fractions=fractions),
                               train_views, view_policy)
    encoder = load_encoder(vae, subfolder=vae_subfolder, scaling_factor=scaling_factor, shift_factor=shift_factor,
                           decoder=config_kw.get("residual_bins", 0) > 0)
    return catalog, encoder, build_config(encoder, device=device, **config_kw)


def featurize(data: str | Path, store: str | Path, *, opts: RunOptions | None = None, **kw) -> FeaturizeReport:
    """Featurize DATA (class folders, manifest or WILD layout) into STORE in this process. See `prepare`
    and `build_config` for the options; `train_views` > 0 adds that many post-processed views (drawn
    from `view_policy`) of every training and validation image as extra rows."""
    opts = opts or RunOptions()
    kw.setdefault("device", opts.device)
    catalog, encoder, cfg = prepare(data, **kw)
    return featurize_store(catalog, store, cfg, encoder, opts)
