"""Differentiable morphometry (MorphometryLib.differentiable): gradients, autocast, agreement with exact."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "MorphometryLogic"))

from VolGANCore import Volume  # noqa: E402
from VolGANCore.errors import VolGANError  # noqa: E402
from MorphometryLib import differentiable as D  # noqa: E402
from MorphometryLib.bone import bone_morphometry  # noqa: E402


def _small(seed=0, shape=(2, 1, 4, 5, 4)):
    g = torch.Generator().manual_seed(seed)
    return (225 + 15 * torch.randn(shape, generator=g, dtype=torch.float64)).requires_grad_(True)


@pytest.mark.parametrize(
    "fn",
    [
        lambda x: D.soft_bv_tv(x, preset="miccai2020"),
        lambda x: D.bmd(x),
        lambda x: D.tmd(x, threshold=225, width=10),
        lambda x: D.soft_bs_tv(x, preset="miccai2020", spacing=(0.2, 0.3, 0.5)),
        lambda x: D.plate_model(x, preset="miccai2020", spacing=(0.2, 0.2, 0.2))["Tb.Th"],
        lambda x: D.plate_model(x, preset="miccai2020", spacing=(0.2, 0.2, 0.2))["Tb.Sp"],
        lambda x: D.plate_model(x, preset="miccai2020", spacing=(0.2, 0.2, 0.2))["Tb.N"],
        lambda x: D.structure_tensor_da(x, preset="miccai2020", spacing=(0.2, 0.3, 0.5)),
        lambda x: D.structure_tensor_da(x, threshold=225, width=8, sigma=0.8),
        lambda x: D.soft_bv_tv(x, threshold=220, width=5, roi=(torch.arange(5, dtype=torch.float64) > 1).view(1, 1, 1, 5, 1)),
    ],
    ids=["bvtv", "bmd", "tmd", "bstv", "tbth", "tbsp", "tbn", "da", "da_sigma", "bvtv_roi"],
)
@pytest.mark.slow
def test_gradcheck(fn):
    x = _small()
    assert torch.autograd.gradcheck(fn, (x,), eps=1e-6, atol=1e-5, rtol=1e-4)


def test_values_on_a_known_image_and_batch_independence():
    x = torch.full((3, 1, 6, 6, 6), 0.0)
    x[0, :, :3] = 1000.0  # half bone, one flat interface at mid-depth
    x[1] = 225.0  # sigmoid(0) = 0.5 everywhere
    out = D.soft_morphometry(x, preset="miccai2020", spacing=(0.5, 0.5, 0.5))
    assert out["BV/TV"][0].item() == pytest.approx(0.5, abs=1e-6)
    assert out["BV/TV"][1].item() == pytest.approx(0.5, abs=1e-6)
    assert out["BMD"][0].item() == pytest.approx(500.0)
    assert out["TMD"][0].item() == pytest.approx(1000.0, rel=1e-4)
    # the interface (area 3×3 mm²) in a 3×3×3 mm³ box: BS/TV = 1/3 mm⁻¹
    assert out["BS/TV"][0].item() == pytest.approx(1 / 3, rel=1e-3)
    assert out["DA"][0].item() == pytest.approx(1.0, abs=1e-6)
    single = D.soft_morphometry(x[:1], preset="miccai2020", spacing=(0.5, 0.5, 0.5))
    for k in single:
        assert single[k].item() == pytest.approx(out[k][0].item(), rel=1e-6)


def test_fp32_under_autocast_and_half_inputs():
    x = (225 + 40 * torch.randn(2, 1, 8, 8, 8)).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = D.soft_morphometry(x, preset="miccai2020", spacing=(0.164,) * 3)
    for k, v in out.items():
        assert v.dtype == torch.float32, k
        assert torch.isfinite(v).all(), k


def test_bad_inputs():
    with pytest.raises(VolGANError, match="shape"):
        D.soft_bv_tv(torch.zeros(2, 3, 4, 4, 4), preset="miccai2020")
    with pytest.raises(VolGANError, match="threshold"):
        D.soft_bv_tv(torch.zeros(1, 1, 4, 4, 4))
    with pytest.raises(VolGANError, match="unknown"):
        D.soft_bv_tv(torch.zeros(1, 1, 4, 4, 4), preset="nope")
    with pytest.raises(VolGANError, match="width"):
        D.soft_bv_tv(torch.zeros(1, 1, 4, 4, 4), threshold=1, width=0)


def test_agreement_with_exact_morphometry_over_a_population():
    """The soft measures track the exact ones (docs/morphometry.md has the full table)."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(0)
    xs, rows = [], []
    for _ in range(16):
        sig, bv, an = rng.uniform(1.2, 3), rng.uniform(0.1, 0.4), rng.uniform(1, 2.5)
        f = gaussian_filter(rng.standard_normal((24, 24, 24)), (sig * an, sig, sig))
        f = (f - np.quantile(f, 1 - bv)) / f.std()
        x = (225 + 150 * f).astype(np.float32)
        rows.append(bone_morphometry(Volume(x, spacing=(0.164,) * 3), threshold=225,
                                     parameters=["BV/TV", "BS", "Tb.Th", "Tb.Sp", "DA.ST", "BMD", "TMD"]))
        xs.append(x)
    soft = D.soft_morphometry(torch.from_numpy(np.stack(xs))[:, None], preset="miccai2020", spacing=(0.164,) * 3)
    pairs = {"BV/TV": ("BV/TV", 0.99), "BMD": ("BMD [image units]", 0.99), "TMD": ("TMD [image units]", 0.95),
             "BS/TV": ("BS/TV [1/mm]", 0.95), "Tb.Th": ("Tb.Th [mm]", 0.8), "Tb.Sp": ("Tb.Sp [mm]", 0.7),
             "DA": ("DA (structure tensor)", 0.95)}
    for k, (exact_key, min_r) in pairs.items():
        u = soft[k].numpy()
        v = np.array([r[exact_key] for r in rows])
        r = np.corrcoef(u, v)[0, 1]
        assert r >= min_r, (k, r)
    assert np.abs(soft["BV/TV"].numpy() - np.array([r["BV/TV"] for r in rows])).max() < 0.02
