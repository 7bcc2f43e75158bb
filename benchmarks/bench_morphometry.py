"""Bone morphometry: MorphometryLib next to porespy ``local_thickness`` and ITK BoneMorphometry.

Structure: a Gaussian-smoothed white-noise field (σ = 2 voxels) thresholded at BV/TV = 0.25, 256³
(``--quick``: 128³). Groups: Tb.Th, Tb.Sp, Euler characteristic, bone surface, the full panel (with peak
traced memory), and 1000 patches of 32³ through the batched API (``--quick``: 200).

Peers are optional and looked for on ``sys.path`` and in the folders named by ``VOLGAN_BENCH_PEERS``
(``os.pathsep``-separated ``pip install --target`` folders, appended after the project's own packages so
its numpy/edt win): ``porespy`` (``porespy.filters.local_thickness``, default method; integer sphere radii, ×2 for a
diameter) and
``itk`` with ``itk-bonemorphometry`` (``BoneMorphometryFeaturesFilter``: plate-model BV/TV, Tb.N, Tb.Th,
Tb.Sp, BS/BV). A peer that cannot be imported is skipped with a printed reason.
"""

from __future__ import annotations

import os
import sys
import tracemalloc

import numpy as np

from harness import Case

for _extra in filter(None, os.environ.get("VOLGAN_BENCH_PEERS", "").split(os.pathsep)):
    if _extra not in sys.path:
        sys.path.append(_extra)


def random_structure(n: int, sigma: float = 2.0, fraction: float = 0.25, seed: int = 0) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    f = gaussian_filter(np.random.default_rng(seed).standard_normal((n, n, n)).astype(np.float32), sigma)
    return f > np.quantile(f, 1 - fraction)


def _peak(fn):
    """Run ``fn`` with tracemalloc on; return (result, peak traced MiB)."""
    tracemalloc.start()
    try:
        out = fn()
        _cur, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return out, peak / 2**20


_FRESH = """
import sys
import numpy as np
from MorphometryLib.bone import bone_morphometry
from VolGANCore import Volume

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return float(line.split()[1]) / 1024

m = np.load(sys.argv[1])
base = status("VmRSS:")
try:
    open("/proc/self/clear_refs", "w").write("5")  # reset the high-water mark to the current RSS
except OSError:
    pass
bone_morphometry(Volume(m, spacing=(1.0, 1.0, 1.0)))
import resource
child = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # the largest forked slab worker
print(base, status("VmHWM:"), child)
"""


def _panel_in_fresh_process(mask: np.ndarray) -> dict:
    """Peak resident memory of the full panel in a new interpreter (so earlier cases cannot hide it):
    the whole process (Linux VmHWM, reset after the imports), its rise over the interpreter with the
    libraries imported and the mask loaded, and the largest forked surface worker."""
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "mask.npy")
        np.save(path, mask)
        out = subprocess.run([sys.executable, "-c", _FRESH, path], check=True, capture_output=True, text=True)
    base, peak, child = (float(x) for x in out.stdout.split()[-3:])
    # surface slabs run in forked children that share the parent's pages until they write: their peak RSS
    # counts those shared pages too, so parent + child is an upper bound of the machine's peak
    return {"process peak RSS MiB": round(peak), "panel rise MiB": round(peak - base),
            "largest worker peak RSS MiB": round(child), "upper bound MiB": round(peak + child)}


def _porespy():
    try:
        import porespy  # noqa: F401
        from porespy.filters import local_thickness

        return local_thickness
    except Exception as exc:  # noqa: BLE001 - any import failure means "skip this peer"
        print(f"bench_morphometry: porespy peer skipped ({type(exc).__name__}: {exc})", file=sys.stderr)
        return None


def _itk():
    try:
        import itk

        itk.BoneMorphometryFeaturesFilter  # noqa: B018 - lazy attribute: raises if the module is missing
        return itk
    except Exception as exc:  # noqa: BLE001
        print(f"bench_morphometry: ITK BoneMorphometry peer skipped ({type(exc).__name__}: {exc})", file=sys.stderr)
        return None


def cases(quick: bool) -> list[Case]:
    from skimage.measure import euler_number, marching_cubes, mesh_surface_area

    from MorphometryLib.batch import batch_bone_morphometry
    from MorphometryLib.bone import bone_morphometry
    from MorphometryLib.surface import surface_area
    from MorphometryLib.thickness import local_thickness
    from MorphometryLib.topology import euler_characteristic
    from VolGANCore import Volume

    n = 128 if quick else 256
    m = random_structure(n)
    space = ~m
    vol = Volume(m, spacing=(1.0, 1.0, 1.0))
    out: list[Case] = []
    ps_lt = _porespy()
    itk = _itk()

    def ours_th():
        t, peak = _peak(lambda: local_thickness(m))
        return {"Tb.Th [vox]": float(t[m].mean()), "peak MiB": peak}

    def ours_sp():
        t, peak = _peak(lambda: local_thickness(space))
        return {"Tb.Sp [vox]": float(t[space].mean()), "peak MiB": peak}

    out.append(Case(f"Tb.Th {n}^3", "MorphometryLib (exact)", ours_th, repeats=1 if not quick else 3))
    out.append(Case(f"Tb.Sp {n}^3", "MorphometryLib (exact)", ours_sp, repeats=1 if not quick else 3))
    if ps_lt is not None:
        def ps_th():
            t = ps_lt(m)  # porespy 3.2 default (method "bf"): map of sphere radii in voxels
            return {"Tb.Th [vox]": float(2 * t[m].mean())}

        def ps_sp():
            t = ps_lt(space)
            return {"Tb.Sp [vox]": float(2 * t[space].mean())}

        out.append(Case(f"Tb.Th {n}^3", "porespy local_thickness", ps_th, repeats=1 if not quick else 3, reference=True))
        out.append(Case(f"Tb.Sp {n}^3", "porespy local_thickness", ps_sp, repeats=1 if not quick else 3, reference=True))

    out.append(Case(f"Euler {n}^3", "MorphometryLib", lambda: {"chi": euler_characteristic(m)}))
    out.append(Case(f"Euler {n}^3", "skimage euler_number (conn. 3)", lambda: {"chi": int(euler_number(m, connectivity=3))},
                    reference=True))

    out.append(Case(f"surface {n}^3", "MorphometryLib (smoothed MC, edge-aware)", lambda: {"BS [vox^2]": surface_area(m)}))

    def sk_surface():
        v, f, _, _ = marching_cubes(np.pad(m, 1).astype(np.float32), 0.5)
        return {"BS [vox^2]": float(mesh_surface_area(v, f))}

    out.append(Case(f"surface {n}^3", "skimage marching_cubes (raw)", sk_surface, reference=True))

    def panel():
        r, peak = _peak(lambda: bone_morphometry(vol))
        return {"Tb.Th": r["Tb.Th [mm]"], "Tb.Sp": r["Tb.Sp [mm]"], "SMI": r["SMI"], "DA": r["DA"],
                "traced peak MiB": peak}

    out.append(Case(f"full panel {n}^3", "MorphometryLib bone_morphometry", panel, repeats=1 if not quick else 2))
    out.append(Case(f"full panel {n}^3 memory", "MorphometryLib bone_morphometry (fresh process)",
                    lambda: _panel_in_fresh_process(m), repeats=1, warmup=0))
    if not quick:
        m128 = random_structure(128)
        v128 = Volume(m128, spacing=(1.0, 1.0, 1.0))
        out.append(Case("full panel 128^3", "MorphometryLib bone_morphometry", lambda: {"BV/TV": bone_morphometry(v128)["BV/TV"]}))

    if itk is not None:
        def itk_panel(mask=m):
            img = itk.image_from_array(mask.astype(np.uint8))
            flt = itk.BoneMorphometryFeaturesFilter[type(img)].New(Input=img)
            flt.SetThreshold(1)
            flt.Update()
            return {"Tb.Th (plate)": float(flt.GetTbTh()), "Tb.Sp (plate)": float(flt.GetTbSp())}

        out.append(Case(f"full panel {n}^3", "ITK BoneMorphometryFeaturesFilter (plate model)", itk_panel,
                        repeats=1 if not quick else 2, reference=True))

    n_patches = 200 if quick else 1000
    rng = np.random.default_rng(1)
    from scipy.ndimage import gaussian_filter

    patches = np.empty((n_patches, 32, 32, 32), np.float32)
    for i in range(n_patches):
        f = gaussian_filter(rng.standard_normal((32, 32, 32)).astype(np.float32), (rng.uniform(1.5, 3), 1.2, 1.2))
        patches[i] = 225 + 150 * (f - np.quantile(f, 1 - rng.uniform(0.1, 0.35))) / f.std()

    def batch():
        rows = batch_bone_morphometry(patches, spacing=(0.164,) * 3, threshold=225, workers=os.cpu_count(), chunk_size=25)
        return {"failed": sum(bool(r["error"]) for r in rows)}

    out.append(Case(f"{n_patches} patches 32^3 (full panel)", "MorphometryLib batch_bone_morphometry", batch,
                    repeats=1, warmup=0, unit_count=n_patches, unit="patches"))
    return out
