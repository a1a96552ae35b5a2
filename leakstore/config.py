"""Configs are data: frozen dataclasses that serialise to JSON beside every artifact.

`FeaturizeConfig` is everything that defines a feature in a store. Its `hash` is what
training and scoring compare before they trust a store (`check_compatible`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from leakstore.errors import ConfigFieldError, ConfigMismatchError

RESIZE_POLICIES = ("shorter-crop", "center-crop", "exact")
BETA_SCHEDULES = ("scaled_linear", "linear")
PRECISIONS = ("fp32", "tf32", "bf16", "fp16")
CODECS = ("zstd1", "zstd5", "lz4", "none")

# The one home of the user-facing defaults that are not fields of a config below; the CLI, the
# Python API and the configs all read them from here (or from the dataclasses' own field defaults).
DEFAULT_VAE = "sd21"  # the reference's encoder (Stable Diffusion 2.1 base)
DEFAULT_REAL_LABEL = "real"  # folder / label of the real class
DEFAULT_MAX_PIXELS = 1 << 27  # 134 Mpx: larger images are treated as decompression bombs
DEFAULT_OUTLIER_DECODERS = 6  # make-outliers: simulated decoders, each an outlier class (featurize/decoders.py)
DEFAULT_DECODER_STEPS = 300  # make-outliers: each decoder's training steps (image-like, far from a generator)
# training views: what reaches users (re-encodes, rescales, softening); no added noise: noise views
# taught the statistics' discriminant that a noisier image is a known one's variation, which hid the
# noisier unseen generators (RealGen-dev, docs/results); `--view-policy ...,noise:0-0.02` adds them
DEFAULT_VIEW_POLICY = "jpeg:50-95,webp:60-95,resize:0.5-1,blur:0-2"
DEFAULT_SPLIT_FRACTIONS = (0.7, 0.15, 0.15)  # train/val/test, as the reference
DEFAULT_DEVICE = "auto"  # every command: CUDA when visible, else the CPU
STREAM_MODES = ("auto", "on", "off")  # train: stream the store from disk, load it, or stream when it is too big
DEFAULT_STREAM_BUFFER = 4096  # rows of whole chunks shuffled together when training streams the store
DEFAULT_STREAM = "auto"  # train: stream the store when its features would fill a quarter of the RAM
BATCH_CPU, BATCH_CUDA = 16, 128  # images per encoder batch when none is given, on a CPU and on CUDA
DEFAULT_SCORE_BATCH = BATCH_CPU  # scoring image files: images per encoder batch
DEFAULT_SCORE_CHUNK = 256  # scoring: images per dask partition (and per in-process step)
DEFAULT_SWEEP_VIEWS = ("jpeg:95", "jpeg:75", "jpeg:50", "jpeg444:90", "resize:0.5", "blur:2")  # sweep: views measured
DEFAULT_STUDY_EPOCHS = 10  # openset-study: training epochs per fold (a short schedule)
DEFAULT_OUTLIER_PER_PHOTO = 6  # make-outliers: crops per photograph
DEFAULT_OUTLIER_SIZE = 256  # make-outliers: side of a photograph crop, pixels
DEFAULT_OUTLIER_SEED = 0  # make-outliers: seed of the choices (with each file's SHA-256)
DEFAULT_DEMO_SCENES = 300  # demo: synthetic scenes, each rendered by every generator
DEFAULT_DEMO_WORKERS = 2  # demo: local dask workers of its scoring step
# Fields recorded in the store but not part of the feature identity: they change the
# numbers only at rounding level (docs/speed.md: bf16 against fp32).
_UNHASHED = ("precision",)
_VAE_PROVENANCE = ("name", "note")  # VAEIdentity fields that say where weights came from, not what they are


@dataclass(frozen=True)
class VAEIdentity:
    """Which encoder made the latents, and how its output was scaled.

    latent = (posterior_mean - shift_factor) * scaling_factor   (the diffusers convention)
    """

    name: str  # preset name, hub id, or file/folder name
    source: str  # hub id, absolute path, or "builtin"
    kind: str  # "kl" (AutoencoderKL family), "tiny" (AutoencoderTiny), "taesd-sequential", "builtin-demo"
    latent_channels: int
    scaling_factor: float = 1.0
    shift_factor: float = 0.0
    input_range: str = "-1..1"  # pixel range the encoder expects: "-1..1" or "0..1"
    downsample: int = 8
    subfolder: str = ""
    revision: str = ""  # hub commit, or "sha256:<hex>" of the weights file(s)
    builtin: bool = False  # True for the built-in demo encoder: not a real VAE
    note: str = ""


@dataclass(frozen=True)
class ScheduleConfig:
    """DDPM noise schedule. SD 1.x/2.x/XL use scaled_linear 0.00085..0.012 over 1000 steps;
    the Proto-LeakNet reference code uses linear betas over the same range."""

    beta_schedule: str = "scaled_linear"
    beta_start: float = 0.00085
    beta_end: float = 0.012
    num_train_timesteps: int = 1000

    def __post_init__(self):
        if self.beta_schedule not in BETA_SCHEDULES:
            raise ConfigFieldError("beta_schedule", self.beta_schedule, f"choose one of {', '.join(BETA_SCHEDULES)}")
        if not (0 < self.beta_start < self.beta_end < 1):
            raise ConfigFieldError(
                "beta_start",
                self.beta_start,
                f"betas must satisfy 0 < beta_start < beta_end < 1 (beta_end = {self.beta_end})",
            )


# fields a saved featurize config may lack, with what made the store then (not today's default):
# stores featurized before the residual co-occurrences hold none
FEATURIZE_ABSENT_MEANS = {"cooccurrence": 0}

CROP_GRIDS = {g * g: g for g in range(1, 9)}  # --crops K: K = g * g windows on a g x g grid


@dataclass(frozen=True)
class FeaturizeConfig:
    """Everything that defines the features of a store (the arrays themselves: leakstore/features)."""

    vae: VAEIdentity
    resolution: int = 256
    resize_policy: str = "shorter-crop"
    resample: str = "bilinear"
    timesteps: tuple[int, ...] = (0, 50, 100, 200, 400)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    sigma_normalize: bool = False
    fft_size: int = 8
    seed: int = 0
    view: str = "none"
    min_side: int = 32
    precision: str = "fp32"
    residual_bins: int = 12  # > 0: also store the reconstruction residual (leakstore/features/residual.py)
    decoder: str = ""  # weights revision of the decoder the residual was made with (needed when residual_bins > 0)
    period: int = 8  # > 0: also store the pixel periodicity profile (leakstore/features/periodicity.py)
    spectrum_bins: int = 16  # > 0: also store the pixel spectrum's band powers (leakstore/features/pixel_spectrum.py)
    crops: int = 1  # > 1: this many native-pixel crops per image (a g x g grid), one row each
    noise_bins: int = (
        16  # > 0: also store the noise residual's 2-D spectrum in B x B bands (features/noise_spectrum.py)
    )
    cooccurrence: int = 1  # > 0: also store residual co-occurrences clipped to [-T, T] (features/cooccurrence.py)

    def __post_init__(self):
        object.__setattr__(self, "timesteps", tuple(int(t) for t in self.timesteps))
        if not 0 <= self.residual_bins <= 64:
            raise ConfigFieldError("residual_bins", self.residual_bins, "must lie in [0, 64] (0: no residual feature)")
        if self.residual_bins and not self.decoder:
            raise ConfigFieldError("decoder", self.decoder, "a residual feature needs the decoder's weights revision")
        if not 0 <= self.period <= 64:  # measured at each image's own size: smaller images fail alone
            raise ConfigFieldError("period", self.period, "must lie in [0, 64] (0: no periodicity feature)")
        if not 0 <= self.spectrum_bins <= 64:
            raise ConfigFieldError(
                "spectrum_bins", self.spectrum_bins, "must lie in [0, 64] (0: no pixel-spectrum feature)"
            )
        if self.noise_bins not in (0, 1, 2, 4, 8, 16, 32):
            raise ConfigFieldError(
                "noise_bins", self.noise_bins, "give 0 (off) or a number of bands dividing 64 (4, 8, 16, 32)"
            )
        if not 0 <= self.cooccurrence <= 8:
            raise ConfigFieldError(
                "cooccurrence", self.cooccurrence, "must lie in [0, 8] (0: no residual co-occurrence feature)"
            )
        if self.crops not in CROP_GRIDS:
            raise ConfigFieldError(
                "crops",
                self.crops,
                f"give a square number of crops per image "
                f"({', '.join(map(str, CROP_GRIDS))}), laid out on a grid over the image",
            )
        n = self.schedule.num_train_timesteps
        if not self.timesteps:
            raise ConfigFieldError("timesteps", self.timesteps, "is empty: give at least one, e.g. 0,50,100,200,400")
        if any(t < 0 or t >= n for t in self.timesteps):
            raise ConfigFieldError("timesteps", self.timesteps, f"must lie in [0, {n - 1}]")
        if self.resize_policy not in RESIZE_POLICIES:
            raise ConfigFieldError("resize_policy", self.resize_policy, f"choose one of {', '.join(RESIZE_POLICIES)}")
        if self.precision not in PRECISIONS:
            raise ConfigFieldError("precision", self.precision, f"choose one of {', '.join(PRECISIONS)}")
        if self.resolution % self.vae.downsample or self.resolution < 2 * self.vae.downsample:
            raise ConfigFieldError(
                "resolution",
                self.resolution,
                f"must be a multiple of the VAE's downsampling "
                f"factor {self.vae.downsample} and at least {2 * self.vae.downsample}",
            )
        h = self.latent_size
        if not (1 <= self.fft_size <= h):
            raise ConfigFieldError(
                "fft_size", self.fft_size, f"must lie in [1, {h}] (the latent side at this resolution)"
            )

    # ------------------------------------------------------------------ derived
    @property
    def latent_size(self) -> int:
        return self.resolution // self.vae.downsample

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """(C, h, w) of one latent."""
        return (self.vae.latent_channels, self.latent_size, self.latent_size)

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["timesteps"] = list(self.timesteps)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeaturizeConfig:
        d = {**FEATURIZE_ABSENT_MEANS, **d}
        vae = from_fields(VAEIdentity, d.pop("vae"), "featurize config (vae)")
        schedule = from_fields(ScheduleConfig, d.pop("schedule"), "featurize config (schedule)")
        return from_fields(cls, d, "featurize config", vae=vae, schedule=schedule)

    def identity(self) -> dict[str, Any]:
        """The part of the config that defines the features (what `hash` covers): content, never
        where files lie. The encoder is named by its weights' content (its revision: the SHA-256 of
        the weights, or a hub commit), so the same weights in another folder make the same store; its
        path, file name and note are provenance only (kept in the store's config, outside the hash).
        An encoder without a content revision is named by its source. A feature switched off (0
        bins, one crop) leaves its fields out."""
        d = {k: v for k, v in self.to_dict().items() if k not in _UNHASHED}
        vae = d["vae"]
        for k in _VAE_PROVENANCE:
            vae.pop(k)
        if vae["revision"].startswith("sha256:"):  # the bytes themselves: the source names nothing more
            vae.pop("source"), vae.pop("subfolder")
        if not self.residual_bins:
            d.pop("residual_bins"), d.pop("decoder")
        if not self.period:
            d.pop("period")
        if not self.spectrum_bins:
            d.pop("spectrum_bins")
        if self.crops == 1:
            d.pop("crops")
        if not self.noise_bins:
            d.pop("noise_bins")
        if not self.cooccurrence:
            d.pop("cooccurrence")
        return d

    @property
    def hash(self) -> str:
        blob = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def replace(self, **changes) -> FeaturizeConfig:
        return dataclasses.replace(self, **changes)


@dataclass
class RunOptions:
    """How a featurize run goes (not what it computes: that is FeaturizeConfig)."""

    device: str = DEFAULT_DEVICE  # "auto", "cpu", "cuda", "cuda:1", ...
    batch_size: int = 0  # images per device batch; 0: BATCH_CUDA on CUDA, BATCH_CPU on a CPU
    workers: int = -1  # decode processes; -1: all cores but one on CUDA, 1 on CPU; 0: in-process
    compile: bool | None = None  # torch.compile the encoder; None: on for CUDA
    compile_mode: str = "default"  # torch.compile mode
    chunk_size: int = 256  # images per Zarr chunk: the unit of writing and resuming
    codec: str = "zstd1"  # Blosc codec of the float arrays (CODECS)
    shard: tuple[int, int] = (0, 1)
    chunks: tuple[int, ...] | None = None  # only these chunks (a dask task's share); None: the whole shard
    max_pixels: int = DEFAULT_MAX_PIXELS
    overwrite: bool = False
    progress: bool = True
    writer_threads: int = 2


def defaults(cls) -> dict[str, Any]:
    """{field: default} of a config dataclass: what the CLI shows and the Python API uses."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def from_fields(cls, d: dict[str, Any], what: str, **extra):
    """Build config dataclass `cls` from a dict, refusing fields it does not know (every config
    loader does this alike: a file written by a newer leakstore is never half-read)."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - known
    if unknown:
        raise ConfigMismatchError(
            f"{what} has unknown fields {sorted(unknown)}: it was written by a newer "
            "leakstore; upgrade leakstore to read it"
        )
    missing = known - set(d) - set(extra)
    if missing:  # never filled with today's defaults: they may not be what made the file
        raise ConfigMismatchError(
            f"{what} lacks the fields {sorted(missing)}: it was written by a pre-release "
            "leakstore; featurize or train again with this one"
        )
    return cls(**d, **extra)


def config_diff(expected: dict[str, Any], found: dict[str, Any], prefix: str = "") -> list[str]:
    """Human-readable differences: ["timesteps: [0, 50] here, [0, 100] expected", ...], whole values."""
    out = []
    for k in sorted(set(expected) | set(found)):
        if k in _UNHASHED and not prefix:
            continue
        ve, vf = expected.get(k, "<absent>"), found.get(k, "<absent>")
        if isinstance(ve, dict) and isinstance(vf, dict):
            out.extend(config_diff(ve, vf, f"{prefix}{k}."))
        elif ve != vf:
            out.append(f"{prefix}{k}: {vf!r} here, {ve!r} expected")
    return out


STORE_ADVICE = "Featurize into a new store, or pass --overwrite to replace this one."
MODEL_ADVICE = (
    "Featurize these images again with the model's featurize config (leakstore inspect shows both; "
    "leakstore sweep does it for test images)."
)


def check_compatible(
    expected: FeaturizeConfig,
    found: FeaturizeConfig,
    what: str,
    ignore: tuple[str, ...] = (),
    advice: str = MODEL_ADVICE,
) -> None:
    """Raise ConfigMismatchError naming every differing field (its value in `what`, and the expected
    one) when two configs' features differ. `ignore` names fields allowed to differ (evaluation
    across post-processing views ignores "view")."""
    if expected.hash == found.hash:
        return
    a = {k: v for k, v in expected.identity().items() if k not in ignore}
    b = {k: v for k, v in found.identity().items() if k not in ignore}
    diffs = config_diff(a, b)
    if not diffs:
        return
    raise ConfigMismatchError(
        f"{what} was featurized with another config (its hash {found.hash}, expected "
        f"{expected.hash}): " + "; ".join(diffs) + ". " + advice
    )
