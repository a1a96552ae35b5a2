"""The leave-one-generator-out study on a tiny fixture shaped like RealGen: generators only (no
real class), images grouped by a prompt that every generator shares, splits by prompt, crops,
and an outside store of generators none of the folds saw."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from leakstore.cli import app

runner = CliRunner()
GENS = {"gen-a": 0, "gen-b": 1, "gen-c": 2, "gen-d": 3}
FEAT = [
    "--vae",
    "demo",
    "--resolution",
    "32",
    "--timesteps",
    "0,100",
    "--fft-size",
    "2",
    "--no-residual",
    "--pixel-spectrum",
    "0",
    "--noise-spectrum",
    "0",
    "--crops",
    "4",
    "--device",
    "cpu",
    "--workers",
    "0",
    "--no-progress",
]


def prompt_set(root, gens: dict, prompts: int = 8, per: int = 2, seed: int = 0):
    """root/<gen>/<prompt>-<i>.png and a manifest path,label,group: one content per prompt, rendered
    by every generator with its own colour cast and grain."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(prompts):
        content = rng.uniform(40, 200, (72, 80, 3))
        for g, k in gens.items():
            (root / g).mkdir(parents=True, exist_ok=True)
            for i in range(per):
                a = content + 12 * k + rng.normal(0, 6 + 5 * k, content.shape)
                Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(root / g / f"p{p}-{i}.png")
                rows.append((f"{g}/p{p}-{i}.png", g, f"prompt-{p}"))
    with open(root / "manifest.csv", "w", newline="") as f:
        csv.writer(f).writerows([("path", "label", "group"), *rows])
    return root / "manifest.csv"


@pytest.mark.slow
def test_the_study_runs_on_a_realgen_like_fixture_per_image(tmp_path):
    known = prompt_set(tmp_path / "known", GENS)
    outside = prompt_set(tmp_path / "outside", {"gen-x": 5}, prompts=4, seed=1)
    for man, store in ((known, "k.zarr"), (outside, "u.zarr")):
        r = runner.invoke(app, ["featurize", str(man), str(tmp_path / store), *FEAT])
        assert r.exit_code == 0, r.output
    r = runner.invoke(
        app,
        [
            "openset-study",
            str(tmp_path / "k.zarr"),
            "--out",
            str(tmp_path / "study"),
            "--epochs",
            "2",
            "--members",
            "1",
            "--no-ceiling",
            "--unseen",
            str(tmp_path / "u.zarr"),
            "--device",
            "cpu",
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    s = json.loads(r.output)
    assert sorted(s["generators"]) == sorted(GENS)
    chosen = s["chosen_test"]
    assert all(len(v["test_ci95"]) == 2 for v in chosen["per_generator"].values())  # intervals by prompt
    rows = json.loads((tmp_path / "study" / "study.json").read_text())
    assert "gen-x" in json.dumps(rows["unseen"])
    # per image: each fold's unseen generator counts its test images, not its crops
    import pandas as pd

    t = pd.read_parquet(tmp_path / "study" / "study.parquet")
    from leakstore.store import FeatureStore

    st = FeatureStore.open(tmp_path / "k.zarr")
    test_images = {
        g: len(set(st.image_rows()[(st.read("split") == 2) & (st.read("label") == st.class_names.index(g))]))
        for g in GENS
    }
    for g in GENS:
        assert set(t.n_test_unknown[t.generator == g]) == {test_images[g]}
