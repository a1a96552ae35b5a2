"""Proto-LeakNet, split timm-style: `forward_features` (per-timestep tokens), `embed` (pooled
embedding, gates, attention), `forward` (prototype logits).

Inputs come as a dict batch of a store's features (leakstore.features): latents (B, T, C, h, w)
through the backbone, and every other model input (spectra (B, T, C, k, k), the residual (B, F)
of stores featurized with --residual, ...) through an MLP of its own. They are standardised with
statistics of the training set (latents per timestep and channel, the others per element), kept
as buffers so a checkpoint carries them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from leakstore.features.periodicity import without_grid
from leakstore.model.attention import SelfAttentionBlock
from leakstore.model.config import ModelConfig


def _gn(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, ch), ch)


class SmallCNN(nn.Module):
    """(N, C, h, w) -> (N, 4 * width): three conv stages, mean and std pooled (the leak is in
    low-frequency statistics, which mean/std pooling keeps)."""

    def __init__(self, c: int, width: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(c, width, 3, padding=1),
            _gn(width),
            nn.GELU(),
            nn.Conv2d(width, width, 3, stride=2, padding=1),
            _gn(width),
            nn.GELU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
            _gn(2 * width),
            nn.GELU(),
        )
        self.out_dim = 4 * width

    def forward(self, x):
        h = self.net(x)
        flat = h.flatten(2)
        # a latent of side <= 4 leaves one position after the two strides: its spread is 0, not NaN
        spread = flat.std(-1) if flat.shape[-1] > 1 else torch.zeros_like(flat[..., 0])
        return torch.cat([h.mean((-2, -1)), spread], 1)


class _Basic(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.n1 = nn.BatchNorm2d(cout)
        self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.n2 = nn.BatchNorm2d(cout)
        self.skip = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout
            else nn.Identity()
        )

    def forward(self, x):
        return F.relu(self.n2(self.c2(F.relu(self.n1(self.c1(x))))) + self.skip(x))


class ResNet18(nn.Module):
    """ResNet-18 layout (2-2-2-2 basic blocks) with a C-channel 3x3 stem for small latents."""

    def __init__(self, c: int, width: int):
        super().__init__()
        w = [width, 2 * width, 4 * width, 8 * width]
        self.stem = nn.Sequential(nn.Conv2d(c, w[0], 3, 1, 1, bias=False), nn.BatchNorm2d(w[0]), nn.ReLU())
        layers, cin = [], w[0]
        for i, cout in enumerate(w):
            layers += [_Basic(cin, cout, 1 if i == 0 else 2), _Basic(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.out_dim = w[-1]

    def forward(self, x):
        return self.layers(self.stem(x)).mean((-2, -1))


class PatchTransformer(nn.Module):
    """Latent patches (2x2) as tokens, two self-attention blocks (xformers when present)."""

    def __init__(self, c: int, width: int, size: int, patch: int = 2):
        super().__init__()
        dim = 2 * width
        self.patch = patch if size % patch == 0 else 1
        n = (size // self.patch) ** 2
        self.proj = nn.Linear(c * self.patch**2, dim)
        self.pos = nn.Parameter(torch.zeros(1, n, dim))
        self.blocks = nn.Sequential(SelfAttentionBlock(dim), SelfAttentionBlock(dim))
        self.norm = nn.LayerNorm(dim)
        self.out_dim = dim

    def forward(self, x):
        p = self.patch
        tok = F.unfold(x, p, stride=p).transpose(1, 2)  # (N, L, C p p)
        h = self.blocks(self.proj(tok) + self.pos[:, : tok.shape[1]])
        return self.norm(h).mean(1)


# Attribute names of the first vector inputs' branches and statistics, kept so that models saved
# before inputs were generic still load (spec.*, spec_mean, res.*, res_mean ...).
_ATTR = {"spectra": "spec", "residual": "res"}


class NormStats:
    """The input statistics `set_normalisation` sets, summed batch by batch (in float64), so that a
    store streamed from disk normalises as one held in memory: latents per (timestep, channel), every
    other input per element; standard deviations with Bessel's correction, as torch's std."""

    def __init__(self, net: ProtoLeakNet):
        self.net = net
        self.sums: dict[str, list] = {}

    def _add(self, key: str, x: torch.Tensor, dims: tuple[int, ...]) -> None:
        x = x.double()
        n = math.prod(x.shape[d] for d in dims)  # values summed per statistic
        s = self.sums.setdefault(key, [0.0, 0.0, 0])
        s[0] = s[0] + x.sum(dims).cpu()
        s[1] = s[1] + (x * x).sum(dims).cpu()
        s[2] += n

    @torch.no_grad()
    def update(self, batch: dict[str, torch.Tensor]) -> None:
        self._add("latents", self.net._need(batch, "latents"), (0, 3, 4))
        for name, _ in self.net.vector_inputs:
            self._add(name, read_input(self.net.cfg, name, self.net._need(batch, name).float()), (0,))

    def _moments(self, key: str) -> tuple[torch.Tensor, torch.Tensor]:
        if key not in self.sums:
            raise ValueError("no training rows to normalise the inputs with")
        s1, s2, n = self.sums[key]
        mean = s1 / n
        var = ((s2 - n * mean * mean) / max(n - 1, 1)).clamp_min(0)
        return mean.float(), var.sqrt().float().clamp_min(1e-4)

    @torch.no_grad()
    def apply(self) -> None:
        net = self.net
        mean, std = self._moments("latents")
        net.lat_mean.copy_(mean[..., None, None])
        net.lat_std.copy_(std[..., None, None])
        for name, _ in net.vector_inputs:
            a = _ATTR.get(name, f"in_{name}")
            mean, std = self._moments(name)
            getattr(net, f"{a}_mean").copy_(mean)
            getattr(net, f"{a}_std").copy_(std)


def read_input(cfg: ModelConfig, name: str, value):
    """A stored feature as the model reads it: the periodicity profile without the phases JPEG's
    block grid prints on (cfg.drop_jpeg_grid); every other feature as stored. Shared by the
    network and the open-set block of the same name (model/predict.py)."""
    if name == "periodicity" and cfg.drop_jpeg_grid and value is not None:
        return without_grid(value, value.shape[-1] // 2)
    return value


def _input_shape(cfg: ModelConfig, name: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Per-image shape of an input as the model reads it: derived from read_input, not restated."""
    return tuple(read_input(cfg, name, torch.zeros(1, *shape)).shape[1:])


class ProtoLeakNet(nn.Module):
    """inputs: {name: (per-image shape, per_timestep)} of the features the model reads, in table
    order; "latents" (T, C, h, w) is required and goes through the backbone; every other input is
    standardised, flattened and embedded by its own MLP: per timestep when per_timestep, else once
    per image and joined to every timestep's token."""

    def __init__(self, cfg: ModelConfig, inputs: dict[str, tuple[tuple[int, ...], bool]], n_classes: int):
        super().__init__()
        if "latents" not in inputs:
            raise ValueError("the network needs the 'latents' input")
        t, c, h, w = inputs["latents"][0]
        self.cfg, self.n_classes, self.t = cfg, n_classes, t
        self.inputs = tuple(inputs)
        self.vector_inputs = tuple((n, per_t) for n, (_, per_t) in inputs.items() if n != "latents")
        self.register_buffer("lat_mean", torch.zeros(t, c, 1, 1))
        self.register_buffer("lat_std", torch.ones(t, c, 1, 1))
        d = cfg.embed_dim
        if cfg.backbone == "cnn":
            self.backbone = SmallCNN(c, cfg.width)
        elif cfg.backbone == "resnet":
            self.backbone = ResNet18(c, cfg.width)
        else:
            self.backbone = PatchTransformer(c, cfg.width, h)
        for name, per_t in self.vector_inputs:
            shape = _input_shape(cfg, name, inputs[name][0])
            width = math.prod(shape[1:] if per_t else shape)
            a = _ATTR.get(name, f"in_{name}")
            setattr(self, a, nn.Sequential(nn.Linear(width, d), nn.GELU(), nn.Linear(d, d)))
            self.register_buffer(f"{a}_mean", torch.zeros(shape))
            self.register_buffer(f"{a}_std", torch.ones(shape))
        fuse_in = self.backbone.out_dim + 2 * c + d * len(self.vector_inputs)
        self.fuse = nn.Sequential(
            nn.Linear(fuse_in, d), nn.GELU(), nn.Dropout(cfg.dropout), nn.Linear(d, d), nn.LayerNorm(d)
        )
        self.time_embed = nn.Parameter(torch.zeros(t, d))
        self.temporal = SelfAttentionBlock(d) if cfg.temporal == "transformer" else None
        self.score = nn.Sequential(nn.Linear(d, d), nn.Tanh(), nn.Linear(d, 1))
        self.gate = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, d)) if cfg.gates else None
        m, e = cfg.protos_per_class, cfg.extra_protos
        self.prototypes = nn.Parameter(torch.randn(n_classes, m + e, d) * 0.5)
        mask = torch.zeros(n_classes, m + e)
        mask[:, :m] = 1  # extra slots stay off until `add_prototypes` fills them after training
        self.register_buffer("proto_mask", mask)
        self.log_tau = nn.Parameter(torch.tensor(math.log(cfg.init_temperature)))

    # ------------------------------------------------------------------ normalisation
    @torch.no_grad()
    def set_normalisation(self, batch: dict[str, torch.Tensor]) -> None:
        """Statistics from training rows: latents per (timestep, channel); every other input per element."""
        stats = NormStats(self)
        stats.update(batch)
        stats.apply()

    @staticmethod
    def _need(batch, name):
        if batch.get(name) is None:
            raise ValueError(
                f"this model reads the {name!r} feature: pass it in the batch (a store featurized "
                f"with the model's featurize config has it)"
            )
        return batch[name]

    # ------------------------------------------------------------------ timm-style API
    def forward_features(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """{latents (B, T, C, h, w), other inputs (B, *shape)} -> per-timestep tokens (B, T, D)."""
        lat = self._need(batch, "latents")
        b, t = lat.shape[:2]
        x = (lat.float() - self.lat_mean) / self.lat_std
        flat = x.flatten(0, 1)  # (B T, C, h, w)
        parts = [self.backbone(flat), flat.mean((-2, -1)), flat.flatten(2).std(-1)]
        for name, per_t in self.vector_inputs:
            a = _ATTR.get(name, f"in_{name}")
            v = read_input(self.cfg, name, self._need(batch, name).float())
            v = (v - getattr(self, f"{a}_mean")) / getattr(self, f"{a}_std")
            if per_t:
                parts.append(getattr(self, a)(v.flatten(0, 1).flatten(1)))  # (B T, D)
            else:
                parts.append(getattr(self, a)(v.flatten(1)).repeat_interleave(t, 0))  # (B, D) -> (B T, D)
        tok = self.fuse(torch.cat(parts, 1)).view(b, t, -1) + self.time_embed
        return self.temporal(tok) if self.temporal is not None else tok

    def embed(self, batch: dict[str, torch.Tensor], keep: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Pooled embedding z (B, D), gates g (B, D) in [0, 1], attention a (B, T).

        keep (B, T) bool: timesteps to use (time-dropout); dropped steps get zero attention."""
        tok = self.forward_features(batch)
        score = self.score(tok).squeeze(-1)
        if keep is not None:
            score = score.masked_fill(~keep, float("-inf"))
        a = torch.softmax(score, dim=1)
        z = torch.einsum("bt,btd->bd", a, tok)
        g = (
            torch.einsum("bt,btd->bd", a, torch.sigmoid(self.gate(tok)))
            if self.gate is not None
            else torch.ones_like(z)
        )
        return {"z": z, "g": g, "a": a}

    def distances(self, z: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """Gate-weighted squared distances to every prototype: (B, K, M)."""
        diff = z[:, None, None, :] - self.prototypes[None]
        return (g[:, None, None, :] * diff.pow(2)).sum(-1)

    def logits(self, z, g) -> torch.Tensor:
        """Class logit = minus the soft-min (temperature tau) of the class's prototype distances. (B, K)"""
        tau = self.log_tau.exp()
        d = self.distances(z, g)
        off = torch.zeros_like(self.proto_mask).masked_fill(self.proto_mask == 0, float("-inf"))
        return tau * torch.logsumexp(-d / tau + off[None], dim=-1)  # -inf after the division: finite grads

    def forward(self, batch: dict[str, torch.Tensor], keep=None) -> dict[str, torch.Tensor]:
        out = self.embed(batch, keep)
        out["logits"] = self.logits(out["z"], out["g"])
        return out

    @torch.no_grad()
    def add_prototypes(self, k: int, centres: torch.Tensor) -> None:
        """Switch on class k's extra prototype slots at `centres` (E', D), E' <= extra_protos."""
        m = self.cfg.protos_per_class
        n = min(len(centres), self.cfg.extra_protos)
        self.prototypes[k, m : m + n] = centres[:n].to(self.prototypes)
        self.proto_mask[k, m : m + n] = 1

    def time_dropout_mask(self, b: int, device, generator=None) -> torch.Tensor:
        """(B, T) bool: each timestep kept with prob 1 - p; at least one kept per row."""
        p = self.cfg.time_dropout
        keep = torch.rand(b, self.t, device=device, generator=generator) >= p
        first = torch.randint(0, self.t, (b,), device=device, generator=generator)
        keep[torch.arange(b, device=device), first] = True
        return keep


class Ensemble(nn.Module):
    """M ProtoLeakNets trained apart (seeds seed, seed+1, ...) seen as one network: the embedding,
    gates and prototypes are the members' side by side (a (M D)-d joint space), so a prototype's
    squared distance is the sum of the members' gate-weighted distances to their own prototype in
    that slot, attention is the members' mean and a class logit their mean logit. Every scorer
    then reads one embedding, as for a single network. Prototype slots are switched on for every
    member at once (`add_prototypes`), so the members share one mask.

    Why: the members agree on what they were trained on and disagree elsewhere; on the
    leave-one-generator-out study their joined embedding flags unseen generators more often at the
    same false-alarm rate than any one of them (docs/open-set.md)."""

    def __init__(self, members: list[ProtoLeakNet]):
        super().__init__()
        self.members = nn.ModuleList(members)
        first = members[0]
        self.cfg, self.n_classes, self.t, self.inputs = first.cfg, first.n_classes, first.t, first.inputs

    @property
    def prototypes(self) -> torch.Tensor:
        """(K, P, M D): each slot's prototypes of every member, side by side."""
        return torch.cat([m.prototypes for m in self.members], -1)

    @property
    def proto_mask(self) -> torch.Tensor:
        return self.members[0].proto_mask

    def _split(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return x.split(self.cfg.embed_dim, dim=-1)

    def embed(self, batch: dict[str, torch.Tensor], keep: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        outs = [m.embed(batch, keep) for m in self.members]
        return {
            "z": torch.cat([o["z"] for o in outs], -1),
            "g": torch.cat([o["g"] for o in outs], -1),
            "a": torch.stack([o["a"] for o in outs]).mean(0),
        }

    def distances(self, z: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """(B, K, P): squared distances in the joint space, the sum of the members' own."""
        return sum(m.distances(zm, gm) for m, zm, gm in zip(self.members, self._split(z), self._split(g)))

    def logits(self, z, g) -> torch.Tensor:
        return torch.stack([m.logits(zm, gm) for m, zm, gm in zip(self.members, self._split(z), self._split(g))]).mean(
            0
        )

    forward = ProtoLeakNet.forward  # embed, then the logits: the same two steps as one network's

    @torch.no_grad()
    def add_prototypes(self, k: int, centres: torch.Tensor) -> None:
        """Centres (E', M D) in the joint space: each member takes its own slice."""
        for m, c in zip(self.members, self._split(centres)):
            m.add_prototypes(k, c)


def joined(members: list[ProtoLeakNet]) -> ProtoLeakNet | Ensemble:
    """The model's network from its trained members: the network itself when there is one."""
    return members[0] if len(members) == 1 else Ensemble(members)


def attention_entropy_penalty(a: torch.Tensor) -> torch.Tensor:
    """(log T - H(a)) / log T, averaged: 0 for uniform attention, 1 when it collapses onto one step."""
    t = a.shape[1]
    if t < 2:
        return a.new_zeros(())
    h = -(a * torch.log(a.clamp_min(1e-12))).sum(1)
    return ((math.log(t) - h) / math.log(t)).mean()
