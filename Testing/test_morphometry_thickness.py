"""Local thickness (MorphometryLib.thickness) against direct transcriptions of the rules it claims.

- The closed-ball rule τ(p) = 2·max{d(q) : |p − q| ≤ d(q)}, with d² found by brute force, on random structures,
  isotropic and anisotropic: voxel for voxel, bit for bit.
- Fiji's LocalThickness pipeline (EDT_S1D → Distance_Ridge → Local_Thickness_Parallel), transcribed step by
  step from its rules (float32 radii, ``rSquared = (int)(r·r + 0.5)``, the ridge templates): the default map
  equals it on the structure.
- BoneJ Thickness (the same, then Clean_Up_Local_Thickness, MaskThicknessMapWithOriginal, × pixel width, and
  ImageJ's StackStatistics): ``bonej=True`` equals it, map and mean/SD/max; and hand-made cases with known answers.
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "MorphometryLogic"))

from VolGANCore import Volume  # noqa: E402
from VolGANCore.errors import VolGANError  # noqa: E402
from MorphometryLib import bone_morphometry, thickness_map  # noqa: E402
from MorphometryLib.thickness import local_thickness, thickness_statistics  # noqa: E402

F32 = np.float32


def random_structure(shape, sigma, fraction, seed) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    f = gaussian_filter(np.random.default_rng(seed).standard_normal(shape), sigma)
    return f > np.quantile(f, 1 - fraction)


# ------------------------------------------------------------------------------------ transcriptions
def brute_squared_distance(mask: np.ndarray, unit) -> np.ndarray:
    """d²(p) = min over background voxel centres b of |p − b|² (in ``unit`` steps), float64; 0 off the mask."""
    unit = np.asarray(unit, float)
    fg = np.argwhere(mask) * unit
    bg = np.argwhere(~mask) * unit
    best = np.empty(len(fg))
    for a in range(0, len(fg), 256):
        best[a:a + 256] = ((fg[a:a + 256, None, :] - bg[None, :, :]) ** 2).sum(-1).min(1)
    out = np.zeros(mask.shape)
    out[mask] = best
    return out


def closed_ball_rule(mask: np.ndarray, spacing, tol: float = 0.0) -> np.ndarray:
    """τ(p) = 2·max{d(q) : q in the structure, |p − q|² ≤ d²(q)·(1 + tol)} on the structure, 0 elsewhere.

    Every structure voxel's ball is painted (no ridge, no pruning): for each offset o, every centre q with
    |o|² within its ball writes d²(q) at q + o. Distances are in units of the smallest spacing (exact for
    the dyadic spacings used with tol = 0); the value is float32(2·sqrt(d²)), then × that spacing in
    float64, rounded to float32 — the documented arithmetic of the map.
    """
    sp = np.asarray(spacing, float)
    unit = sp / sp.min()
    d2 = brute_squared_distance(mask, unit)
    best = np.zeros(mask.shape)
    reach = np.ceil(np.sqrt(d2.max() * (1 + tol)) / unit).astype(int)
    for o in itertools.product(*(range(-r, r + 1) for r in reach)):
        o2 = float(np.sum((np.asarray(o) * unit) ** 2))
        src = tuple(slice(max(0, -k), n - max(0, k)) for k, n in zip(o, mask.shape))
        dst = tuple(slice(max(0, k), n - max(0, -k)) for k, n in zip(o, mask.shape))
        r2 = d2[src]
        np.maximum(best[dst], np.where(o2 <= r2 * (1 + tol), r2, 0.0), out=best[dst])
    tau = (2.0 * np.sqrt(best)).astype(F32)
    tau[~mask] = 0
    return (tau.astype(np.float64) * sp.min()).astype(F32)


def _ridge_template(r2_values, e) -> dict[int, int]:
    """Distance_Ridge's template: the smallest r1² whose grid ball centred at offset e holds the grid ball of r²."""
    out = {}
    for r2 in r2_values:
        r = int(np.sqrt(r2)) + 1
        g = np.stack(np.meshgrid(*[np.arange(-r, r + 1)] * 3, indexing="ij"), -1).reshape(-1, 3)
        ball = g[(g ** 2).sum(1) <= r2]
        out[int(r2)] = int(((ball - np.asarray(e)) ** 2).sum(1).max())
    return out


def fiji_raw_map(mask: np.ndarray) -> np.ndarray:
    """Fiji's Local_Thickness_Parallel output (voxels) after EDT_S1D and Distance_Ridge, NOT masked.

    EDT_S1D: exact squared EDT to background voxel centres, the border not background, stored as float32
    sqrt. Distance_Ridge: a voxel is not a ridge point when a 26-neighbour inside the image has
    (int)(s1·s1 + 0.5f) ≥ template[#non-zero components][(int)(s·s + 0.5f)]. Local_Thickness_Parallel: each
    ridge point paints rSquared = (int)(r·r + 0.5f) on the voxels with r1² ≤ rSquared inside the image
    (running maximum); the map is (float)(2·sqrt(max)).
    """
    d2 = brute_squared_distance(mask, (1, 1, 1))
    s = np.sqrt(d2).astype(F32)
    sq = (s * s + F32(0.5)).astype(np.int64)  # float32 arithmetic, then (int)
    assert np.array_equal(sq, d2.astype(np.int64))  # the float32 radii give back the integer squared distances
    radii = np.unique(sq[mask])
    templates = {n: _ridge_template(radii, [1] * n + [0] * (3 - n)) for n in (1, 2, 3)}
    shape = np.array(mask.shape)
    ridge = []
    for p in np.argwhere(mask):
        own = int(sq[tuple(p)])
        covered = False
        for e in itertools.product((-1, 0, 1), repeat=3):
            n_comp = sum(v != 0 for v in e)
            q = p + e
            if n_comp == 0 or np.any(q < 0) or np.any(q >= shape):
                continue
            if sq[tuple(q)] >= templates[n_comp][own]:
                covered = True
                break
        if not covered:
            ridge.append(p)
    painted = np.zeros(mask.shape, F32)
    for p in ridge:
        r = s[tuple(p)]
        r_squared = int(r * r + F32(0.5))
        r_int = int(np.ceil(r))
        lo = np.maximum(p - r_int, 0)
        hi = np.minimum(p + r_int, shape - 1) + 1
        grid = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij"), -1)
        inside = ((grid - p) ** 2).sum(-1) <= r_squared
        box = painted[tuple(slice(a, b) for a, b in zip(lo, hi))]
        np.maximum(box, np.where(inside, F32(r_squared), F32(0)), out=box)
    return (2 * np.sqrt(painted.astype(np.float64))).astype(F32)


# Clean_Up_Local_Thickness's neighbour order, as (di, dj, dk) = (W, H, D) steps, written out from its rules
FIJI_ORDER_IJK = [
    (0, 0, -1), (0, 0, 1), (0, -1, 0), (0, 1, 0), (-1, 0, 0), (1, 0, 0),
    (0, 1, -1), (0, 1, 1), (1, -1, 0), (1, 1, 0), (-1, 0, 1), (1, 0, 1),
    (0, -1, -1), (0, -1, 1), (-1, -1, 0), (-1, 1, 0), (-1, 0, -1), (1, 0, -1),
    (1, 1, 1), (1, -1, 1), (-1, 1, 1), (-1, -1, 1),
    (1, 1, -1), (1, -1, -1), (-1, 1, -1), (-1, -1, -1),
]


def fiji_clean_up(s: np.ndarray) -> np.ndarray:
    """Clean_Up_Local_Thickness, voxel by voxel in its raster order (k, then j, then i), float32 sums."""
    d, h, w = s.shape

    def look(a, k, j, i):
        return a[k, j, i] if (0 <= k < d and 0 <= j < h and 0 <= i < w) else F32(-1)

    new = np.zeros_like(s)
    for k, j, i in itertools.product(range(d), range(h), range(w)):
        if s[k, j, i] == 0:
            new[k, j, i] = 0
        elif any(look(s, k + dk, j + dj, i + di) == 0 for di, dj, dk in FIJI_ORDER_IJK):
            new[k, j, i] = -1
        else:
            new[k, j, i] = s[k, j, i]
    for k, j, i in itertools.product(range(d), range(h), range(w)):
        if new[k, j, i] == -1:
            n, total = 0, F32(0)
            for di, dj, dk in FIJI_ORDER_IJK:
                v = look(new, k + dk, j + dj, i + di)
                if v > 0:
                    n += 1
                    total = F32(total + v)
            new[k, j, i] = -(F32(total / F32(n)) if n > 0 else s[k, j, i])
    return np.abs(new)


def bonej_thickness(mask: np.ndarray, pixel_width: float) -> tuple[np.ndarray, dict]:
    """BoneJ Thickness: LocalThicknessWrapper (Fiji map, clean-up, mask, × pixel width, 0 → NaN), then
    ImageJ StackStatistics over the non-NaN voxels (sample SD)."""
    t = fiji_clean_up(fiji_raw_map(mask))
    t[~mask] = 0
    t = (t.astype(np.float64) * pixel_width).astype(F32)
    vals = t[t != 0].astype(np.float64)
    n = vals.size
    sd = np.sqrt((n * (vals ** 2).sum() - vals.sum() ** 2) / n / (n - 1.0))
    return t, {"mean": vals.sum() / n, "sd": sd, "max": vals.max()}


# ------------------------------------------------------------------------------------ closed-ball rule
@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.164, 0.164, 0.164), (0.6, 0.3, 0.3), (0.3, 0.45, 0.3),
                                     (0.25, 0.5, 0.375)])
@pytest.mark.slow
def test_map_equals_the_closed_ball_rule_exactly_on_random_structures(spacing):
    for seed, phase in ((0, True), (1, True), (2, False)):
        m = random_structure((24, 26, 28), 1.8, 0.3, seed)
        m = m if phase else ~m  # bone, and the marrow (Tb.Sp) with its larger balls
        ours = local_thickness(m, spacing)
        ref = closed_ball_rule(m, spacing)
        assert np.array_equal(ours, ref), (seed, np.abs(ours - ref).max(), np.count_nonzero(ours != ref))


@pytest.mark.slow
def test_map_equals_the_closed_ball_rule_on_a_32_cube_and_the_strict_rule_reads_low():
    m = random_structure((32, 32, 32), 1.5, 0.3, 7)
    ours = local_thickness(m)
    assert np.array_equal(ours, closed_ball_rule(m, (1, 1, 1)))
    # the strict rule |p − q| < d(q) (what this module did before) misses the voxels at exactly d(q)
    d2 = brute_squared_distance(m, (1, 1, 1))
    pts, r2 = np.argwhere(m), d2[m]
    strict = np.zeros(len(pts))
    for a in range(0, len(pts), 512):
        dd = ((pts[a:a + 512, None, :] - pts[None, :, :]) ** 2).sum(-1)
        strict[a:a + 512] = np.where(dd < r2[None, :], 2 * np.sqrt(r2)[None, :], 0).max(1)
    strict = strict.astype(F32)
    assert np.all(strict <= ours[m]) and strict.mean() < ours[m].mean()


def test_non_dyadic_anisotropic_spacing_agrees_to_float_rounding():
    # (0.5, 0.7, 0.6): squared distances are not exact in floats, so ties |p − q| = d(q) are decided with the
    # documented relative tolerance 1e-5, and the values agree to float32 rounding of d² (edt vs float64)
    spacing = (0.5, 0.7, 0.6)
    for seed in (0, 1):
        m = random_structure((20, 22, 24), 1.8, 0.3, seed)
        ours = local_thickness(m, spacing)
        np.testing.assert_allclose(ours, closed_ball_rule(m, spacing, tol=1e-5), rtol=1e-6, atol=0)
        # without the tolerance, float rounding drops some exact ties: the tolerance is needed
        assert not np.allclose(ours, closed_ball_rule(m, spacing), rtol=1e-6, atol=0)


# ------------------------------------------------------------------------------------ Fiji and BoneJ
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.slow
def test_default_map_is_fijis_local_thickness_on_the_structure(seed):
    m = random_structure((20, 22, 24), 1.6, 0.3, seed)
    fiji = fiji_raw_map(m)
    assert np.count_nonzero(fiji[~m]) > 0  # Fiji's closed balls paint background voxels too ...
    fiji[~m] = 0  # ... which the masking removes
    assert np.array_equal(local_thickness(m), fiji)
    space = ~m
    sp_fiji = fiji_raw_map(space)
    sp_fiji[m] = 0
    assert np.array_equal(local_thickness(space), sp_fiji)


@pytest.mark.parametrize("seed", [0, 3])
@pytest.mark.slow
def test_bonej_mode_is_bonej_thickness_exactly(seed):
    m = random_structure((18, 20, 22), 1.6, 0.3, seed)
    for phase, struct in (("bone", m), ("space", ~m)):
        ref_map, ref_stats = bonej_thickness(struct, 0.164)
        ours = local_thickness(struct, (0.164,) * 3, bonej=True)
        assert np.array_equal(ours, ref_map), (phase, np.abs(ours - ref_map).max())
        st = thickness_statistics(ours, struct, ddof=1)
        assert st["mean"] == pytest.approx(ref_stats["mean"], rel=1e-12)
        assert st["sd"] == pytest.approx(ref_stats["sd"], rel=1e-9)
        assert st["max"] == ref_stats["max"]
        # the clean-up changes the surface voxels, so the two modes really differ
        plain = local_thickness(struct, (0.164,) * 3)
        assert np.count_nonzero(plain != ours) > 0 and np.all(ours[~struct] == 0)
    r = bone_morphometry(Volume(m, spacing=(0.164,) * 3), parameters=["Tb.Th", "Tb.Sp"], bonej=True)
    ref_th = bonej_thickness(m, 0.164)[1]
    ref_sp = bonej_thickness(~m, 0.164)[1]
    assert r["Tb.Th [mm]"] == pytest.approx(ref_th["mean"], rel=1e-12)
    assert r["Tb.Th SD [mm]"] == pytest.approx(ref_th["sd"], rel=1e-9)
    assert r["Tb.Sp max [mm]"] == pytest.approx(ref_sp["max"], rel=1e-7)


def _plate(t: int, n: int = 16, start: int = 6) -> np.ndarray:
    m = np.zeros((n, n, n), bool)
    m[:, :, start:start + t] = True
    return m


@pytest.mark.parametrize("bonej", [False, True])
def test_hand_made_cases_with_known_answers(bonej):
    lt = lambda m, s=0.1: local_thickness(m, (s, s, s), bonej=bonej)  # noqa: E731
    # plates: even thickness t reads t; odd t reads t + 1 (the mid-plane is (t+1)/2 from background centres)
    for t, want in ((2, 2), (4, 4), (6, 6), (1, 2), (3, 4), (5, 6)):
        m = _plate(t)
        assert np.allclose(lt(m)[m], 0.1 * want, rtol=1e-6), t
    # a plate against the image border: the border is not background, so it reads twice as thick
    m = np.zeros((12, 12, 12), bool)
    m[:, :, :2] = True
    assert np.allclose(lt(m)[m], 0.4, rtol=1e-6)
    # a cube of side 4 floating in background reads 4 everywhere, corners included
    m = np.zeros((12, 12, 12), bool)
    m[4:8, 4:8, 4:8] = True
    assert np.allclose(lt(m, 1.0)[m], 4.0)
    # a single voxel and a one-voxel line: diameter 2 (its ball of radius 1)
    m = np.zeros((9, 9, 9), bool)
    m[4, 4, 4] = True
    assert lt(m, 1.0)[4, 4, 4] == 2.0
    m[:, 4, 4] = True
    assert np.all(lt(m, 1.0)[m] == 2.0)


def test_bonej_clean_up_on_a_hand_made_square_rod():
    """A 7 × 7 square rod through the image (along D, so D is no background direction).

    By hand, d(x, y) = min(x + 1, 7 − x, y + 1, 7 − y): 4 on the axis (3, 3), 3 on the ring around it, ...
    Plain: a corner voxel (0, 0) is 18 > 16 from the axis, so no ball of diameter 8 holds it; the ring
    ball at (2, 2) does (8 ≤ 9): τ = 6 at the four corner columns, 8 everywhere else (7 is odd: 7 + 1).
    BoneJ: the corner's diagonal neighbour (−1, −1) lies in no closed ball (18 > 9 from (2, 2), 32 > 16
    from the axis), so the corner is a surface voxel of the painted map; its interior painted neighbours
    are (1, 0), (0, 1), (1, 1) on its own and the two adjacent slices — nine voxels, all 8 — so it reads 8.
    """
    m = np.zeros((3, 13, 13), bool)
    m[:, 3:10, 3:10] = True
    plain = local_thickness(m)
    bonej = local_thickness(m, bonej=True)
    want = np.full((7, 7), 8.0, np.float32)
    want[[0, 0, -1, -1], [0, -1, 0, -1]] = 6.0
    for k in range(3):
        assert np.array_equal(plain[k, 3:10, 3:10], want)
        assert np.all(bonej[k, 3:10, 3:10] == 8.0)
    assert np.all(plain[~m] == 0) and np.all(bonej[~m] == 0)
    v = Volume(m, spacing=(0.1, 0.1, 0.1))
    assert bone_morphometry(v, parameters=["Tb.Th"])["Tb.Th [mm]"] == pytest.approx(0.1 * (45 * 8 + 4 * 6) / 49)
    assert bone_morphometry(v, parameters=["Tb.Th"], bonej=True)["Tb.Th [mm]"] == pytest.approx(0.8)
    ref, _ = bonej_thickness(m, 1.0)
    assert np.array_equal(bonej, ref)


def test_bonej_mode_needs_isotropic_voxels_and_flows_through_the_api():
    m = _plate(4)
    with pytest.raises(VolGANError, match="isotropic"):
        local_thickness(m, (0.1, 0.1, 0.2), bonej=True)
    with pytest.raises(VolGANError, match="isotropic"):
        bone_morphometry(Volume(m, spacing=(0.2, 0.1, 0.1)), parameters=["Tb.Th"], bonej=True)
    v = Volume(m, spacing=(0.1, 0.1, 0.1))
    tm = thickness_map(v, bonej=True)
    assert np.allclose(tm.array[m], 0.4) and np.all(tm.array[~m] == 0)
    r = bone_morphometry(v, parameters=["Tb.Th", "Tb.Sp"], bonej=True)
    assert r["Tb.Th [mm]"] == pytest.approx(0.4, rel=1e-6)
    assert r["Tb.Th SD [mm]"] == pytest.approx(0.0, abs=1e-6)


def test_statistics_population_and_sample_sd():
    t = np.array([[[1.0, 2.0, 4.0, 0.0]]], np.float32)
    where = t > 0
    assert thickness_statistics(t, where)["sd"] == pytest.approx(np.std([1, 2, 4]))
    assert thickness_statistics(t, where, ddof=1)["sd"] == pytest.approx(np.std([1, 2, 4], ddof=1))
    assert thickness_statistics(t, t == 4, ddof=1)["sd"] == 0.0  # one voxel: 0, as ImageJ
