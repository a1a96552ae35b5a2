"""Shared fixtures: everything offline, tiny and fast on 2 CPU cores."""

from __future__ import annotations

import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"  # never touch the network in tests
os.environ.setdefault("TQDM_DISABLE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED_WEIGHTS = REPO.parent / "shared" / "weights"
torch.set_num_threads(min(2, torch.get_num_threads()))


def pytest_collection_modifyitems(config, items):
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def taef2_dir() -> Path:
    if not (SHARED_WEIGHTS / "taef2_encoder.pth").is_file():
        pytest.skip(
            f"TAEF2 weights not found at {SHARED_WEIGHTS} (they sit in ../shared beside the repository "
            "in this project's setup); the tests that need a real pretrained encoder are skipped"
        )
    return SHARED_WEIGHTS


@pytest.fixture(scope="session")
def tiny_vae_dir(tmp_path_factory) -> Path:
    """A tiny random AutoencoderKL saved as a local diffusers folder (downsample 2, 4 latent channels)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=[32, 64],
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=32,
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
    )
    d = tmp_path_factory.mktemp("vae") / "tiny-vae"
    vae.save_pretrained(d)
    return d


# the demo encoder's fastest store: two timesteps, no pixel cues (tests of training, not of features)
TINY_FEATURES = dict(
    vae="demo",
    resolution=64,
    timesteps=(0, 100),
    fft_size=2,
    residual_bins=0,
    period=0,
    spectrum_bins=0,
    noise_bins=0,
    cooccurrence=0,
)


def featurize_tiny(data, store, **kw):
    """Featurize `data` into `store` in this process with TINY_FEATURES (any of them overridden by kw)."""
    from leakstore.config import RunOptions
    from leakstore.featurize.api import featurize

    opts = RunOptions(device="cpu", workers=0, progress=False, chunk_size=8)
    return featurize(data, store, opts=opts, **{**TINY_FEATURES, **kw})


def write_class_images(root: Path, classes: dict[str, int], size=(40, 36), seed=0, fmt="png") -> Path:
    """root/<class>/<i>.<fmt>: noisy images whose mean colour depends on the class."""
    rng = np.random.default_rng(seed)
    for k, (name, n) in enumerate(classes.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        tint = np.array([40 + 60 * k, 120, 200 - 50 * k])
        for i in range(n):
            a = np.clip(tint + rng.normal(0, 30, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
            Image.fromarray(a).save(root / name / f"{i:03d}.{fmt}")
    return root


@pytest.fixture
def class_folders(tmp_path) -> Path:
    return write_class_images(tmp_path / "data", {"real": 10, "gen-a": 10, "gen-b": 9})
