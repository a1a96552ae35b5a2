"""Forward diffusion, as pure functions of (z0, eps, t, schedule).

    z_t = sqrt(abar_t) * z0 + sqrt(1 - abar_t) * eps          (DDPM, as DDPMScheduler.add_noise)
    optional sigma-normalisation: z_t / sqrt(1 - abar_t)      (the reference's --sigma-normalize)

Noise is drawn on the CPU with NumPy's PCG64 seeded from the image's SHA-256 and the
config seed, so the same image gets the same noise on any machine, device or batch size.
"""

from __future__ import annotations

import numpy as np
import torch

from leakstore.config import ScheduleConfig


def alphas_cumprod(schedule: ScheduleConfig) -> np.ndarray:
    """(num_train_timesteps,) float64 cumulative product of (1 - beta)."""
    n = schedule.num_train_timesteps
    if schedule.beta_schedule == "linear":
        betas = np.linspace(schedule.beta_start, schedule.beta_end, n, dtype=np.float64)
    else:  # scaled_linear: linear in sqrt(beta), as Stable Diffusion and diffusers define it
        betas = np.linspace(schedule.beta_start**0.5, schedule.beta_end**0.5, n, dtype=np.float64) ** 2
    return np.cumprod(1.0 - betas)


def noise_coefficients(schedule: ScheduleConfig, timesteps) -> tuple[np.ndarray, np.ndarray]:
    """(sqrt(abar_t), sqrt(1 - abar_t)) for each timestep, each (T,) float64."""
    abar = alphas_cumprod(schedule)[np.asarray(timesteps, dtype=np.int64)]
    return np.sqrt(abar), np.sqrt(1.0 - abar)


def add_noise(
    z0: torch.Tensor, eps: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor, sigma_normalize: bool = False
) -> torch.Tensor:
    """z0 (B, C, h, w), eps (B, T, C, h, w), alpha/sigma (T,) -> z_t (B, T, C, h, w), float32."""
    a = alpha.to(device=z0.device, dtype=torch.float32).view(1, -1, 1, 1, 1)
    s = sigma.to(device=z0.device, dtype=torch.float32).view(1, -1, 1, 1, 1)
    zt = a * z0.float().unsqueeze(1) + s * eps.to(device=z0.device, dtype=torch.float32)
    return zt / s if sigma_normalize else zt


def noise_seed(sha256_hex: str, seed: int) -> np.random.SeedSequence:
    """A SeedSequence from the full 256-bit digest and the config seed."""
    words = [int(sha256_hex[i : i + 8], 16) for i in range(0, 64, 8)]
    return np.random.SeedSequence(words + [int(seed) & 0xFFFFFFFF])


def seeded_noise(sha256_hex: str, seed: int, shape: tuple[int, ...]) -> np.ndarray:
    """Standard normal noise of `shape` (T, C, h, w), float32, determined by (image hash, seed)."""
    rng = np.random.Generator(np.random.PCG64(noise_seed(sha256_hex, seed)))
    return rng.standard_normal(shape, dtype=np.float32)
