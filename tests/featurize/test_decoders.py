"""Simulated decoders for outlier exposure (featurize/decoders.py)."""

import numpy as np
import torch
from typer.testing import CliRunner

from leakstore.cli import app
from leakstore.featurize.decoders import UPSAMPLERS, decode_copy, decoder_specs, sample_patches, train_decoder
from tests.conftest import write_class_images


def test_specs_cover_every_upsampler_and_are_seeded():
    specs = decoder_specs(8, seed=3)
    assert {s.upsample for s in specs} == set(UPSAMPLERS) and specs == decoder_specs(8, seed=3)
    assert len({s.name for s in specs}) >= 4 and all(s.factor in (2, 4) for s in specs)


def test_a_trained_decoder_gives_an_image_of_the_same_kind_and_training_is_seeded():
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 255, (40, 52, 3), dtype=np.uint8) for _ in range(3)]
    patches = sample_patches(imgs, 16, 64, seed=0)
    assert patches.shape == (16, 40, 40, 3)  # no image is 64 a side: the largest multiple of 4
    spec = decoder_specs(1)[0]
    a, b = (train_decoder(spec, patches, seed=1, steps=3) for _ in range(2))
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(va, vb, msg=k)
    y = decode_copy(imgs[0], a, spec.factor)
    assert y.dtype == np.uint8 and y.shape[2] == 3
    assert y.shape[0] % spec.factor == 0 and y.shape[1] % spec.factor == 0


def test_training_images_too_small_for_decoder_patches_fail_in_one_line(tmp_path):
    data = write_class_images(tmp_path / "d", {"gen-a": 3, "gen-b": 3}, size=(6, 6))
    r = CliRunner().invoke(
        app,
        ["make-outliers", str(data), str(tmp_path / "o"), "--decoders", "1", "--decoder-steps", "1", "--no-progress"],
    )
    assert r.exit_code != 0 and "--decoders 0" in r.output and len(r.output.strip().splitlines()) == 1, r.output
