"""MS-SSIM intra-set diversity: identity, independence, copies vs variety, the scale rule, seeding, the report."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage as ndi

from GANTrainerLib.evaluation.diversity import ms_ssim, msssim_diversity, msssim_settings, sample_pairs
from VolGANCore import Volume, VolGANError, write_volume


def _smooth_field(rng, shape, sigma=2.0):
    f = ndi.gaussian_filter(rng.normal(size=shape), sigma)
    return (f / f.std()).astype(np.float32)


@pytest.mark.slow
def test_identical_is_one_and_independent_noise_is_much_lower():
    rng = np.random.default_rng(0)
    for shape in ((8, 32, 32), (32, 40, 40)):  # one scale, and three scales
        a = _smooth_field(rng, shape)
        assert ms_ssim(a, a.copy()) == pytest.approx(1.0, abs=1e-5)
        assert ms_ssim(a, 3.0 * a + 7.0) == pytest.approx(1.0, abs=1e-5)  # each volume is windowed on its own
        assert ms_ssim(a, _smooth_field(rng, shape)) < 0.3
        assert ms_ssim(rng.normal(size=shape), rng.normal(size=shape)) < 0.3
    with pytest.raises(VolGANError, match="shapes differ"):
        ms_ssim(np.zeros((8, 8, 8)), np.zeros((8, 8, 9)))


def test_scale_rule_follows_the_smallest_axis():
    expect = {(8, 32, 32): (7, 1), (32, 128, 128): (7, 3), (32, 32, 32): (7, 3), (64, 64, 64): (7, 4),
              (128, 128, 128): (7, 5), (5, 40, 40): (5, 1), (4, 64, 64): (3, 1)}
    for shape, (k, n) in expect.items():
        s = msssim_settings(shape)
        assert (s["kernel_size"], s["n_scales"]) == (k, n), shape
        assert len(s["weights"]) == n and sum(s["weights"]) == pytest.approx(1.0)
    assert msssim_settings((32, 128, 128))["weights"][0] == pytest.approx(0.0448 / (0.0448 + 0.2856 + 0.3001))
    with pytest.raises(VolGANError, match="too small"):
        msssim_settings((2, 64, 64))


@pytest.mark.slow
def test_pairs_are_distinct_and_seeded():
    p = sample_pairs(40, 100, seed=3)
    assert len(p) == 100 and len({tuple(x) for x in p}) == 100 and np.all(p[:, 0] < p[:, 1]) and p.max() < 40
    np.testing.assert_array_equal(p, sample_pairs(40, 100, seed=3))
    assert not np.array_equal(p, sample_pairs(40, 100, seed=4))
    assert sample_pairs(5, 100).tolist() == [[i, j] for i in range(5) for j in range(i + 1, 5)]  # all 10 pairs
    rng = np.random.default_rng(1)
    vols = [_smooth_field(rng, (8, 24, 24)) for _ in range(8)]
    a, b = msssim_diversity(vols, n_pairs=10, seed=1), msssim_diversity(vols, n_pairs=10, seed=1)
    assert a["n_pairs"] == 10 and a["mean"] == b["mean"] and np.array_equal(a["pairs"], b["pairs"])


@pytest.mark.slow
def test_copies_are_flagged_less_diverse_in_the_report(tmp_path, capsys):
    from VolGANCore.cli import main

    rng = np.random.default_rng(2)
    shape = (8, 24, 24)
    base = _smooth_field(rng, shape)
    for k in range(4):  # the smallest sets evaluate accepts (4 real: two halves of 2), to keep the test quick
        write_volume(Volume(_smooth_field(rng, shape)), tmp_path / "real" / f"r{k}.nii.gz")
        write_volume(Volume(base + rng.normal(size=shape).astype(np.float32) * 0.01), tmp_path / "copies" / f"g{k}.nii.gz")
    copies = [base + rng.normal(size=shape).astype(np.float32) * 0.01 for _ in range(4)]
    varied = [_smooth_field(rng, shape) for _ in range(4)]
    assert msssim_diversity(copies)["mean"] > 0.95 > 0.5 > msssim_diversity(varied)["mean"]
    assert main(["--quiet", "evaluate", "--real", str(tmp_path / "real"), "--fake", str(tmp_path / "copies"),
                 "--out", str(tmp_path / "rep"), "--bootstrap", "20", "--msssim-pairs", "5"]) == 0
    out = capsys.readouterr().out
    assert "MS-SSIM diversity" in out and "less diverse than the real set" in out
    rep = json.loads((tmp_path / "rep" / "report.json").read_text())
    d = rep["diversity"]["msssim"]
    assert d["less_diverse_than_real"] and d["generated"]["mean"] > 0.95 > 0.5 > d["real"]["mean"]
    assert d["generated"]["n_pairs"] == d["real"]["n_pairs"] == 5 and len(d["real_halves"]) == 2  # of 6 pairs
    assert d["settings"]["n_scales"] == 1 and rep["settings"]["msssim_pairs"] == 5
    assert "## Diversity (3-D MS-SSIM within each set)" in (tmp_path / "rep" / "report.md").read_text()
    assert main(["--quiet", "evaluate", "--real", str(tmp_path / "real"), "--fake", str(tmp_path / "copies"),
                 "--out", str(tmp_path / "rep2"), "--msssim-pairs", "-1"]) == 2
    assert "--msssim-pairs: expected a whole number ≥ 0" in capsys.readouterr().err
