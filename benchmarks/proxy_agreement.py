#!/usr/bin/env python
"""Agreement of the differentiable morphometry proxies with the exact measures (the table in docs/morphometry.md).

Population: 60 random anisotropic structures, 32³ at 164 µm: a white-noise field smoothed by a Gaussian of
σ·(a, 1, 1) voxels (σ ~ U(1.2, 3), a ~ U(1, 2.5)), grey levels 225 + 150·(field − its (1 − BV/TV) quantile)/SD
with BV/TV ~ U(0.1, 0.4). Exact measures (MorphometryLib.bone) at the hard threshold 225; proxies
(MorphometryLib.differentiable) at the ``miccai2020`` preset. Bias = proxy − exact.

    .venv/bin/python benchmarks/proxy_agreement.py [--n 60] [--bonej]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "MorphometryLogic"))

PAIRS = [  # (proxy key, proxy label, exact key, exact label, unit of the bias)
    ("BV/TV", "BV/TV", "BV/TV", "BV/TV", ""),
    ("BMD", "BMD", "BMD [image units]", "BMD", ""),
    ("TMD", "TMD", "TMD [image units]", "TMD", ""),
    ("BS/TV", "BS/TV", "BS/TV [1/mm]", "BS/TV (smoothed MC)", " mm⁻¹"),
    ("Tb.Th", "Tb.Th (plate model)", "Tb.Th [mm]", "Tb.Th (maximal spheres)", " mm"),
    ("Tb.Sp", "Tb.Sp (plate model)", "Tb.Sp [mm]", "Tb.Sp (maximal spheres)", " mm"),
    ("Tb.N", "Tb.N (plate model)", "Tb.N [1/mm]", "Tb.N = 1/(Tb.Th+Tb.Sp)", " mm⁻¹"),
    ("DA", "DA (tensor)", "DA", "DA (MIL ellipsoid)", ""),
    ("DA", "DA (tensor)", "DA (structure tensor)", "DA (structure tensor, exact)", ""),
]


def population(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    xs = []
    for _ in range(n):
        sig, bv, an = rng.uniform(1.2, 3), rng.uniform(0.1, 0.4), rng.uniform(1, 2.5)
        f = gaussian_filter(rng.standard_normal((size, size, size)), (sig * an, sig, sig))
        f = (f - np.quantile(f, 1 - bv)) / f.std()
        xs.append((225 + 150 * f).astype(np.float32))
    return np.stack(xs)


def main(argv=None) -> int:
    import torch

    from MorphometryLib import differentiable as D
    from MorphometryLib.bone import bone_morphometry
    from VolGANCore import Volume

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=60, help="structures (default 60)")
    ap.add_argument("--bonej", action="store_true", help="exact thickness in the BoneJ mode")
    args = ap.parse_args(argv)
    xs = population(args.n)
    spacing = (0.164,) * 3
    rows = [bone_morphometry(Volume(x, spacing=spacing), threshold=225, bonej=args.bonej,
                             parameters=["BV/TV", "BS", "Tb.Th", "Tb.Sp", "Tb.N", "DA", "DA.ST", "BMD", "TMD"])
            for x in xs]
    soft = D.soft_morphometry(torch.from_numpy(xs)[:, None], preset="miccai2020", spacing=spacing)
    print("| soft proxy | exact measure | Pearson r | mean bias | mean relative bias |")
    print("|---|---|---|---|---|")
    for key, label, exact_key, exact_label, unit in PAIRS:
        u = soft[key].double().numpy()
        v = np.array([r[exact_key] for r in rows])
        r = np.corrcoef(u, v)[0, 1]
        bias = float(np.mean(u - v))
        rel = float(np.mean((u - v) / v)) * 100
        digits = 4 if key in ("BV/TV",) else 2 if key in ("BMD", "TMD") else 3
        print(f"| {label} | {exact_label} | {r:.3f} | {bias:+.{digits}f}{unit} | {rel:+.1f} % |".replace("-", "−"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
