"""The feature contract: every array computed per image, declared once.

Each `Feature` says its name, store dtype, per-image dimensions and shape as a function of the
`FeaturizeConfig`, whether it feeds the network, whether it needs the VAE's decoder, and how it
is computed from a featurizer's `Context`. The store schema (`leakstore.store.array_specs`), the
runner's chunk buffers, in-memory featurizing, training batches (re-noising included), the
scoring frame and a checkpoint's input list are all derived from `FEATURES`.

Adding an input: one `Feature` here, its maths beside this module, a branch in the network only
if it is not a per-timestep or per-image vector (those get one automatically), and a test.

    latent0   (C, h, w)      float16  clean latent (posterior mean, shifted and scaled)
    latents   (T, C, h, w)   float16  forward-diffused per timestep (sigma-normalised if configured)
    spectra   (T, C, k, k)   float16  log1p |FFT| of the lowest k x k frequencies of each z_t
    residual  (F,)           float32  reconstruction residual (residual.py); with residual_bins > 0
    periodicity (2P,)        float32  pixel-gradient phase profile modulo P of the image at its own size
                                      (periodicity.py); with period > 0
    pixel_spectrum (2B,)     float32  band powers of the pixel spectrum along each axis, at the image's own
                                      size (pixel_spectrum.py); with spectrum_bins > 0; open-set scorers only
    noise_spectrum (B*B,)    float32  the noise residual's 2-D spectrum (noise_spectrum.py); with noise_bins > 0
    cooccurrence (2L^2+11,)  float32  neighbouring residuals' joint histograms, colour and texture statistics
                                      (cooccurrence.py); with cooccurrence T > 0, L = 2T + 1; the statistics'
                                      discriminant only
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from leakstore.config import FeaturizeConfig

if TYPE_CHECKING:  # torch is imported only where tensors are made, so the table stays cheap to import
    import torch


@dataclass
class Context:
    """What a featurizer hands each feature's `compute`: tensors on one device.

    Tensors may hold padding rows after the first `n` (a partial batch run at the full batch
    shape); every feature returns exactly the first `n` rows."""

    cfg: FeaturizeConfig
    n: int
    z: torch.Tensor  # (B, C, h, w) float32 clean latents
    noise: torch.Tensor  # (n, T, C, h, w) float32, seeded per image
    alpha: torch.Tensor  # (T,) sqrt(abar_t)
    sigma: torch.Tensor  # (T,) sqrt(1 - abar_t)
    pixels: torch.Tensor | None = None  # (B, 3, R, R) uint8; None when re-noising from latent0
    encode: Callable | None = None  # float32 pixels in [0, 1] -> latents (float32 pass)
    decode: Callable | None = None  # latents -> pixels in [0, 1] (float32 pass)
    z32: torch.Tensor | None = None  # (B, C, h, w) latents of the float32 pass
    native: dict[str, Any] | None = None  # features the loader computed on each decoded image (`Feature.native`)
    out: dict[str, Any] = field(default_factory=dict)  # features computed so far, by name


def _latent0(ctx: Context):
    return ctx.z[: ctx.n]


def _latents(ctx: Context):
    from leakstore.features.noising import add_noise

    return add_noise(ctx.z[: ctx.n], ctx.noise, ctx.alpha, ctx.sigma, ctx.cfg.sigma_normalize)


def _spectra(ctx: Context):
    from leakstore.features.spectra import low_freq_spectrum

    return low_freq_spectrum(ctx.out["latents"], ctx.cfg.fft_size)


def _residual(ctx: Context):
    from leakstore.features.residual import residual_features

    return residual_features(ctx.pixels.float() / 255.0, ctx.z32, ctx.decode, ctx.encode, ctx.cfg.residual_bins)[
        : ctx.n
    ]


def _from_loader(ctx: Context, name: str):
    """A `native` feature: what the loader computed on each decoded image (ctx.native)."""
    if not ctx.native or name not in ctx.native:
        raise RuntimeError(
            f"the {name!r} feature is computed on each decoded image by the loader "
            "(featurize.runner.ImageRows): pass the batch's 'native' to the featurizer"
        )
    return ctx.native[name][: ctx.n]


def _periodicity_native(arr: np.ndarray, cfg: FeaturizeConfig) -> np.ndarray:
    from leakstore.features.periodicity import periodicity_of_image

    return periodicity_of_image(arr, cfg.period)


def _pixel_spectrum_native(arr: np.ndarray, cfg: FeaturizeConfig) -> np.ndarray:
    from leakstore.features.pixel_spectrum import pixel_spectrum_of_image

    return pixel_spectrum_of_image(arr, cfg.spectrum_bins)


def _noise_spectrum_native(arr: np.ndarray, cfg: FeaturizeConfig) -> np.ndarray:
    from leakstore.features.noise_spectrum import noise_spectrum_of_image

    return noise_spectrum_of_image(arr, cfg.noise_bins)


def _cooccurrence_native(arr: np.ndarray, cfg: FeaturizeConfig) -> np.ndarray:
    from leakstore.features.cooccurrence import cooccurrence_of_image

    return cooccurrence_of_image(arr, cfg.cooccurrence)


def cooccurrence_dim(cfg: FeaturizeConfig) -> int:
    """Length of one image's co-occurrence vector: 2 (2T + 1)^2 + 11 (0 without the feature)."""
    return 2 * (2 * cfg.cooccurrence + 1) ** 2 + 11 if cfg.cooccurrence else 0


def noise_spectrum_dim(cfg: FeaturizeConfig) -> int:
    """Length of one image's noise-spectrum vector: bins * bins (0 without the feature)."""
    return cfg.noise_bins**2


def pixel_spectrum_dim(cfg: FeaturizeConfig) -> int:
    """Length of one image's pixel-spectrum vector: 2 * bins (0 without the feature)."""
    return 2 * cfg.spectrum_bins


def periodicity_dim(cfg: FeaturizeConfig) -> int:
    """Length of one image's periodicity vector: 2 * period (0 without the feature)."""
    return 2 * cfg.period


def residual_dim(cfg: FeaturizeConfig) -> int:
    """Length of one image's residual vector: 3 * bins + 3 + C (0 without the residual feature)."""
    return 3 * cfg.residual_bins + 3 + cfg.vae.latent_channels if cfg.residual_bins else 0


@dataclass(frozen=True)
class Feature:
    name: str
    dims: tuple[str, ...]  # per-image dimension names (after "image")
    dtype: str  # store dtype
    shape: Callable[[FeaturizeConfig], tuple[int, ...]]  # per-image shape
    compute: Callable[[Context], Any] | None  # -> (n, *shape) float32 tensor; None for a `native` feature
    model_input: bool = True  # fed to the network
    noise_derived: bool = False  # a function of (latent0, noise) alone: training
    # can redraw it from latent0 every batch
    needs_decoder: bool = False
    requires: tuple[str, ...] = ()  # features its compute reads from ctx.out
    enabled: Callable[[FeaturizeConfig], bool] = lambda cfg: True
    native: Callable[[np.ndarray, FeaturizeConfig], np.ndarray] | None = None
    # computed by the loader on the decoded (H, W, 3) uint8
    # image at its own size (after views, before the resize
    # to the VAE's resolution), handed on in ctx.native
    off: tuple[tuple[str, Any], ...] = ()  # config fields that switch an optional feature off
    doc: str = ""

    @property
    def per_timestep(self) -> bool:
        return bool(self.dims) and self.dims[0] == "timestep"


def _lat_shape(c: FeaturizeConfig):
    return c.latent_shape


FEATURES: tuple[Feature, ...] = (
    Feature(
        "latent0",
        ("channel", "y", "x"),
        "float16",
        _lat_shape,
        _latent0,
        model_input=False,
        doc="clean latent, for re-noising on the fly",
    ),
    Feature(
        "latents",
        ("timestep", "channel", "y", "x"),
        "float16",
        lambda c: (len(c.timesteps),) + c.latent_shape,
        _latents,
        noise_derived=True,
        doc="forward-diffused latent per timestep",
    ),
    Feature(
        "spectra",
        ("timestep", "channel", "fy", "fx"),
        "float16",
        lambda c: (len(c.timesteps), c.vae.latent_channels, c.fft_size, c.fft_size),
        _spectra,
        noise_derived=True,
        requires=("latents",),
        doc="log1p |FFT| of the lowest k x k frequencies",
    ),
    Feature(
        "residual",
        ("residual_feature",),
        "float32",
        lambda c: (residual_dim(c),),
        _residual,
        needs_decoder=True,
        enabled=lambda c: c.residual_bins > 0,
        off=(("residual_bins", 0), ("decoder", "")),
        doc="reconstruction-residual statistics (leakstore/features/residual.py)",
    ),
    Feature(
        "periodicity",
        ("periodicity_feature",),
        "float32",
        lambda c: (periodicity_dim(c),),
        None,
        native=_periodicity_native,
        enabled=lambda c: c.period > 0,
        off=(("period", 0),),
        doc="pixel-gradient phase profile modulo the period (leakstore/features/periodicity.py)",
    ),
    Feature(
        "pixel_spectrum",
        ("pixel_spectrum_feature",),
        "float32",
        lambda c: (pixel_spectrum_dim(c),),
        None,
        model_input=False,
        native=_pixel_spectrum_native,
        enabled=lambda c: c.spectrum_bins > 0,
        off=(("spectrum_bins", 0),),
        doc="band powers of the pixel spectrum along each axis (leakstore/features/pixel_spectrum.py)",
    ),
    Feature(
        "noise_spectrum",
        ("noise_spectrum_feature",),
        "float32",
        lambda c: (noise_spectrum_dim(c),),
        None,
        native=_noise_spectrum_native,
        enabled=lambda c: c.noise_bins > 0,
        off=(("noise_bins", 0),),
        doc="2-D power spectrum of the noise residual in B x B bands (leakstore/features/noise_spectrum.py)",
    ),
    Feature(
        "cooccurrence",
        ("cooccurrence_feature",),
        "float32",
        lambda c: (cooccurrence_dim(c),),
        None,
        model_input=False,
        native=_cooccurrence_native,
        enabled=lambda c: c.cooccurrence > 0,
        off=(("cooccurrence", 0),),
        doc="residual co-occurrences, colour and texture statistics (leakstore/features/cooccurrence.py)",
    ),
)
BY_NAME = {f.name: f for f in FEATURES}


def features_for(cfg: FeaturizeConfig) -> tuple[Feature, ...]:
    """The features a store of `cfg` holds, in table order."""
    return tuple(f for f in FEATURES if f.enabled(cfg))


def needs_decoder(cfg: FeaturizeConfig) -> bool:
    return any(f.needs_decoder for f in features_for(cfg))


def minimal_config(cfg: FeaturizeConfig, needed) -> FeaturizeConfig:
    """`cfg` with every optional feature that is not `needed` switched off: what raw images are
    featurized with when a model reads only some of its store's features (no decoder pass for a
    model that ignores the residual). The features left are computed exactly as in the store."""
    for f in features_for(cfg):
        if f.off and f.name not in needed:
            cfg = cfg.replace(**dict(f.off))
    return cfg


def compute(ctx: Context, names) -> dict[str, Any]:
    """Compute the named features, and the ones they require, into ctx.out; return the named ones."""
    wanted, todo = set(), list(names)
    while todo:
        n = todo.pop()
        if n not in wanted:
            wanted.add(n)
            todo += BY_NAME[n].requires
    for f in FEATURES:
        if f.name in wanted and f.name not in ctx.out:
            ctx.out[f.name] = _from_loader(ctx, f.name) if f.native else f.compute(ctx)
    return {k: ctx.out[k] for k in names}


def torch_dtype(name: str):
    import torch

    return getattr(torch, name)


# ---------------------------------------------------------------------------- a batch of rows
@dataclass
class FeatureBatch:
    """Rows of features in memory, keyed by feature name: what training, prediction and
    scoring pass around (a new feature widens no signature)."""

    rows: np.ndarray  # (N,) store rows (or input indices)
    arrays: dict[str, Any]  # name -> (N, *shape) tensor
    labels: np.ndarray  # (N,) class index, -1 unlabelled
    splits: np.ndarray  # (N,) 0 train, 1 val, 2 test, -1 none
    paths: np.ndarray  # (N,) str

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, name: str):
        return self.arrays[name]

    def get(self, name: str, default=None):
        return self.arrays.get(name, default)

    def subset(self, mask_or_index) -> FeatureBatch:
        """Rows selected by a boolean mask or an index array, in the given order."""
        import torch

        m = np.asarray(mask_or_index)
        idx = np.flatnonzero(m) if m.dtype == bool else m.astype(np.int64)
        t = torch.from_numpy(idx)
        return FeatureBatch(
            self.rows[idx],
            {k: v[t.to(v.device)] for k, v in self.arrays.items()},
            self.labels[idx],
            self.splits[idx],
            self.paths[idx],
        )

    def to(self, device, names=None) -> FeatureBatch:
        keep = self.arrays if names is None else {k: self.arrays[k] for k in names if k in self.arrays}
        return FeatureBatch(self.rows, {k: v.to(device) for k, v in keep.items()}, self.labels, self.splits, self.paths)

    @classmethod
    def empty(cls, cfg: FeaturizeConfig, names=None) -> FeatureBatch:
        """No rows, every named (default: every enabled) feature with its right shape and dtype."""
        import torch

        feats = [f for f in features_for(cfg) if names is None or f.name in names]
        return cls(
            np.zeros(0, np.int64),
            {f.name: torch.zeros((0,) + f.shape(cfg), dtype=torch_dtype(f.dtype)) for f in feats},
            np.zeros(0, np.int64),
            np.zeros(0, np.int64),
            np.zeros(0, dtype=object),
        )
