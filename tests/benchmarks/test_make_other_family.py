"""The offline generator of another family: crops, renderings and a manifest `featurize` reads."""

import csv

import numpy as np
from PIL import Image

from benchmarks.make_other_family import main


def _images(d, sizes):
    d.mkdir()
    g = np.random.default_rng(0)
    for i, (w, h) in enumerate(sizes):
        yy, xx = np.mgrid[:h, :w]
        a = np.stack([(xx * (i + 1)) % 256, (yy * 3) % 256, (xx + yy) % 256], 2) + g.integers(0, 20, (h, w, 3))
        Image.fromarray(a.clip(0, 255).astype(np.uint8)).save(d / f"img{i}.png")
    return d


def test_renders_every_crop_and_writes_a_test_manifest(tmp_path, capsys):
    src = _images(tmp_path / "src", [(160, 140), (200, 130), (40, 40)])  # the last is too small for a 32 px crop
    (src / "broken.png").write_bytes(b"not an image")
    for out in ("a", "b"):
        assert (
            main(
                [
                    str(tmp_path / out),
                    "--images",
                    str(src),
                    "--size",
                    "32",
                    "--per-image",
                    "4",
                    "--steps",
                    "3",
                    "--batch",
                    "2",
                ]
            )
            == 0
        )
    err = capsys.readouterr().err
    assert "img2.png: smaller than 32 px" in err and "broken.png: cannot read" in err
    rows = list(csv.DictReader(open(tmp_path / "a" / "manifest.csv")))
    assert len(rows) == 2 * 4 * 2  # 2 usable images x 4 crops x 2 labels
    assert {r["label"] for r in rows} == {"tconv-ae", "real-other-content"} and {r["split"] for r in rows} == {"test"}
    assert {r["group"] for r in rows} == {"img0", "img1"}
    for r in rows:
        img = Image.open(tmp_path / "a" / r["path"])
        assert img.size == (32, 32) and img.mode == "RGB"
        assert (tmp_path / "b" / r["path"]).read_bytes() == (tmp_path / "a" / r["path"]).read_bytes()  # seeded
    fake = np.asarray(Image.open(tmp_path / "a" / "tconv-ae" / "img0_0_0.png"), dtype=float)
    real = np.asarray(Image.open(tmp_path / "a" / "real-other-content" / "img0_0_0.png"), dtype=float)
    assert np.abs(fake - real).mean() > 1  # rendered, not copied


def test_without_the_real_label_only_renderings_are_written(tmp_path):
    src = _images(tmp_path / "src", [(100, 100)])
    main(
        [
            str(tmp_path / "o"),
            "--images",
            str(src / "img0.png"),
            "--size",
            "32",
            "--per-image",
            "1",
            "--steps",
            "1",
            "--real-label",
            "",
        ]
    )
    rows = list(csv.DictReader(open(tmp_path / "o" / "manifest.csv")))
    assert [r["label"] for r in rows] == ["tconv-ae"]
