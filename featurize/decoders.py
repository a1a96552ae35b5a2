"""Simulated generators for outlier exposure: small upsampling decoders, each its own outlier class.

An image a generator made carries its decoder's traces: how it upsampled (transposed convolution,
nearest or bilinear interpolation followed by convolutions, pixel shuffle), at which factor, with
which widths. A known generator's decoder is one such family among many; an unseen generator's is
another. So the unknown flag is shown many decoders the known classes never show, each as a class
of its own (the idea of POSE, CVPR 2023: many small networks, each a simulated open-set class,
rather than one "other" bucket), never compression or resizing, which known images go through too.

Each decoder is a tiny convolutional autoencoder (a strided encoder down by `factor`, the decoder
back up) with seeded random weights, trained for a few hundred steps to reconstruct patches of the
training images: enough to give image-like output with the architecture's upsampling traces, far
too little to reach the fidelity of any real generator. Everything is seeded: the same decoder
spec, seed and patches give the same weights on one machine.

    (H, W, 3) uint8 -> decode_copy -> (H', W', 3) uint8, H' and W' the largest multiples of factor
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from leakstore.config import DEFAULT_DECODER_STEPS

UPSAMPLERS = ("transposed", "nearest", "bilinear", "shuffle")


@dataclass(frozen=True)
class DecoderSpec:
    """One simulated decoder: its upsampling kind, factor (2 or 4), width and activation."""

    upsample: str
    factor: int
    width: int
    act: str  # "relu" or "gelu"

    @property
    def name(self) -> str:
        return f"dec-{self.upsample}{self.factor}-w{self.width}-{self.act}"


def decoder_specs(n: int, seed: int = 0) -> list[DecoderSpec]:
    """`n` decoder specs covering every upsampler in turn, factors, widths and activations seeded."""
    rng = np.random.default_rng([seed, 0x646563])
    out = []
    for i in range(n):
        out.append(
            DecoderSpec(
                upsample=UPSAMPLERS[i % len(UPSAMPLERS)],
                factor=int(rng.choice((2, 4))),
                width=int(rng.choice((16, 24, 32))),
                act=str(rng.choice(("relu", "gelu"))),
            )
        )
    return out


def build_decoder(spec: DecoderSpec):
    """The untrained network of `spec`: a strided encoder down by `factor`, the decoder back up."""
    import torch.nn as nn

    act = nn.ReLU if spec.act == "relu" else nn.GELU
    w, f = spec.width, spec.factor
    steps = {2: 1, 4: 2}[f]
    enc = [nn.Conv2d(3, w, 3, padding=1), act()]
    for _ in range(steps):
        enc += [nn.Conv2d(w, w, 4, stride=2, padding=1), act()]
    enc += [nn.Conv2d(w, 4, 1)]  # a 4-channel "latent", as small VAEs have
    dec = [nn.Conv2d(4, w, 3, padding=1), act()]
    for _ in range(steps):
        if spec.upsample == "transposed":
            dec += [nn.ConvTranspose2d(w, w, 4, stride=2, padding=1), act()]
        elif spec.upsample == "shuffle":
            dec += [nn.Conv2d(w, 4 * w, 3, padding=1), nn.PixelShuffle(2), act()]
        else:
            dec += [nn.Upsample(scale_factor=2, mode=spec.upsample), nn.Conv2d(w, w, 3, padding=1), act()]
    dec += [nn.Conv2d(w, 3, 3, padding=1)]
    return nn.Sequential(*enc, *dec)


def train_decoder(
    spec: DecoderSpec, patches: np.ndarray, *, seed: int = 0, steps: int = DEFAULT_DECODER_STEPS, batch: int = 8
):
    """The decoder (a torch module, eval mode) after `steps` Adam steps of L1 reconstruction on
    `patches`, (N, P, P, 3) uint8 with P a multiple of 4. Seeded: weights and batches."""
    import torch

    torch.manual_seed(seed)
    net = build_decoder(spec)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    x_all = torch.from_numpy(np.ascontiguousarray(patches)).permute(0, 3, 1, 2).float() / 255.0
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = x_all[torch.randint(0, len(x_all), (batch,), generator=gen)]
        loss = (net(x) - x).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def sample_patches(images: list[np.ndarray], n: int, size: int, seed: int = 0) -> np.ndarray:
    """(n, s, s, 3) uint8: native-pixel patches at seeded positions of seeded images; s is `size`, or
    less when no image is that large (a multiple of 4); an image smaller than s is skipped."""
    rng = np.random.default_rng([seed, 0x706174])
    if not images:
        raise ValueError("no training image to train the simulated decoders on")
    size = min(size, max(min(a.shape[:2]) for a in images)) // 4 * 4  # small images: smaller patches
    if size < 8:
        raise ValueError("the training images are too small (under 8 pixels a side) for decoder patches")
    ok = [a for a in images if min(a.shape[:2]) >= size]
    out = np.empty((n, size, size, 3), np.uint8)
    for i in range(n):
        a = ok[int(rng.integers(len(ok)))]
        top, left = int(rng.integers(0, a.shape[0] - size + 1)), int(rng.integers(0, a.shape[1] - size + 1))
        out[i] = a[top : top + size, left : left + size]
    return out


def decode_copy(arr: np.ndarray, net, factor: int, max_side: int = 1024) -> np.ndarray:
    """The image through a trained decoder: its centre crop of at most `max_side`, cut to a
    multiple of `factor`. (H, W, 3) uint8 -> (H', W', 3) uint8."""
    import torch

    h, w = (min(s, max_side) // factor * factor for s in arr.shape[:2])
    if h < factor or w < factor:
        raise ValueError(f"smaller than the decoder's {factor}-pixel step")
    top, left = (arr.shape[0] - h) // 2, (arr.shape[1] - w) // 2
    x = torch.from_numpy(np.array(arr[top : top + h, left : left + w])).permute(2, 0, 1)[None].float() / 255.0
    with torch.inference_mode():
        y = net(x)
    return (y[0].permute(1, 2, 0).numpy() * 255.0).round().clip(0, 255).astype(np.uint8)
