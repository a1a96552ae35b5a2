import numpy as np

from leakstore.pipelines.report import REACH, plot_open_scores, score_range


def test_a_far_unseen_generator_does_not_squeeze_the_known_images_into_one_bar(tmp_path):
    rng = np.random.default_rng(0)
    known = rng.normal(-1.0, 0.2, 500)
    far = rng.uniform(-7000, -100, 100)  # perfectly separated, thousands of spreads away
    lo, hi = score_range(known, far)
    spread = np.subtract(*np.percentile(known, [99, 1]))
    assert np.percentile(known, 1) - REACH * spread <= lo + 1e-9 and lo > -10
    assert hi >= np.percentile(known, 99)
    bins = np.linspace(lo, hi, 35)
    assert np.histogram(np.clip(known, lo, hi), bins)[0].astype(bool).sum() > 10  # known images over many bins
    near = rng.normal(-1.5, 0.3, 100)  # an overlapping generator: the range is its bulk
    assert score_range(known, near)[0] == np.percentile(np.r_[known, near], 2)
    plot_open_scores(tmp_path / "h.png", {"far": (known, far), "near": (known, near)}, "fused-period", threshold=-1.4)
    assert (tmp_path / "h.png").stat().st_size > 0


def test_a_degenerate_score_gets_a_range_all_the_same():
    lo, hi = score_range(np.zeros(10), np.zeros(5))
    assert hi > lo
