"""Latent-diffusion encoders: presets as data, loading from every source, one wrapper.

`load_encoder(spec)` accepts a preset name (see PRESETS), a hub id (with `subfolder`), a
local diffusers folder, or a single weights file (.safetensors, or .pth/.pt read with
`weights_only=True`), and returns a `LatentEncoder`: uint8 pixels in, scaled latents out.
It never executes code from a checkpoint and never unpickles arbitrary objects.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from leakstore.config import FeaturizeConfig, VAEIdentity
from leakstore.errors import WeightsNotFoundError
from leakstore.features import needs_decoder


@dataclass(frozen=True)
class VAEPreset:
    hub_id: str
    subfolder: str
    kind: str  # "kl" or "tiny" (diffusers classes) or "taesd-sequential" (file)
    latent_channels: int
    scaling_factor: float
    shift_factor: float = 0.0
    diffusers_class: str = "AutoencoderKL"
    note: str = ""


PRESETS: dict[str, VAEPreset] = {
    "sd15": VAEPreset("stable-diffusion-v1-5/stable-diffusion-v1-5", "vae", "kl", 4, 0.18215),
    "sd21": VAEPreset(
        "stabilityai/stable-diffusion-2-1-base",
        "vae",
        "kl",
        4,
        0.18215,
        note="default, as in the Proto-LeakNet reference",
    ),
    "sdxl": VAEPreset("stabilityai/stable-diffusion-xl-base-1.0", "vae", "kl", 4, 0.13025),
    "sd3": VAEPreset("stabilityai/stable-diffusion-3-medium-diffusers", "vae", "kl", 16, 1.5305, 0.0609),
    "flux1": VAEPreset("black-forest-labs/FLUX.1-dev", "vae", "kl", 16, 0.3611, 0.1159),
    "flux2": VAEPreset(
        "black-forest-labs/FLUX.2-dev",
        "vae",
        "kl",
        32,
        1.0,
        0.0,
        diffusers_class="AutoencoderKLFlux2",
        note="raw 32-channel latents, before patchify/BatchNorm",
    ),
    # TAESD family (diffusers AutoencoderTiny). taesd/taesdxl emit latents already in SD's
    # scaled space; taesd3/taef1 emit raw latents, scaled here like their parents.
    "taesd": VAEPreset("madebyollin/taesd", "", "tiny", 4, 1.0, diffusers_class="AutoencoderTiny"),
    "taesdxl": VAEPreset("madebyollin/taesdxl", "", "tiny", 4, 1.0, diffusers_class="AutoencoderTiny"),
    "taesd3": VAEPreset("madebyollin/taesd3", "", "tiny", 16, 1.5305, 0.0609, diffusers_class="AutoencoderTiny"),
    "taef1": VAEPreset("madebyollin/taef1", "", "tiny", 16, 0.3611, 0.1159, diffusers_class="AutoencoderTiny"),
    # TAEF2 ships as a plain state dict of an nn.Sequential (taef2_encoder.pth), found in
    # $LEAKSTORE_WEIGHTS; raw FLUX.2 latents, unscaled.
    "taef2": VAEPreset("taef2_encoder.pth", "", "taesd-sequential", 32, 1.0),
}
BUILTIN = "demo"
ALLOWED_CLASSES = ("AutoencoderKL", "AutoencoderTiny", "AutoencoderKLFlux2")
_SINGLE_FILE = (".safetensors", ".pth", ".pt", ".ckpt", ".bin")


def vae_choices() -> str:
    return (
        f"a preset ({', '.join(PRESETS)}), '{BUILTIN}' (built-in random encoder, for demos and tests only), "
        "a hub id such as stabilityai/sd-vae-ft-mse (with --vae-subfolder when needed), a local diffusers "
        "folder, or a single .safetensors/.pth file"
    )


# ---------------------------------------------------------------------------- the wrapper
class LatentEncoder(nn.Module):
    """uint8 pixels (B, 3, H, W) -> latents (B, C, H/f, W/f) float32, scaled and shifted.

    latent = (posterior_mean - shift) * scaling. Only the encoder half of the VAE is kept.
    """

    def __init__(self, net: nn.Module, identity: VAEIdentity, mode: str, quant_conv: nn.Module | None = None):
        super().__init__()
        self.net, self.quant_conv, self.identity, self.mode = net, quant_conv, identity, mode
        self.c = identity.latent_channels
        self.decoder: LatentDecoder | None = None  # attached by load_encoder(..., decoder=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = next(self.net.parameters()).dtype
        x = x.to(dtype) / 255.0
        if self.identity.input_range == "-1..1":
            x = x * 2.0 - 1.0
        h = self.net(x)
        if self.quant_conv is not None:
            h = self.quant_conv(h)
        mean = h[:, : self.c].float()
        return (mean - self.identity.shift_factor) * self.identity.scaling_factor


# ---------------------------------------------------------------------------- TAESD-style sequential nets
class _TinyBlock(nn.Module):
    """Three 3x3 convs with ReLU, residual sum, ReLU; an optional 1x1 bottleneck branch on the input."""

    def __init__(self, ch: int, branch: bool):
        super().__init__()
        self.conv = nn.Sequential(
            nn.Conv2d(ch, ch, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(ch, ch, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(ch, ch, 3, padding=1),
        )
        self.pool = (
            nn.Sequential(
                nn.Conv2d(ch, 4 * ch, 1, bias=False),
                nn.GroupNorm(4, 4 * ch),
                nn.ReLU(),
                nn.Conv2d(4 * ch, ch, 1, bias=False),
            )
            if branch
            else None
        )

    def forward(self, x):
        if self.pool is not None:
            x = x + self.pool(x)
        return torch.relu(self.conv(x) + x)


def is_sequential_tae(state: dict) -> bool:
    return bool(state) and all(k.split(".")[0].isdigit() for k in state)


def build_sequential_encoder(state: dict[str, torch.Tensor], path: str = "") -> tuple[nn.Sequential, int, int]:
    """Rebuild a TAESD-family encoder from its state dict: keys name the layer index; a conv
    without bias is a stride-2 downsample; indices without weights are ReLUs.
    Returns (net, latent_channels, downsample factor)."""
    last = max(int(k.split(".")[0]) for k in state)
    first = state.get("0.weight")
    if first is None or first.ndim != 4 or first.shape[1] != 3:
        raise WeightsNotFoundError(
            f"{path}: not a TAESD-family encoder (its first layer does not take 3 "
            "colour channels); a *_decoder.pth file was probably given: pass the encoder"
        )
    layers: list[nn.Module] = []
    down, out_ch = 0, None
    for i in range(last + 1):
        w = state.get(f"{i}.weight")
        if f"{i}.conv.0.weight" in state:
            layers.append(_TinyBlock(state[f"{i}.conv.0.weight"].shape[0], f"{i}.pool.0.weight" in state))
        elif w is not None:
            bias = f"{i}.bias" in state
            layers.append(nn.Conv2d(w.shape[1], w.shape[0], 3, stride=1 if bias else 2, padding=1, bias=bias))
            down += 0 if bias else 1
            out_ch = w.shape[0]
        else:
            layers.append(nn.ReLU())
    net = nn.Sequential(*layers)
    net.load_state_dict(state)
    return net.eval(), int(out_ch), 2**down


class _SoftClamp(nn.Module):
    def forward(self, z):
        return torch.tanh(z / 3) * 3


def build_sequential_decoder(state: dict[str, torch.Tensor], path: str = "") -> nn.Sequential:
    """The decoder twin of `build_sequential_encoder`: layer 0 is the soft clamp tanh(z/3)*3; a
    conv without bias follows a 2x nearest upsampling; other weightless indices are ReLUs."""
    if "0.weight" in state:
        raise WeightsNotFoundError(
            f"{path}: not a TAESD-family decoder (its layer 0 has weights where the decoder's "
            "soft clamp belongs); an *_encoder.pth file was probably given"
        )
    layers: list[nn.Module] = []
    for i in range(max(int(k.split(".")[0]) for k in state) + 1):
        w = state.get(f"{i}.weight")
        if i == 0:
            layers.append(_SoftClamp())
        elif f"{i}.conv.0.weight" in state:
            layers.append(_TinyBlock(state[f"{i}.conv.0.weight"].shape[0], f"{i}.pool.0.weight" in state))
        elif w is not None:
            layers.append(nn.Conv2d(w.shape[1], w.shape[0], 3, padding=1, bias=f"{i}.bias" in state))
        elif f"{i + 1}.weight" in state and f"{i + 1}.bias" not in state:
            layers.append(nn.Upsample(scale_factor=2))
        else:
            layers.append(nn.ReLU())
    net = nn.Sequential(*layers)
    net.load_state_dict(state)
    return net.eval()


class LatentDecoder(nn.Module):
    """Scaled latents (B, C, h, w) float32, as a store holds them -> pixels (B, 3, H, W) float32 in [0, 1].

    raw = latent / scaling + shift, then the VAE's own decoder (after post_quant_conv for the KL
    family). `revision` names the weights, recorded in a store's config as `decoder`."""

    def __init__(
        self,
        net: nn.Module,
        identity: VAEIdentity,
        output_range: str,
        revision: str,
        post_quant_conv: nn.Module | None = None,
    ):
        super().__init__()
        self.net, self.post_quant_conv, self.identity = net, post_quant_conv, identity
        self.output_range, self.revision = output_range, revision

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        dtype = next(self.net.parameters()).dtype
        raw = (z.float() / self.identity.scaling_factor + self.identity.shift_factor).to(dtype)
        if self.post_quant_conv is not None:
            raw = self.post_quant_conv(raw)
        x = self.net(raw).float()
        if self.output_range == "-1..1":
            x = (x + 1.0) / 2.0
        return x.clamp(0.0, 1.0)


# ---------------------------------------------------------------------------- sources
def _sha256_files(paths) -> str:
    h = hashlib.sha256()
    for p in sorted(paths):
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
    return "sha256:" + h.hexdigest()[:32]


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:  # never unpickle arbitrary objects from a user's file
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsNotFoundError(
            f"{path}: cannot read it as a plain tensor state dict ({type(e).__name__}); convert it to .safetensors"
        ) from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsNotFoundError(f"{path}: not a state dict of tensors")
    return obj


def _diffusers_kl_from_state(state: dict, path: Path, decoder: bool = False) -> nn.Module:
    """A diffusers-format AutoencoderKL state dict -> AutoencoderKL, config read off the shapes."""
    from diffusers import AutoencoderKL

    n_blocks = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("encoder.down_blocks."))
    chans = [state[f"encoder.down_blocks.{i}.resnets.0.conv1.weight"].shape[0] for i in range(n_blocks)]
    layers = 1 + max(int(k.split(".")[4]) for k in state if k.startswith("encoder.down_blocks.0.resnets."))
    latent = state["encoder.conv_out.weight"].shape[0] // 2
    groups = state["encoder.conv_norm_out.weight"].shape[0]
    cfg = dict(
        in_channels=state["encoder.conv_in.weight"].shape[1],
        out_channels=3,
        latent_channels=latent,
        block_out_channels=chans,
        layers_per_block=layers,
        down_block_types=["DownEncoderBlock2D"] * n_blocks,
        up_block_types=["UpDecoderBlock2D"] * n_blocks,
        use_quant_conv="quant_conv.weight" in state,
        use_post_quant_conv="post_quant_conv.weight" in state,
        mid_block_add_attention=any(k.startswith("encoder.mid_block.attentions.") for k in state),
    )
    cfg["norm_num_groups"] = min(32, groups) if groups % 32 else 32
    vae = AutoencoderKL(**cfg)
    missing, unexpected = vae.load_state_dict(state, strict=False)
    missing = [
        k
        for k in missing
        if k.startswith(("encoder.", "quant_conv.") + (("decoder.", "post_quant_conv.") if decoder else ()))
    ]
    if missing or unexpected:
        raise WeightsNotFoundError(
            f"{path}: weights do not fit an AutoencoderKL (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    return vae


def _wrap_diffusers(vae: nn.Module, identity: VAEIdentity, decoder: bool = False) -> LatentEncoder:
    """Keep the encoder half (and, with `decoder`, the decoder half: same weights, same revision)."""
    tiny = type(vae).__name__ == "AutoencoderTiny"
    enc = (
        LatentEncoder(vae.encoder, identity, "tiny")
        if tiny
        else LatentEncoder(vae.encoder, identity, "kl", getattr(vae, "quant_conv", None))
    )
    if decoder:
        if getattr(vae, "decoder", None) is None:
            raise WeightsNotFoundError(
                f"{identity.source}: these weights hold no decoder; the residual feature "
                "needs the full autoencoder (drop --residual, or pass the full VAE)"
            )
        enc.decoder = LatentDecoder(
            vae.decoder, identity, "-1..1", identity.revision, None if tiny else getattr(vae, "post_quant_conv", None)
        )
    return enc


def _hub_error(source: str, cause: Exception) -> WeightsNotFoundError:
    return WeightsNotFoundError(
        f"cannot load VAE {source!r} ({type(cause).__name__}: "
        f"{str(cause).splitlines()[0][:160] if str(cause) else ''}). "
        f"Offline, download it once elsewhere (huggingface-cli download) or pass a local folder or file. "
        f"--vae takes {vae_choices()}"
    )


def _hub_unreachable(timeout: float = 3.0) -> str | None:
    """The hub's host when it cannot be reached (offline, HF_HUB_OFFLINE, no route), else None."""
    import os
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT)
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return f"{host.hostname} (HF_HUB_OFFLINE is set)"
    try:
        socket.create_connection((host.hostname, host.port or (443 if host.scheme == "https" else 80)), timeout).close()
        return None
    except OSError:
        return host.hostname


def _load_hub_or_folder(source: str, subfolder: str, preset: VAEPreset | None, local_only: bool):
    import warnings

    import diffusers

    kw = {"subfolder": subfolder or None}
    try:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                cfg = diffusers.AutoencoderKL.load_config(source, local_files_only=True, **kw)
        except Exception:
            if local_only:
                raise
            host = None if Path(source).exists() else _hub_unreachable()
            if host:  # say so at once, instead of minutes of retries and a misleading cause
                raise WeightsNotFoundError(
                    f"VAE {source!r} is not in the local Hugging Face cache and {host} cannot be reached (offline?): "
                    f"download it once where there is network (huggingface-cli download {source}), or pass a local "
                    f"folder or weights file. --vae takes {vae_choices()}"
                ) from None
            cfg = diffusers.AutoencoderKL.load_config(source, **kw)
        cls_name = cfg.get("_class_name", preset.diffusers_class if preset else "AutoencoderKL")
        if cls_name not in ALLOWED_CLASSES:
            raise WeightsNotFoundError(
                f"{source}: VAE class {cls_name} is not supported; supported: {', '.join(ALLOWED_CLASSES)}"
            )
        cls = getattr(diffusers, cls_name)
        try:
            vae = cls.from_pretrained(source, local_files_only=True, torch_dtype=torch.float32, **kw)
        except Exception:
            if local_only:
                raise
            vae = cls.from_pretrained(source, torch_dtype=torch.float32, **kw)
    except WeightsNotFoundError:
        raise
    except Exception as e:
        raise _hub_error(source, e) from None
    return vae, cfg


def _hub_revision(source: str, subfolder: str) -> str:
    if Path(source).is_dir():
        folder = Path(source) / subfolder if subfolder else Path(source)
        files = [p for p in folder.glob("*") if p.suffix in (".safetensors", ".bin")]
        return _sha256_files(files) if files else "unknown"
    # a revision names the store's features (its config hash): an error here must stop the run, never
    # turn into another revision
    from huggingface_hub import try_to_load_from_cache

    for name in ("diffusion_pytorch_model.safetensors", "config.json"):
        p = try_to_load_from_cache(source, f"{subfolder}/{name}" if subfolder else name)
        if isinstance(p, str) and "/snapshots/" in p:
            return "commit:" + p.split("/snapshots/")[1].split("/")[0]
    return "unknown"  # not in a hub cache layout: the store is named by its source (FeaturizeConfig.identity)


def weights_dirs() -> list[Path]:
    """Where named weight files (the taef2 preset) are looked for: $LEAKSTORE_WEIGHTS (':'-separated), then
    ~/.cache/leakstore/weights."""
    dirs = [Path(p) for p in os.environ.get("LEAKSTORE_WEIGHTS", "").split(os.pathsep) if p]
    return dirs + [Path.home() / ".cache" / "leakstore" / "weights"]


def _seeded(net: nn.Module, seed: int) -> str:
    """Fill every conv of `net` with seeded N(0, 1/fan_in) weights and zero biases, bit-identical on
    every machine and thread count; -> "sha256:..." of the weights."""
    import numpy as np

    rng = np.random.Generator(np.random.PCG64(seed))
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Conv2d):
                w = rng.standard_normal(m.weight.shape) / np.sqrt(m.weight.shape[1])
                m.weight.copy_(torch.from_numpy(w.astype(np.float32)))
                m.bias.zero_()
    rev = hashlib.sha256(b"".join(t.detach().numpy().tobytes() for t in net.state_dict().values()))
    return "sha256:" + rev.hexdigest()[:32]


def builtin_demo_encoder() -> LatentEncoder:
    """A fixed random patch encoder (seeded): 8x8 pixel patches -> 64 -> 8 channels through a
    GELU. It keeps colour statistics and patch texture, like a VAE encoder, with no weights to
    download. For the demo and tests only: every store it makes says it is not a real VAE."""
    net = nn.Sequential(nn.PixelUnshuffle(8), nn.Conv2d(192, 64, 1), nn.GELU(), nn.Conv2d(64, 8, 1))
    ident = VAEIdentity(
        name=BUILTIN,
        source="builtin",
        kind="builtin-demo",
        latent_channels=8,
        scaling_factor=1.0,
        input_range="-1..1",
        downsample=8,
        revision=_seeded(net, seed=0),
        builtin=True,
        note="BUILT-IN DEMO ENCODER: random weights, not a real VAE; "
        "features from it do not reflect any generator's latent space",
    )
    return LatentEncoder(net, ident, "seq").eval()


def builtin_demo_decoder(identity: VAEIdentity) -> LatentDecoder:
    """The demo encoder's fixed random mirror: 8 -> 64 channels, GELU, -> 192, 8x8 pixel shuffle,
    output read as [-1, 1]. Not an inverse of anything: for the demo and tests only."""
    net = nn.Sequential(nn.Conv2d(8, 64, 1), nn.GELU(), nn.Conv2d(64, 192, 1), nn.PixelShuffle(8))
    return LatentDecoder(net, identity, "-1..1", _seeded(net, seed=1)).eval()


def _sibling_decoder(path: Path) -> Path:
    """taef2_encoder.pth -> taef2_decoder.pth (the TAESD family ships its halves side by side)."""
    if "encoder" not in path.name:
        raise WeightsNotFoundError(
            f"{path}: cannot tell where its decoder is (no 'encoder' in the file name); "
            "put NAME_decoder.pth beside NAME_encoder.pth, or pass --no-residual"
        )
    head, _, tail = path.name.rpartition("encoder")
    found = path.with_name(head + "decoder" + tail)
    if not found.is_file():
        raise WeightsNotFoundError(
            f"the residual feature needs the decoder {found} beside {path.name}: put it "
            "there, or pass --no-residual (latents only: weaker, see docs/featurize.md)"
        )
    return found


def load_encoder(
    spec: str,
    *,
    subfolder: str = "",
    scaling_factor: float | None = None,
    shift_factor: float | None = None,
    decoder: bool = False,
) -> LatentEncoder:
    """Resolve `spec` to a LatentEncoder on the CPU in float32 (see module docstring). With
    `decoder`, the matching decoder is attached as `.decoder` (for the residual feature)."""
    local_only = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    if spec == BUILTIN:
        enc = builtin_demo_encoder()
        if decoder:
            enc.decoder = builtin_demo_decoder(enc.identity)
    elif spec in PRESETS and PRESETS[spec].kind == "taesd-sequential":
        preset = PRESETS[spec]
        found = [d / preset.hub_id for d in weights_dirs() if (d / preset.hub_id).is_file()]
        if not found:
            raise WeightsNotFoundError(
                f"preset {spec!r} needs {preset.hub_id}; looked in {', '.join(map(str, weights_dirs()))}. "
                f"Put the file there, set LEAKSTORE_WEIGHTS to its folder, or pass its path to --vae"
            )
        enc = _load_file(found[0], preset_name=spec, decoder=decoder)
    elif spec in PRESETS:
        p = PRESETS[spec]
        vae, _ = _load_hub_or_folder(p.hub_id, subfolder or p.subfolder, p, local_only)
        ident = VAEIdentity(
            name=spec,
            source=p.hub_id,
            kind=p.kind,
            latent_channels=p.latent_channels,
            scaling_factor=p.scaling_factor,
            shift_factor=p.shift_factor,
            input_range="-1..1",
            downsample=_downsample(vae),
            subfolder=subfolder or p.subfolder,
            revision=_hub_revision(p.hub_id, subfolder or p.subfolder),
            note=p.note,
        )
        enc = _wrap_diffusers(vae, ident, decoder)
    elif Path(spec).is_file() or Path(spec).suffix.lower() in _SINGLE_FILE:
        if not Path(spec).is_file():
            raise WeightsNotFoundError(f"VAE weights file {spec} does not exist. --vae takes {vae_choices()}")
        enc = _load_file(Path(spec), decoder=decoder)
    else:
        vae, cfg = _load_hub_or_folder(spec, subfolder, None, local_only or Path(spec).is_dir())
        ident = VAEIdentity(
            name=Path(spec).name if Path(spec).is_dir() else spec,
            source=str(Path(spec).resolve()) if Path(spec).is_dir() else spec,
            kind="tiny" if type(vae).__name__ == "AutoencoderTiny" else "kl",
            latent_channels=int(cfg.get("latent_channels", 4)),
            scaling_factor=float(cfg.get("scaling_factor") or 1.0),
            shift_factor=float(cfg.get("shift_factor") or 0.0),
            input_range="-1..1",
            downsample=_downsample(vae),
            subfolder=subfolder,
            revision=_hub_revision(spec, subfolder),
        )
        enc = _wrap_diffusers(vae, ident, decoder)
    overrides = {
        k: float(v) for k, v in (("scaling_factor", scaling_factor), ("shift_factor", shift_factor)) if v is not None
    }
    if overrides:
        _set_identity(enc, replace(enc.identity, **overrides))
    for p in enc.parameters():
        p.requires_grad_(False)
    return enc.eval()


def _set_identity(enc: LatentEncoder, identity: VAEIdentity) -> None:
    """The decoder unscales latents with the encoder's factors: keep both on one identity."""
    enc.identity = identity
    if enc.decoder is not None:
        enc.decoder.identity = identity


def _downsample(vae) -> int:
    if type(vae).__name__ == "AutoencoderTiny":
        return 8
    return 2 ** (len(vae.config.block_out_channels) - 1)


def _load_file(path: Path, preset_name: str | None = None, decoder: bool = False) -> LatentEncoder:
    state = _read_state(path)
    state = {k[len("first_stage_model.") :] if k.startswith("first_stage_model.") else k: v for k, v in state.items()}
    rev = _sha256_files([path])
    if is_sequential_tae(state):
        net, c, down = build_sequential_encoder(state, str(path))
        p = PRESETS.get(preset_name or "")
        if p is None and path.name == PRESETS["taef2"].hub_id:
            preset_name, p = "taef2", PRESETS["taef2"]
        ident = VAEIdentity(
            name=preset_name or path.name,
            source=str(path.resolve()),
            kind="taesd-sequential",
            latent_channels=c,
            scaling_factor=p.scaling_factor if p else 1.0,
            shift_factor=p.shift_factor if p else 0.0,
            input_range="0..1",
            downsample=down,
            revision=rev,
        )
        enc = LatentEncoder(net, ident, "seq")
        if decoder:
            dpath = _sibling_decoder(path)
            enc.decoder = LatentDecoder(
                build_sequential_decoder(_read_state(dpath), str(dpath)), ident, "0..1", _sha256_files([dpath])
            )
        return enc
    if "encoder.conv_in.weight" in state and any(k.startswith("encoder.down_blocks.") for k in state):
        vae = _diffusers_kl_from_state(state, path, decoder)
        ident = VAEIdentity(
            name=path.name,
            source=str(path.resolve()),
            kind="kl",
            latent_channels=vae.config.latent_channels,
            scaling_factor=1.0,
            input_range="-1..1",
            downsample=_downsample(vae),
            revision=rev,
            note="scaling factor unknown for a bare file: set --scaling-factor",
        )
        return _wrap_diffusers(vae, ident, decoder)
    if any(k.startswith("encoder.down.") for k in state):
        raise WeightsNotFoundError(
            f"{path}: original (LDM) key layout; convert it to diffusers format first "
            "(diffusers' AutoencoderKL.from_single_file(...).save_pretrained(DIR)) and pass DIR"
        )
    raise WeightsNotFoundError(
        f"{path}: unrecognised weights layout (keys like {list(state)[:3]}). --vae takes {vae_choices()}"
    )


def encoder_for(identity: VAEIdentity, decoder_revision: str | None = None) -> LatentEncoder:
    """Reload the encoder a store or model was made with, and check it is the same one
    (same weights revision), so features for scoring match the training features. With
    `decoder_revision` (a config's `decoder`), the decoder is attached and checked too."""
    if identity.builtin:
        spec = BUILTIN
    elif identity.kind == "taesd-sequential" and identity.name in PRESETS and not Path(identity.source).is_file():
        spec = identity.name
    else:
        spec = identity.source
    enc = load_encoder(
        spec,
        subfolder=identity.subfolder,
        scaling_factor=identity.scaling_factor,
        shift_factor=identity.shift_factor,
        decoder=decoder_revision is not None,
    )
    if (
        decoder_revision not in (None, "", "unknown")
        and enc.decoder.revision not in ("", "unknown")
        and enc.decoder.revision != decoder_revision
    ):
        raise WeightsNotFoundError(
            f"the decoder beside {spec} now has weights {enc.decoder.revision}, but the "
            f"features were made with {decoder_revision}: restore the original decoder"
        )
    if (
        identity.revision not in ("", "unknown")
        and enc.identity.revision not in ("", "unknown")
        and enc.identity.revision != identity.revision
    ):
        raise WeightsNotFoundError(
            f"the VAE at {spec} now has weights {enc.identity.revision}, but the model was "
            f"trained on features from {identity.revision}: restore the original weights there "
            "(features from other weights would not match the model)"
        )
    _set_identity(enc, identity)
    return enc


def encoder_for_config(cfg: FeaturizeConfig) -> LatentEncoder:
    """The encoder (and, when a feature of the config needs it, the decoder) a store or model was
    featurized with, checked against the recorded weights revisions."""
    return encoder_for(cfg.vae, cfg.decoder if needs_decoder(cfg) else None)
