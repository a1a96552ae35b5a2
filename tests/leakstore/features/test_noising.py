import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from leakstore.config import ScheduleConfig
from leakstore.features.noising import add_noise, alphas_cumprod, noise_coefficients, seeded_noise


@pytest.mark.parametrize("kind", ["linear", "scaled_linear"])
def test_matches_diffusers_add_noise(kind):
    sched = ScheduleConfig(kind, 0.00085, 0.012, 1000)
    ref = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule=kind)
    assert np.allclose(alphas_cumprod(sched), ref.alphas_cumprod.double().numpy(), rtol=1e-5)
    ts = (0, 50, 400, 999)
    z0 = torch.randn(3, 4, 8, 8)
    eps = torch.randn(3, len(ts), 4, 8, 8)
    a, s = noise_coefficients(sched, ts)
    ours = add_noise(z0, eps, torch.tensor(a), torch.tensor(s))
    for j, t in enumerate(ts):
        theirs = ref.add_noise(z0, eps[:, j], torch.tensor([t] * 3))
        torch.testing.assert_close(ours[:, j], theirs, rtol=1e-5, atol=1e-5)


def test_linear_and_scaled_linear_differ():
    a = alphas_cumprod(ScheduleConfig("linear"))
    b = alphas_cumprod(ScheduleConfig("scaled_linear"))
    assert abs(a[400] - b[400]) > 0.05


def test_sigma_normalisation_divides_by_sigma():
    z0, eps = torch.randn(2, 4, 4, 4), torch.randn(2, 2, 4, 4, 4)
    a, s = (torch.tensor(v) for v in noise_coefficients(ScheduleConfig(), (10, 300)))
    plain, norm = add_noise(z0, eps, a, s), add_noise(z0, eps, a, s, sigma_normalize=True)
    torch.testing.assert_close(norm * s.view(1, -1, 1, 1, 1).float(), plain)


def test_noise_is_a_function_of_hash_and_seed():
    h1, h2 = "ab" * 32, "cd" * 32
    n = seeded_noise(h1, 0, (2, 4, 8, 8))
    assert n.dtype == np.float32 and n.shape == (2, 4, 8, 8)
    assert np.array_equal(n, seeded_noise(h1, 0, (2, 4, 8, 8)))
    assert not np.allclose(n, seeded_noise(h2, 0, (2, 4, 8, 8)))
    assert not np.allclose(n, seeded_noise(h1, 1, (2, 4, 8, 8)))
    assert abs(n.std() - 1) < 0.15
