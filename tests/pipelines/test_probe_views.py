"""The post-processing probe: features per view, a probe trained on the views pooled."""
import numpy as np
import pytest
from PIL import Image

from pipelines.probe_views import blocks, pooled_probe


def test_the_pooled_probe_finds_a_block_that_carries_the_class_under_one_view_only():
    rng = np.random.default_rng(0)
    n = 120
    y = np.array(["real", "gen"] * (n // 2))
    groups = np.repeat(np.arange(n // 4), 4)
    signal = (y == "gen")[:, None] * 2.0
    feats = {"none": {"a": rng.normal(size=(n, 3)) + signal, "b": rng.normal(size=(n, 3))},
             "jpeg:75": {"a": rng.normal(size=(n, 3)), "b": rng.normal(size=(n, 3))}}   # the view wipes it out
    out = pooled_probe(feats, ("a",), y, groups, model="lr")
    assert set(out) == {"none", "jpeg:75"}
    assert out["none"]["macro_auc"] > 0.9 and abs(out["jpeg:75"]["macro_auc"] - 0.5) < 0.2
    assert pooled_probe(feats, ("b",), y, groups, model="lr")["none"]["macro_auc"] < 0.75


@pytest.mark.weights
def test_blocks_measure_each_view_at_its_own_size(taef2_dir, tmp_path):
    from featurize.vae import _read_state, build_sequential_decoder, build_sequential_encoder
    enc = build_sequential_encoder(_read_state(taef2_dir / "taef2_encoder.pth"))[0].eval()
    dec = build_sequential_decoder(_read_state(taef2_dir / "taef2_decoder.pth")).eval()
    rng = np.random.default_rng(1)
    paths = []
    for i in range(2):
        small = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(small).resize((64, 64), Image.Resampling.NEAREST).save(paths[-1])   # a 2x nearest upscale
    b = blocks(paths, "none", enc, dec, 64)
    assert b["latent"].shape == (2, 64) and b["periodicity"].shape == (2, 16) and len(b["residual"]) == 2
    assert (b["periodicity"][:, 0::2] < -5).all()                       # the upscale's period
    half = blocks(paths, "resize:0.5", enc, dec, 64)                    # halved: the period is gone
    assert (np.abs(half["periodicity"]) < 1).all()
